"""collector.http.listener: connections accepted many per loop turn, on real sockets.

The tests drive `Listener._accept_ready` (what the loop calls when the listening socket is
readable) by hand after the clients have connected (the kernel completes a TCP handshake
before accept), so "how many per turn" is counted, never timed; one lets the loop call it.
Both loops run every test: uvloop (production) and asyncio's.
"""

from __future__ import annotations

import asyncio
import errno
import select
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
import uvloop

from collector.http.listener import Listener

LOOPS = {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


def run(kind: str, test: Callable[[asyncio.AbstractEventLoop], Awaitable[None]]) -> None:
    loop = LOOPS[kind]()
    try:
        loop.run_until_complete(test(loop))
    finally:
        loop.close()


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    sock.setblocking(False)
    return sock


@contextmanager
def clients(port: int, n: int) -> Iterator[list[socket.socket]]:
    """n connected clients (blocking connect: done once the handshake is, before accept)."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


class Echo(asyncio.Protocol):
    made: list[Echo] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        Echo.made.append(self)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data.upper())


async def settle(turns: int = 5) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def reply(client: socket.socket, size: int) -> bytes:
    """What the server sent back, letting the loop turn until it is there (no blocking read
    on the loop's own thread before the data is readable)."""
    for _ in range(500):
        if select.select([client], [], [], 0)[0]:
            return client.recv(size)
        await asyncio.sleep(0.01)
    raise AssertionError("no reply")


@asynccontextmanager
async def serving(listener: Listener) -> AsyncIterator[Listener]:
    """The listener, closed afterwards with every connection it made, whatever happened."""
    try:
        yield listener
    finally:
        listener.close()
        for p in Echo.made:
            p.transport.close()
        await settle()


@pytest.fixture(autouse=True)
def _reset_echo() -> None:
    Echo.made = []


@pytest.mark.parametrize("kind", LOOPS)
def test_one_turn_accepts_every_queued_connection(kind: str) -> None:
    """The bug it fixes: libuv's server accepts one connection per turn. 40 clients that
    connect together are all accepted by one turn here, and each gets a working protocol."""
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        sock = listening_socket()
        async with serving(Listener(loop, sock, Echo)) as listener:
            with clients(sock.getsockname()[1], 40) as socks:
                listener._accept_ready()
                assert listener.accepted == 40
                await settle()
                assert len(Echo.made) == 40
                socks[7].sendall(b"ping")
                assert await reply(socks[7], 16) == b"PING"

    run(kind, body)


@pytest.mark.parametrize("kind", LOOPS)
def test_per_turn_caps_one_turn_and_the_rest_follow(kind: str) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        sock = listening_socket()
        async with serving(Listener(loop, sock, Echo, per_turn=5)) as listener:
            with clients(sock.getsockname()[1], 8):
                listener._accept_ready()
                assert listener.accepted == 5
                listener._accept_ready()
                assert listener.accepted == 8
                listener._accept_ready()  # nothing queued: returns at once
                assert listener.accepted == 8
                await settle()
                assert len(Echo.made) == 8

    run(kind, body)


@pytest.mark.parametrize("kind", LOOPS)
def test_started_listener_serves_through_the_loop(kind: str) -> None:
    """With start(), the loop itself calls it: a client is answered without any help."""
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        sock = listening_socket()
        async with serving(Listener(loop, sock, Echo)) as listener:
            listener.start()
            reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
            writer.write(b"hello")
            assert await asyncio.wait_for(reader.readexactly(5), 10) == b"HELLO"
            writer.close()
            await writer.wait_closed()

    run(kind, body)


@pytest.mark.parametrize("kind", LOOPS)
def test_close_refuses_new_connections_and_keeps_accepted_ones(kind: str) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        sock = listening_socket()
        port = sock.getsockname()[1]
        async with serving(Listener(loop, sock, Echo)) as listener:
            with clients(port, 1) as socks:
                listener._accept_ready()
                await settle()
                listener.close()
                listener.close()  # twice is fine
                assert listener.sockets == []
                assert sock.fileno() == -1
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection(("127.0.0.1", port), timeout=5).close()
                socks[0].sendall(b"still here")
                assert await reply(socks[0], 32) == b"STILL HERE"

    run(kind, body)


class FlakySocket:
    """A listening socket whose accept fails as told, then delegates to a real one."""

    def __init__(self, real: socket.socket, errors: list[int]) -> None:
        self.real = real
        self.errors = errors

    def accept(self) -> tuple[socket.socket, object]:
        if self.errors:
            raise OSError(self.errors.pop(0), "injected")
        return self.real.accept()

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)


@pytest.mark.parametrize("kind", LOOPS)
def test_a_vanished_client_is_skipped(kind: str) -> None:
    """ECONNABORTED concerns one connection: the next ones are accepted in the same turn."""
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        real = listening_socket()
        flaky = FlakySocket(real, [errno.ECONNABORTED])
        async with serving(Listener(loop, flaky, Echo)) as listener:  # type: ignore[arg-type]
            with clients(real.getsockname()[1], 3):
                listener._accept_ready()
                assert listener.accepted == 3
                await settle()

    run(kind, body)


@pytest.mark.parametrize("kind", LOOPS)
def test_an_unexpected_accept_error_pauses_instead_of_spinning(
        kind: str, caplog: pytest.LogCaptureFixture) -> None:
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        real = listening_socket()
        flaky = FlakySocket(real, [errno.EINVAL] * 1000)
        async with serving(Listener(loop, flaky, Echo)) as listener:  # type: ignore[arg-type]
            listener.start()
            with clients(real.getsockname()[1], 1):
                listener._accept_ready()
                assert len(flaky.errors) == 999  # one attempt, then the pause
                assert listener.paused

    run(kind, body)
    assert "pausing" in caplog.text


@pytest.mark.parametrize("kind", LOOPS)
def test_out_of_descriptors_pauses_then_resumes(kind: str,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """EMFILE: stop polling (the clients wait in the kernel's queue, not accepted and
    dropped), log it, and accept them once the pause is over."""
    async def body(loop: asyncio.AbstractEventLoop) -> None:
        real = listening_socket()
        flaky = FlakySocket(real, [errno.EMFILE])
        async with serving(Listener(loop, flaky, Echo,  # type: ignore[arg-type]
                                    pause_seconds=0.05)) as listener:
            listener.start()
            with clients(real.getsockname()[1], 2):
                listener._accept_ready()
                assert listener.accepted == 0
                assert listener.paused
                for _ in range(200):
                    if listener.accepted == 2:
                        break
                    await asyncio.sleep(0.05)
                assert listener.accepted == 2
                assert not listener.paused

    run(kind, body)
    assert "pausing" in caplog.text
