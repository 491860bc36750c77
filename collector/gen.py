"""The random event generator: `collector gen` and `./reg.sh` (SPEC §8, issue 5).

Two halves that know nothing of each other:

Model (`EventModel`). Realistic traffic, not uniform noise: a fixed population of users with
integer ids whose activity follows a heavy tail (a few users do most of the clicking), sessions
that start more often at some hours of the day (UTC) and less on weekends, and that walk a
Markov chain of plausible steps (login -> page_view -> search -> view_item -> add_to_cart ->
checkout -> purchase, with drop-offs at every step, signups for users seen the first time).
Params carry every JSON type: strings, ints, floats, booleans, null, nested objects and lists.
Every random draw comes from one `random.Random(seed)`, so a seed reproduces the events exactly.
Timestamps stay inside [start, end]: a session that would run past `end` stops there.

Sender (`send_all`). `concurrency` keep-alive HTTP/1.1 connections, each with one request in
flight, all pulling request bodies from one shared iterator (safe: the iterator never awaits,
so two coroutines cannot be inside it at once). The client is a small asyncio.Protocol rather
than asyncio streams: a fast collector answers tens of thousands of requests per second, and
stream readers cost a task switch per `readuntil`. It understands what a collector may send
back: Content-Length and chunked bodies, `Connection: close`, interim 1xx responses.

Accounting. An event is *sent* once its request has been written, *accepted* when the 202 says
so (its `accepted` count), and *failed* otherwise (a 4xx/5xx, a reset, a timeout). Nothing is
retried: a POST that timed out may have been stored, and a retry would count it twice in the
real-time stats. When the server has closed a kept connection before the next request, that
request simply goes out on a new one: nothing of it had been sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import ssl
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO, cast
from urllib.parse import urlsplit

import orjson

from collector.clock import Clock, SystemClock

DEFAULT_TOTAL = 100
DEFAULT_CONCURRENCY = 100
DEFAULT_USERS = 300
DEFAULT_TIMEOUT = 30.0
MAX_BATCH = 1000
"""The collector's default per-request limit (SPEC §3); larger batches would only get 413s."""

# --- model ------------------------------------------------------------------------------------

HOUR_WEIGHTS = (
    0.25, 0.15, 0.10, 0.08, 0.08, 0.12, 0.25, 0.45, 0.70, 0.90, 1.00, 0.95,
    0.90, 1.00, 1.00, 0.95, 0.90, 1.00, 1.20, 1.40, 1.50, 1.30, 0.90, 0.50,
)
"""Relative session starts per UTC hour: a night trough, a working-day plateau, an evening
peak. The peak/trough ratio (~19) makes peak-times charts show something."""
WEEKEND_FACTOR = 0.7

# Markov chain of a session: state -> ((next state, weight), ...). "end" closes the session.
TRANSITIONS: dict[str, tuple[tuple[str, float], ...]] = {
    "login": (("page_view", 1.0),),
    "signup": (("page_view", 0.8), ("end", 0.2)),
    "page_view": (("page_view", 0.25), ("search", 0.35), ("view_item", 0.2), ("logout", 0.03),
                  ("end", 0.17)),
    "search": (("view_item", 0.55), ("search", 0.15), ("page_view", 0.1), ("add_to_cart", 0.05),
               ("end", 0.15)),
    "view_item": (("add_to_cart", 0.35), ("view_item", 0.2), ("search", 0.15),
                  ("page_view", 0.08), ("end", 0.22)),
    "add_to_cart": (("checkout", 0.5), ("view_item", 0.2), ("add_to_cart", 0.05),
                    ("end", 0.25)),
    "checkout": (("purchase", 0.6), ("error", 0.05), ("end", 0.35)),
    "purchase": (("page_view", 0.2), ("logout", 0.1), ("end", 0.7)),
    "error": (("checkout", 0.4), ("end", 0.6)),
    "logout": (("end", 1.0),),
}
EVENT_TYPES = tuple(TRANSITIONS)

