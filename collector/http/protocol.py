"""The asyncio Protocol: bytes from the transport into the sans-IO parser, responses back out.

Theory of operation
-------------------
One `HttpProtocol` per connection. `data_received` feeds the parser and then drains it with
`_process()`: a RequestHead starts a request, Body events accumulate, EndOfMessage dispatches
to the router. A handler that returns a `Response` is answered immediately, inside the same
`data_received` call (the fast path: no task, no future); one that returns a `Deferred` (the
ingestion route, waiting for the segment writer's shared append) is answered by its callback;
one that returns an awaitable runs as a task. Until the answer is written the connection is
*busy*.

Pipelining: the parser pauses after each request until `start_next_cycle()`, which we call only
after the response has been written. Requests a client pipelines therefore wait in the parser's
buffer and are answered strictly in order. While busy, reading is paused once the buffer holds
more than one request's worth of bytes (backpressure towards the client).

Backpressure from the client's side: when the transport's write buffer passes the high-water
mark, asyncio calls `pause_writing`; we then stop reading too, so a client that does not read
its responses cannot make us buffer without bound.

Timeouts (a deadline per connection, checked by one sweeper task per worker a few times a
second, so requests create no timer objects): a new connection must complete its first
request's head within the header timeout of connecting (closed silently if it sent nothing);
idle keep-alive between requests; a header timeout armed at the first byte of a request and
*not* re-armed by later bytes (a slowloris client sending a byte every few seconds still hits
it); a body timeout re-armed on every chunk of body (a slow but progressing upload is fine, a
stalled one is not).

Errors: a `ProtocolError` from the parser becomes its status (400/413/414/431/501/505) with the
JSON error body, and the connection closes, since the framing can no longer be trusted. Any
other exception in a handler is a bug: logged with its traceback, answered 500.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from collector.errors import HTTPError, ProtocolError
from collector.http.events import (
    NEED_DATA,
    PAUSED,
    Body,
    ConnectionClosed,
    EndOfMessage,
    RequestHead,
)
from collector.http.message import Deferred, Request, Response, error_response
from collector.http.parser import ParserLimits, RequestParser
from collector.http.response import CONTINUE, DateCache, serialize
from collector.http.router import Router
from collector.metrics import Metrics

log = logging.getLogger(__name__)

PREFLIGHT = Response(
    204,
    b"",
    "text/plain",
    [
        ("access-control-allow-methods", "GET, POST, OPTIONS"),
        ("access-control-allow-headers", "Content-Type, Authorization, Content-Encoding, "
                                         "X-Write-Key"),
        ("access-control-max-age", "86400"),
    ],
)


@dataclass(slots=True)
class ServerState:
    """What every connection of one worker shares (uvicorn's ServerState idea)."""

    router: Router
    metrics: Metrics
    limits: ParserLimits
    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    max_connections: int
    write_buffer_high: int
    connections: set[HttpProtocol] = field(default_factory=set)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    date: DateCache = field(default_factory=DateCache)
    stopping: bool = False
    on_request: Callable[[str, int, float], None] | None = None
    """Called after each response with (route label, status, seconds), for metrics."""
    after_read: Callable[[], None] | None = None
    """Called after each read has been processed, outside any connection's parse loop (the
    worker lets the segment writer flush there once enough requests wait for it)."""


_NO_FIELDS: Mapping[bytes, bytes] = MappingProxyType({})
"""The header fields of the stand-in head of an error that came before a whole head."""

_KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS",
                            "TRACE", "PATCH"))
"""RFC 9110's methods and PATCH (RFC 5789): another method gets 501 (see _dispatch)."""

_IDLE, _HEADER, _BODY, _FIRST = 0, 1, 2, 3
"""Deadline kinds. _FIRST: a new connection waits at most the header timeout for its first
request (the keep-alive timeout is for a client that has been served; a connection that
never sends would otherwise hold a slot of max_connections for that long)."""


