"""Accepting connections: many per turn of the event loop, not one.

Why not `loop.create_server`. uvloop runs on libuv, which since 1.45 (libuv pull request 3696)
accepts one connection each time the loop polls the listening socket, and leaves the rest to
the next turns. On a busy worker a turn lasts as long as it takes to answer what every open
connection sent, 10-30 ms with batches, so a burst of new connections waits one turn each:
64 clients that reconnect at once (a load balancer failing over, an SDK fleet restarting, a
benchmark's second run) waited up to 0.5-0.8 s to be accepted, while every request the server
had accepted was answered in under 25 ms (bench/README.md, "Session 4: accepting"). asyncio's
own loop accepts up to its backlog per turn; this does the same on uvloop.

`Listener` polls the listening socket itself (`add_reader`), accepts until the queue is empty
or `per_turn` connections were taken, and hands each socket to the loop with
`connect_accepted_socket`, which builds the same transport `create_server` would. Running out
of file descriptors pauses accepting for a second (the connection stays queued in the kernel
rather than being accepted and dropped), as asyncio does, and so does any error that is not
about one connection (a client gone already is skipped): a failing accept never spins.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)

PER_TURN = 128
"""Connections accepted at most per turn of the loop (asyncio takes up to its backlog, 100)."""

PAUSE_SECONDS = 1.0
"""How long accepting pauses after an accept error not about one connection (out of file
descriptors or memory, typically)."""

_ONE_CONNECTION = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
"""accept() errors about the connection being accepted (gone already, or refused by a firewall
rule): the next one may be fine."""


class Listener:
    """Accepts connections on a bound, listening, non-blocking socket (which it then owns) and
    connects each to a protocol from `protocol_factory`. Offers what the worker used of
    `asyncio.Server`: `sockets` and `close()`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol_factory: Callable[[], asyncio.Protocol], *,
                 per_turn: int = PER_TURN, pause_seconds: float = PAUSE_SECONDS) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = protocol_factory
        self._per_turn = per_turn
        self._pause_seconds = pause_seconds
        self._pending: set[asyncio.Task[object]] = set()
        self._resume: asyncio.TimerHandle | None = None
        self._closed = False
        sock.setblocking(False)
        self.accepted = 0
        """Connections accepted so far."""

    @property
    def sockets(self) -> list[socket.socket]:
        return [] if self._closed else [self._sock]

    @property
    def paused(self) -> bool:
        """Whether accepting is paused after an accept error (see PAUSE_SECONDS)."""
        return self._resume is not None

    def start(self) -> None:
        """Begin accepting (call once, from the loop)."""
        self._loop.add_reader(self._sock.fileno(), self._accept_ready)

    def close(self) -> None:
        """Stop accepting and close the listening socket. Connections already accepted go
        on; those still queued in the kernel are refused when the socket closes."""
        if self._closed:
            return
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    def _accept_ready(self) -> None:
        for _ in range(self._per_turn):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in _ONE_CONNECTION:
                    continue
                # Out of descriptors or memory (or worse): retry after a pause, never spin.
                self._pause(e)
                return
            self.accepted += 1
            self._connect(conn)

    def _connect(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        task = self._loop.create_task(
            self._loop.connect_accepted_socket(self._factory, sock=conn))
        self._pending.add(task)
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[object]) -> None:
        # (The transport owns the socket from its first step on and closes it itself.)
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not set up an accepted connection: %r", task.exception())

    def _pause(self, error: OSError) -> None:
        log.error("cannot accept connections (%s); pausing for %.1f s", error,
                  self._pause_seconds)
        self._loop.remove_reader(self._sock.fileno())
        self._resume = self._loop.call_later(self._pause_seconds, self._unpause)

    def _unpause(self) -> None:
        self._resume = None
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept_ready)