CATEGORIES = ("books", "games", "garden", "kitchen", "music", "outdoor", "toys", "electronics")
PATHS = ("/", "/home", "/deals", "/new", "/help", "/account", "/blog", "/cart", "/category")
QUERIES = ("red shoes", "usb cable", "coffee", "tent", "lego", "novel", "headphones", "chair",
           "kettle", "garden hose", "puzzle", "vinyl")
PLATFORMS = (("web", 0.6), ("ios", 0.25), ("android", 0.15))
PLANS = ("free", "pro", "team")
COUNTRIES = ("FR", "DE", "US", "GB", "IN", "BR", "JP", "ES")
REFERRERS = ("https://www.google.com/", "https://news.ycombinator.com/", "https://t.co/x",
             None, None)


@dataclass(frozen=True, slots=True)
class User:
    id: int
    weight: float
    plan: str
    country: str
    platform: str


@dataclass(slots=True)
class _Session:
    user: User
    session_id: str
    cart: list[dict[str, Any]] = field(default_factory=list)


class EventModel:
    """Deterministic realistic events in [start, end]; see the module docstring.

    Args:
        rng: the only source of randomness.
        start, end: UNIX seconds, start <= end; every event's ts lies in [start, end].
        users: size of the user population (ids 1..users).
    """

    def __init__(self, rng: random.Random, start: float, end: float,
                 users: int = DEFAULT_USERS) -> None:
        if end < start:
            raise ValueError(f"cannot generate: end {end} is before start {start}")
        if users < 1:
            raise ValueError("cannot generate: at least one user is needed")
        self._rng = rng
        self.start = start
        self.end = end
        # Zipf-like activity: user k is picked with weight 1 / k^0.9, shuffled over the ids so
        # that the most active user is not always user 1.
        ids = list(range(1, users + 1))
        rng.shuffle(ids)
        self.users = [
            User(id=uid, weight=1.0 / (rank + 1) ** 0.9, plan=rng.choice(PLANS),
                 country=rng.choice(COUNTRIES),
                 platform=_weighted(rng, PLATFORMS))
            for rank, uid in enumerate(ids)
        ]
        self._cum_weights = list(_cumulative(u.weight for u in self.users))
        self._seen: set[int] = set()

    def events(self, total: int) -> Iterator[dict[str, Any]]:
        """Exactly `total` events, session after session (not globally time-ordered)."""
        produced = 0
        while produced < total:
            for event in self._session():
                yield event
                produced += 1
                if produced == total:
                    return

    # -- sessions ----------------------------------------------------------------------------
    def _session(self) -> Iterator[dict[str, Any]]:
        rng = self._rng
        user = rng.choices(self.users, cum_weights=self._cum_weights)[0]
        session = _Session(user, f"{rng.getrandbits(48):012x}")
        ts = self._session_start()
        if user.id not in self._seen:
            self._seen.add(user.id)
            state = "signup" if rng.random() < 0.6 else "login"
        else:
            state = "login" if rng.random() < 0.3 else "page_view"
        while True:
            yield self._event(state, ts, session)
            state = _weighted(rng, TRANSITIONS[state])
            if state == "end":
                return
            # Think time: log-normal, median ~20 s, a long tail of minutes.
            ts += min(rng.lognormvariate(3.0, 1.0), 1800.0)
            if ts > self.end:
                return

    def _session_start(self) -> float:
        """A time in [start, end] drawn with the hourly and weekday weights (rejection
        sampling: the acceptance rate is the mean weight over the peak, about 0.45)."""
        rng = self._rng
        peak = max(HOUR_WEIGHTS)
        while True:
            ts = self.start + rng.random() * (self.end - self.start)
            if rng.random() * peak <= activity_weight(ts):
                return ts

    def _event(self, event_type: str, ts: float, s: _Session) -> dict[str, Any]:
        rng = self._rng
        params: dict[str, Any] = {
            "user_id": s.user.id,
            "session_id": s.session_id,
            "platform": s.user.platform,
        }
        params.update(self._params(event_type, s))
        # Half the clients send whole seconds, half milliseconds; neither may leave the range.
        shown: float = round(ts, 3) if rng.random() < 0.5 else int(ts)
        return {"event_type": event_type, "ts": min(max(shown, self.start), self.end),
                "params": params}

    def _params(self, event_type: str, s: _Session) -> dict[str, Any]:
        rng = self._rng
        if event_type == "page_view":
            return {"path": rng.choice(PATHS), "referrer": rng.choice(REFERRERS),
                    "load_ms": int(rng.lognormvariate(5.5, 0.5)),
                    "viewport": {"w": rng.choice((390, 768, 1280, 1920)),
                                 "h": rng.choice((844, 1024, 800, 1080))}}
        if event_type == "search":
            return {"query": rng.choice(QUERIES), "results": rng.randint(0, 240),
                    "filters": {"category": rng.choice(CATEGORIES),
                                "price_max": round(rng.uniform(5, 500), 2),
                                "in_stock": rng.random() < 0.7}}
        if event_type == "view_item":
            return {"item": self._item(), "position": rng.randint(1, 24)}
        if event_type == "add_to_cart":
            item = self._item()
            item["qty"] = rng.randint(1, 3)
            s.cart.append(item)
            return {"item": item, "cart_size": len(s.cart),
                    "cart_value": round(sum(i["price"] * i["qty"] for i in s.cart), 2)}
        if event_type == "checkout":
            return {"items": [i["id"] for i in s.cart],
                    "total": round(sum(i["price"] * i["qty"] for i in s.cart), 2),
                    "coupon": rng.choice(("SPRING10", None, None, None))}
        if event_type == "purchase":
            total = round(sum(i["price"] * i["qty"] for i in s.cart), 2)
            return {"order_id": f"o-{rng.getrandbits(40):010x}", "total": total,
                    "currency": "EUR" if s.user.country in ("FR", "DE", "ES") else "USD",
                    "items": [{"id": i["id"], "qty": i["qty"]} for i in s.cart],
                    "first_purchase": rng.random() < 0.3}
        if event_type == "signup":
            return {"plan": s.user.plan, "country": s.user.country,
                    "utm": {"source": rng.choice(("google", "newsletter", "friend")),
                            "campaign": rng.choice(("spring", "launch", None))},
                    "newsletter": rng.random() < 0.4}
        if event_type == "login":
            return {"method": rng.choice(("password", "google", "sso")),
                    "remember_me": rng.random() < 0.5}
        if event_type == "logout":
            return {"reason": rng.choice(("user", "timeout"))}
        if event_type == "error":
            return {"code": rng.choice((402, 409, 500, 502)), "fatal": rng.random() < 0.2,
                    "message": "payment failed", "retryable": True}
        return {}

    def _item(self) -> dict[str, Any]:
        rng = self._rng
        return {"id": rng.randint(1000, 9999), "category": rng.choice(CATEGORIES),
                "price": round(rng.lognormvariate(3.0, 0.8), 2),
                "tags": rng.sample(("new", "sale", "eco", "gift", "bestseller"), k=2)}