class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "state", "loop", "parser", "transport", "client", "head", "parts", "busy",
        "write_paused", "read_paused", "deadline", "timer_kind", "continue_sent", "closed",
        "started", "label", "first_deadline",
    )

    def __init__(self, state: ServerState, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self.loop = loop
        self.parser = RequestParser(state.limits)
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.head: RequestHead | None = None
        self.parts: list[bytes] = []
        self.busy = False
        self.write_paused = False
        self.read_paused = False
        self.deadline = 0.0
        """loop.time() at which the current phase times out; 0 when none (see sweep())."""
        self.timer_kind = -1
        self.continue_sent = False
        self.closed = False
        self.started = 0.0
        self.label = ""
        """The metrics label of the request whose Deferred response is pending."""
        self.first_deadline = 0.0
        """Until the first response: when the first request's head must be complete (connect
        time + header timeout; blank lines do not move it). 0 once served."""

    # -- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        t: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = t
        peer = transport.get_extra_info("peername")
        self.client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        state = self.state
        if state.stopping or len(state.connections) >= state.max_connections:
            # Over the cap (or shutting down): answer instead of silently resetting, so the
            # client knows to back off and retry.
            self._write_now(
                error_response(503, "too_many_connections",
                               "the collector is at its connection limit; retry shortly",
                               headers=[("retry-after", "1")], close=True),
                keep_alive=False, http10=False, head_only=False,
            )
            transport.close()
            self.closed = True
            return
        state.connections.add(self)
        state.metrics.inc("collector_connections_opened_total")
        t.set_write_buffer_limits(high=state.write_buffer_high)
        self.first_deadline = self.loop.time() + state.header_timeout
        self._arm(_FIRST)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.state.connections.discard(self)
        self._cancel_timer()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._resume_reading()
        self._process()

    def eof_received(self) -> bool | None:
        self.parser.feed(b"")
        self._process()
        return None

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        self._process()
        after_read = self.state.after_read
        if after_read is not None:
            after_read()

    # -- the parse/dispatch loop ---------------------------------------------------------------

    def _process(self) -> None:
        parser = self.parser
        while not self.closed and not self.busy and not self.write_paused:
            try:
                event = parser.next_event()
            except ProtocolError as e:
                self._protocol_error(e)
                return
            t = type(event)
            if t is RequestHead:
                assert isinstance(event, RequestHead)
                self.head = event
                self.continue_sent = False
                self.started = self.loop.time()
                body = parser.take_whole_body()
                if body is not None:
                    self.deadline = 0.0  # (_cancel_timer, inlined: once per request)
                    self.timer_kind = -1
                    self._dispatch(body)
                else:
                    self.parts = []
            elif t is Body:
                assert isinstance(event, Body)
                self.parts.append(event.data)
            elif t is EndOfMessage:
                self._cancel_timer()
                parts = self.parts
                self.parts = []
                self._dispatch(parts[0] if len(parts) == 1 else b"".join(parts))
            elif event is NEED_DATA:
                self._need_data()
                return
            elif t is ConnectionClosed:
                self._close()
                return
            elif event is PAUSED:
                return
        if self.busy and parser.buffered > self.state.limits.max_body:
            # A client pipelining faster than we answer: stop reading until we catch up.
            self._pause_reading()

    def _need_data(self) -> None:
        head = self.head
        if head is None:
            if self.parser.buffered:
                if self.timer_kind != _HEADER:
                    self._arm(_HEADER)
            elif self.timer_kind not in (_IDLE, _FIRST):
                if self.state.stopping:
                    self._close()
                    return
                # Blank lines before a first request ("\r", then "\n") leave nothing buffered:
                # the connection still owes its first request, by the same deadline.
                self._arm(_FIRST if self.first_deadline else _IDLE)
            return
        # Mid-body: progress re-arms the body timer; send 100 Continue lazily, only once we
        # actually need the body (uvicorn does the same).
        self._arm(_BODY)
        if head.expect_continue and not self.continue_sent:
            self.continue_sent = True
            refused = self._refusal_from_head(head)
            if refused is not None:
                # The final status instead of 100 (RFC 9110 §10.1.1): the client keeps its
                # body. The connection closes, since that body may still follow.
                refusal, label = refused
                self._cancel_timer()
                self._respond(Response(refusal.status, refusal.body, refusal.content_type,
                                       refusal.headers, True), label)
                return
            assert self.transport is not None
            self.transport.write(CONTINUE)

    def _refusal_from_head(self, head: RequestHead) -> tuple[Response, str] | None:
        """The response the head alone decides (unknown path or method, or what the route's
        precheck refuses: a write key, an encoding, the read token) and its metrics label; or
        None."""
        if head.method == "OPTIONS":
            return None  # (a preflight is answered whatever the path: _dispatch)
        path, _, query = head.target.partition("?")
        request = Request(head.method, path, query, head.headers, b"", head.version,
                          self.client, head.fields)
        handler, allowed = self.state.router.resolve(request)
        if handler is None:
            return _unroutable(head.method, path, allowed), "unmatched"
        precheck = self.state.router.precheck(handler)
        refusal = None if precheck is None else precheck(request)
        if refusal is None:
            return None
        return refusal, _route_label(request)

    def _dispatch(self, body: bytes) -> None:
        head = self.head
        assert head is not None
        target = head.target
        path, _, query = target.partition("?")
        request = Request(head.method, path, query, head.headers, body, head.version,
                          self.client, head.fields)
        if head.method == "OPTIONS":
            self._respond(PREFLIGHT, "OPTIONS")
            return
        router = self.state.router
        methods = router.exact.get(path)
        handler = None if methods is None else methods.get(head.method)
        if handler is not None:
            label = path
        else:
            handler, allowed = router.resolve(request)
            if handler is None:
                self._respond(_unroutable(head.method, path, allowed), "unmatched")
                return
            label = _route_label(request)
        try:
            result = handler(request)
        except HTTPError as e:
            self._respond(error_response(e.status, e.code, e.message, e.headers), label)
            return
        except Exception:
            log.exception("handler for %s %s failed", head.method, path)
            self._respond(_internal_error(), label)
            return
        rtype = type(result)
        if rtype is Response:
            self._respond(result, label)  # type: ignore[arg-type]
            return
        self.busy = True
        if isinstance(result, Deferred):
            self.label = label
            result.on_response(self._on_deferred)
            return
        task = asyncio.ensure_future(result)  # type: ignore[arg-type]
        self.state.tasks.add(task)
        task.add_done_callback(lambda t: self._on_task_done(t, label))

    def _on_deferred(self, resp: Response) -> None:
        self.busy = False
        if self.closed:
            return  # the client left; whatever was stored stays stored
        self._respond(resp, self.label)
        if self.read_paused:
            self._resume_reading()
        if self.parser.at_rest and not self.closed and not self.write_paused:
            # What _process() would end with, without asking the parser: NEED_DATA between
            # two requests, and `_need_data` then arms the keep-alive timeout (its branch for
            # an empty buffer, inlined: this runs after every ingestion request).
            if self.timer_kind not in (_IDLE, _FIRST):
                if self.state.stopping:
                    self._close()
                    return
                self._arm(_IDLE)
        else:
            self._process()

    def _on_task_done(self, task: asyncio.Future[Response], label: str) -> None:
        self.state.tasks.discard(task)
        self.busy = False
        if task.cancelled():
            resp = error_response(503, "shutting_down", "the collector is stopping; retry",
                                  close=True)
        else:
            exc = task.exception()
            if exc is None:
                resp = task.result()
            elif isinstance(exc, HTTPError):
                resp = error_response(exc.status, exc.code, exc.message, exc.headers)
            else:
                log.error("handler for %s failed", label, exc_info=exc)
                resp = _internal_error()
        if self.closed:
            return
        self._respond(resp, label)
        self._resume_reading()
        self._process()

    def _respond(self, resp: Response, label: str) -> None:
        head = self.head
        assert head is not None
        self.first_deadline = 0.0
        state = self.state
        keep_alive = head.keep_alive and not resp.close and not state.stopping
        assert self.transport is not None
        self.transport.write(serialize(resp, keep_alive, head.version == "1.0",
                                       head.method == "HEAD", state.date.line()))
        cb = state.on_request
        if cb is not None:
            cb(label, resp.status, self.loop.time() - self.started)
        self.head = None
        if not keep_alive:
            self._close()
            return
        self.parser.start_next_cycle()

    def _write_now(self, resp: Response, *, keep_alive: bool, http10: bool,
                   head_only: bool) -> None:
        assert self.transport is not None
        self.transport.write(serialize(resp, keep_alive, http10, head_only,
                                       self.state.date.line()))

    def _protocol_error(self, e: ProtocolError) -> None:
        self.state.metrics.inc("collector_protocol_errors_total", status=str(e.status_hint))
        self._head_for_error()
        self._respond(error_response(e.status_hint, e.code, e.message, close=True), "invalid")

    def _head_for_error(self) -> None:
        """Before answering an error that came before a full head: answer as HTTP/1.1 (and
        close), timed from now. `started` is the previous request's, or 0.0 (the loop's epoch)
        on a new connection, which put hours into the latency histogram."""
        if self.head is None:
            self.head = RequestHead("GET", "/", "1.1", (), False, False, None, False,
                                    _NO_FIELDS)
            self.started = self.loop.time()

    # -- connection lifecycle ------------------------------------------------------------------

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self._cancel_timer()
            assert self.transport is not None
            self.transport.close()

    def shutdown(self) -> None:
        """Graceful stop: an idle connection closes now; a busy one after its response."""
        if self.head is None and not self.busy and not self.parser.buffered:
            self._close()

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        self.closed = True

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and not self.write_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    def _arm(self, kind: int) -> None:
        # A deadline, not a TimerHandle: the sweeper checks deadlines a few times a second, so
        # a request costs one loop.time() instead of creating and cancelling a timer.
        self.timer_kind = kind
        if self.first_deadline and kind != _BODY:
            self.deadline = self.first_deadline  # (see first_deadline)
            return
        s = self.state
        # (No tuple of the four timeouts to index: _IDLE is armed after every response.)
        self.deadline = self.loop.time() + (
            s.keepalive_timeout if kind == _IDLE else s.body_timeout if kind == _BODY
            else s.header_timeout)

    def _cancel_timer(self) -> None:
        self.deadline = 0.0
        self.timer_kind = -1

    def _on_timeout(self, kind: int) -> None:
        self.deadline = 0.0
        self.timer_kind = -1
        if self.closed or self.busy:
            return
        if kind in (_IDLE, _FIRST):  # nothing of a request arrived: nothing to answer
            if kind == _FIRST:
                self.state.metrics.inc("collector_timeouts_total", phase="first_request")
            self._close()
            return
        self.state.metrics.inc("collector_timeouts_total",
                               phase="header" if kind == _HEADER else "body")
        what = "the request head" if kind == _HEADER else "the request body"
        self._head_for_error()
        self._respond(error_response(
            408, "request_timeout",
            f"{what} did not arrive in time; send the whole request without pauses",
            close=True), "invalid")


def _unroutable(method: str, path: str, allowed: list[str]) -> Response:
    """501 for a method unknown to HTTP, 405 (with Allow) for one the path does not take, 404
    for a path with no route."""
    if method not in _KNOWN_METHODS:
        # RFC 9110 §9.1: a method the server does not know is 501, not 405 (methods are
        # case-sensitive: "get" is not GET).
        return error_response(
            501, "not_implemented",
            f"method {method!r} is not implemented; use "
            f"{', '.join(allowed) if allowed else 'GET, POST or OPTIONS'}")
    if allowed:
        return error_response(
            405, "method_not_allowed",
            f"{method} is not allowed on {path}; use {', '.join(allowed)}",
            headers=[("allow", ", ".join(allowed))])
    return error_response(404, "not_found", f"no route for {path}; GET /help lists the routes")


def _route_label(request: Request) -> str:
    """The metrics label of a routed request: its path, or its pattern (`_pattern_label`)."""
    return request.path if not request.path_params else _pattern_label(request)


def _pattern_label(request: Request) -> str:
    """A metrics label without the path parameter values (bounded label cardinality)."""
    path = request.path
    for name, value in (request.path_params or {}).items():
        path = path.replace(value, ":" + name)
    return path


def _internal_error() -> Response:
    return error_response(500, "internal_error",
                          "the collector hit a bug; it is logged. Retry, or report it")


def protocol_factory(state: ServerState,
                     loop: asyncio.AbstractEventLoop) -> Callable[[], HttpProtocol]:
    def make() -> HttpProtocol:
        return HttpProtocol(state, loop)

    return make


def sweep(state: ServerState, now: float) -> None:
    """Fire the timeouts whose deadline has passed (called by sweep_forever)."""
    for conn in list(state.connections):
        deadline = conn.deadline
        if deadline and now >= deadline:
            conn._on_timeout(conn.timer_kind)


async def sweep_forever(state: ServerState) -> None:
    """Timeouts are enforced to within `interval` seconds: a quarter of the shortest one,
    at most one second."""
    loop = asyncio.get_running_loop()
    interval = min(1.0, state.header_timeout / 4, state.body_timeout / 4,
                   state.keepalive_timeout / 4)
    while True:
        await asyncio.sleep(interval)
        sweep(state, loop.time())


async def drain_connections(state: ServerState, timeout: float) -> None:
    """Close idle connections, let busy ones finish for up to `timeout` s, then abort the rest."""
    state.stopping = True
    for conn in list(state.connections):
        conn.shutdown()
    deadline = asyncio.get_running_loop().time() + timeout
    while state.connections and asyncio.get_running_loop().time() < deadline:
        for conn in list(state.connections):
            conn.shutdown()
        await asyncio.sleep(0.05)
    for conn in list(state.connections):
        conn.abort()
    for task in list(state.tasks):
        task.cancel()