def activity_weight(ts: float) -> float:
    """Relative session-start rate at UNIX time `ts` (UTC hour of day, weekend dip)."""
    hour = int(ts // 3600) % 24
    weekday = (int(ts // 86400) + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
    return HOUR_WEIGHTS[hour] * (WEEKEND_FACTOR if weekday >= 5 else 1.0)


def _cumulative(weights: Iterable[float]) -> Iterator[float]:
    acc = 0.0
    for w in weights:
        acc += w
        yield acc


def _weighted(rng: random.Random, choices: tuple[tuple[Any, float], ...]) -> Any:
    x = rng.random() * sum(w for _, w in choices)
    for value, w in choices:
        x -= w
        if x < 0:
            return value
    return choices[-1][0]


def request_bodies(events: Iterable[dict[str, Any]], batch: int) -> Iterator[tuple[int, bytes]]:
    """(event count, JSON body) per request: one object when batch is 1 (the seed's shape),
    else arrays of up to `batch` events."""
    if batch == 1:
        for e in events:
            yield 1, orjson.dumps(e)
        return
    chunk: list[dict[str, Any]] = []
    for e in events:
        chunk.append(e)
        if len(chunk) == batch:
            yield len(chunk), orjson.dumps(chunk)
            chunk = []
    if chunk:
        yield len(chunk), orjson.dumps(chunk)


# --- HTTP client ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where to POST: parsed from the -u/--uri option."""

    host: str
    port: int
    path: str
    tls: bool
    host_header: str

    @classmethod
    def parse(cls, uri: str) -> Target:
        """Raises ValueError naming what is wrong with `uri`."""
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{uri!r}: the URI must start with http:// or https://")
        if not parts.hostname:
            raise ValueError(f"{uri!r}: the URI has no host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"{uri!r}: the port is not a number from 0 to 65535") from None
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(host=parts.hostname, port=port, path=path, tls=parts.scheme == "https",
                   host_header=parts.netloc.rpartition("@")[2])


@dataclass(frozen=True, slots=True)
class HttpResult:
    status: int
    body: bytes
    keep_alive: bool


class ResponseError(Exception):
    """The server sent something that is not an HTTP/1.1 response."""


def parse_response(buf: bytearray | bytes, *, at_eof: bool = False
                   ) -> tuple[HttpResult, int] | None:
    """One complete response at the start of `buf`: (result, bytes consumed), or None when
    more bytes are needed. Interim 1xx responses are skipped (consumed, not returned).

    A body without Content-Length or chunked framing runs to the end of the connection, so it
    is complete only when `at_eof` is true.

    Raises:
        ResponseError: a malformed status line, header or chunk size.
    """
    offset = 0
    while True:
        end = buf.find(b"\r\n\r\n", offset)
        if end < 0:
            return None
        head = bytes(buf[offset:end]).split(b"\r\n")
        status_line = head[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
            raise ResponseError(f"bad status line {head[0][:80]!r}")
        try:
            status = int(status_line[1])
        except ValueError:
            raise ResponseError(f"bad status code in {head[0][:80]!r}") from None
        headers: dict[bytes, bytes] = {}
        for line in head[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ResponseError(f"bad header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        body_start = end + 4
        if 100 <= status < 200:
            offset = body_start
            continue
        break
    keep_alive = (headers.get(b"connection", b"").lower() != b"close"
                  and status_line[0] != b"HTTP/1.0")
    if status in (204, 304):
        return HttpResult(status, b"", keep_alive), body_start
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        return _parse_chunked(buf, body_start, status, keep_alive)
    length = headers.get(b"content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise ResponseError(f"bad Content-Length {length[:40]!r}") from None
        if len(buf) - body_start < n:
            return None
        return HttpResult(status, bytes(buf[body_start:body_start + n]),
                          keep_alive), body_start + n
    if not at_eof:
        return None
    return HttpResult(status, bytes(buf[body_start:]), False), len(buf)


def _parse_chunked(buf: bytearray | bytes, pos: int, status: int, keep_alive: bool
                   ) -> tuple[HttpResult, int] | None:
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ResponseError(f"bad chunk size {size_text[:20]!r}") from None
        pos = eol + 2
        if size == 0:
            trailer_end = buf.find(b"\r\n", pos)
            # Trailers are skipped up to the empty line that ends them.
            while trailer_end >= 0 and trailer_end != pos:
                pos = trailer_end + 2
                trailer_end = buf.find(b"\r\n", pos)
            if trailer_end < 0:
                return None
            return HttpResult(status, bytes(body), keep_alive), pos + 2
        if len(buf) < pos + size + 2:
            return None
        body += buf[pos:pos + size]
        pos += size + 2


class Connection(Protocol):
    """One keep-alive connection with at most one request in flight."""

    @property
    def closed(self) -> bool: ...

    def request(self, data: bytes, timeout: float) -> Awaitable[HttpResult]: ...

    def close(self) -> None: ...


class HttpClientProtocol(asyncio.Protocol):
    """The client side of one connection: write a request, resolve a future with the
    response. Pipelining is not used, so at most one future is pending."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[HttpResult] | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._deliver(at_eof=False)

    def eof_received(self) -> bool | None:
        self._deliver(at_eof=True)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(
                f"connection closed before a complete response: {exc or 'EOF'}"))

    def _deliver(self, *, at_eof: bool) -> None:
        if self._waiter is None:
            if self._buf.strip():
                # Bytes nobody asked for: the connection is out of step; drop it.
                self.close()
            return
        try:
            parsed = parse_response(self._buf, at_eof=at_eof)
        except ResponseError as e:
            waiter, self._waiter = self._waiter, None
            waiter.set_exception(e)
            self.close()
            return
        if parsed is None:
            return
        result, used = parsed
        del self._buf[:used]
        waiter, self._waiter = self._waiter, None
        if not waiter.done():
            waiter.set_result(result)
        if not result.keep_alive:
            self.close()

    def request(self, data: bytes, timeout: float) -> asyncio.Future[HttpResult]:
        """Send `data`; the future fails with TimeoutError (and the connection is closed)
        when no complete response arrives within `timeout` seconds. A timer handle per
        request is cheaper than asyncio.wait_for, which wraps the future in a task."""
        if self._closed or self._transport is None:
            raise ConnectionError("cannot send: the connection is closed")
        if self._waiter is not None:
            raise RuntimeError("cannot send: a request is already in flight")
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout, self._expire, waiter)
        waiter.add_done_callback(lambda _: timer.cancel())
        self._transport.write(data)
        return waiter

    def _expire(self, waiter: asyncio.Future[HttpResult]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())
        if self._waiter is waiter:
            self._waiter = None
            self.close()

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()


Connect = Callable[[], Awaitable[Connection]]


def tcp_connector(target: Target, *, timeout: float) -> Connect:
    """A `Connect` opening real TCP (or TLS) connections to `target`."""
    ssl_ctx = ssl.create_default_context() if target.tls else None

    async def connect() -> Connection:
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: HttpClientProtocol(loop), target.host, target.port,
                                   ssl=ssl_ctx),
            timeout)
        return proto

    return connect


def request_head(target: Target, write_key: str | None = None) -> bytes:
    """Everything of the request before the Content-Length value, built once."""
    lines = [f"POST {target.path} HTTP/1.1", f"Host: {target.host_header}",
             "User-Agent: collector-gen", "Content-Type: application/json"]
    if write_key:
        lines.append(f"X-Write-Key: {write_key}")
    return ("\r\n".join(lines) + "\r\nContent-Length: ").encode()


# --- sending and accounting -------------------------------------------------------------------


@dataclass(slots=True)
class Summary:
    sent: int = 0
    accepted: int = 0
    failed: int = 0
    requests: int = 0
    failed_requests: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    """Seconds per answered request (failures without an answer are not timed)."""
    errors: dict[str, int] = field(default_factory=dict)
    """Distinct failure reasons with their request counts."""

    def record_error(self, events: int, reason: str) -> None:
        self.failed += events
        self.failed_requests += 1
        if reason in self.errors or len(self.errors) < 20:
            self.errors[reason] = self.errors.get(reason, 0) + 1

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile of the latencies (q in [0, 100]); None with no data."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1]

    def report(self) -> str:
        # The rate of accepted events: a run that reached nothing must not show a rate.
        rate = self.accepted / self.elapsed if self.elapsed > 0 else 0.0
        rps = self.requests / self.elapsed if self.elapsed > 0 else 0.0
        p50, p99 = self.percentile(50), self.percentile(99)

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v * 1000:.2f} ms"

        lines = [
            f"sent {self.sent} events in {self.requests} requests in {self.elapsed:.2f} s",
            f"accepted {self.accepted}, failed {self.failed}",
            f"{rate:.0f} events/s accepted, {rps:.0f} requests/s",
            f"latency p50 {ms(p50)}, p99 {ms(p99)}",
        ]
        for reason, n in sorted(self.errors.items(), key=lambda kv: -kv[1]):
            lines.append(f"  failed x{n}: {reason}")
        return "\n".join(lines)


class Progress(Protocol):
    def update(self, n: int) -> object: ...


def _accepted_count(body: bytes, fallback: int) -> int:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return fallback
    n = doc.get("accepted") if isinstance(doc, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) else fallback


def _error_reason(result: HttpResult) -> str:
    try:
        doc = orjson.loads(result.body)
        if isinstance(doc, dict) and "message" in doc:
            return f"HTTP {result.status}: {str(doc['message'])[:200]}"
    except orjson.JSONDecodeError:
        pass
    return f"HTTP {result.status}: {result.body[:200].decode('utf-8', 'replace')}"


async def send_all(
    bodies: Iterable[tuple[int, bytes]],
    head: bytes,
    connect: Connect,
    *,
    concurrency: int,
    clock: Clock,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Progress | None = None,
) -> Summary:
    """POST every body over `concurrency` keep-alive connections; the summary of it all.

    Args:
        bodies: (event count, JSON body) per request; consumed once, shared by the workers.
        head: the request up to the Content-Length value (`request_head`).
        connect: opens a connection (`tcp_connector`, or an in-memory one in unit tests).
        concurrency: connections, each with one request in flight.
        clock: the monotonic clock times requests and the whole run.
        timeout: seconds for a connect or a response; a slower one counts as failed.
        progress: gets `update(events)` after each request (a tqdm bar).
    """
    if concurrency < 1:
        raise ValueError("cannot send: concurrency must be at least 1")
    summary = Summary()
    shared = iter(bodies)
    started = clock.monotonic()

    async def worker() -> None:
        conn: Connection | None = None
        for count, body in shared:
            request = b"%s%d\r\n\r\n%s" % (head, len(body), body)
            try:
                if conn is None or conn.closed:
                    conn = await connect()
                t0 = clock.monotonic()
                result = await conn.request(request, timeout)
            except (OSError, ConnectionError, TimeoutError, ResponseError) as e:
                summary.sent += count
                summary.requests += 1
                summary.record_error(count, _describe(e))
                if conn is not None:
                    conn.close()
                    conn = None
            else:
                summary.latencies.append(clock.monotonic() - t0)
                summary.sent += count
                summary.requests += 1
                if result.status == 202:
                    accepted = min(_accepted_count(result.body, count), count)
                    summary.accepted += accepted
                    if accepted < count:
                        summary.record_error(count - accepted, "fewer events accepted than sent")
                else:
                    summary.record_error(count, _error_reason(result))
            if progress is not None:
                progress.update(count)
        if conn is not None:
            conn.close()

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        summary.elapsed = clock.monotonic() - started
    return summary


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out waiting for the server"
    return f"{type(e).__name__}: {e}"


# --- command line -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GenOptions:
    uri: str
    total: int
    start_time: float
    end_time: float
    concurrency: int
    batch: int
    seed: int | None
    users: int
    write_key: str | None
    timeout: float
    progress: bool


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} must be at least 1")
    return n


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} must not be negative")
    return n


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not UNIX seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not UNIX seconds (>= 0)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="collector gen",
        description="Send realistic random events to a collector and report how it went. "
                    "Exits 1 if any event was not accepted.")
    p.add_argument("-u", "--uri", required=True,
                   help="where to POST, e.g. http://127.0.0.1:8080/api/events")
    p.add_argument("--total", type=_count, default=DEFAULT_TOTAL,
                   help=f"events to send (default {DEFAULT_TOTAL})")
    p.add_argument("--startTime", dest="start_time", type=_seconds,
                   help="earliest event time, UNIX seconds (default: now - 1 day)")
    p.add_argument("--endTime", dest="end_time", type=_seconds,
                   help="latest event time, UNIX seconds (default: now)")
    p.add_argument("--concurrency", type=_positive_int, default=DEFAULT_CONCURRENCY,
                   help=f"keep-alive connections (default {DEFAULT_CONCURRENCY})")
    p.add_argument("--batch", type=_positive_int, default=1,
                   help=f"events per request, at most {MAX_BATCH} (default 1: one JSON object "
                        "per request; more: a JSON array)")
    p.add_argument("--seed", type=int, help="random seed: the same seed sends the same events")
    p.add_argument("--users", type=_positive_int, default=DEFAULT_USERS,
                   help=f"size of the user population (default {DEFAULT_USERS})")
    p.add_argument("--write-key", help="sent as X-Write-Key when the collector requires one")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds per connect or response (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    return p


def parse_options(argv: list[str], now: float) -> GenOptions:
    """The options of `argv`, defaults resolved against `now` (UNIX seconds).

    Raises:
        SystemExit: bad options (argparse prints the usage and the reason), or -h.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    end = now if args.end_time is None else args.end_time
    start = end - 86400 if args.start_time is None else args.start_time
    if args.start_time is not None and args.end_time is None and start > end:
        parser.error(f"--startTime {start:g} is in the future; give --endTime too")
    if start > end:
        parser.error(f"--startTime {start:g} is after --endTime {end:g}")
    if args.batch > MAX_BATCH:
        parser.error(f"--batch {args.batch} is above the collector's limit of {MAX_BATCH}")
    if not args.timeout > 0:
        parser.error("--timeout must be positive")
    try:
        Target.parse(args.uri)
    except ValueError as e:
        parser.error(str(e))
    return GenOptions(uri=args.uri, total=args.total, start_time=start, end_time=end,
                      concurrency=args.concurrency, batch=args.batch, seed=args.seed,
                      users=args.users, write_key=args.write_key, timeout=args.timeout,
                      progress=args.progress)


def run(opts: GenOptions, *, clock: Clock, connect: Connect | None = None,
        out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Generate, send, print the summary; the exit code (0: every event accepted)."""
    target = Target.parse(opts.uri)
    rng = random.Random(opts.seed)
    model = EventModel(rng, opts.start_time, opts.end_time, users=opts.users)
    bodies = request_bodies(model.events(opts.total), opts.batch)
    connect = connect or tcp_connector(target, timeout=opts.timeout)
    bar: Any = None
    if opts.progress:
        from tqdm import tqdm

        bar = tqdm(total=opts.total, unit="ev", file=err, dynamic_ncols=True,
                   mininterval=0.25)
    try:
        summary = _run_loop(send_all(bodies, request_head(target, opts.write_key), connect,
                                     concurrency=opts.concurrency, clock=clock,
                                     timeout=opts.timeout, progress=bar))
    finally:
        if bar is not None:
            bar.close()
    print(summary.report(), file=out)
    return 0 if summary.failed == 0 and summary.accepted == opts.total else 1


def _run_loop(coro: Awaitable[Summary]) -> Summary:
    """Run under uvloop when it is installed (it roughly doubles the request rate)."""
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    """`collector gen ...` and `./reg.sh ...`: the exit code (2 for bad options)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    clock = SystemClock()
    try:
        opts = parse_options(argv, clock.time())
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    try:
        return run(opts, clock=clock)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # (`reg.sh ... | head`): the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

