"""The random event generator: options, the event model, the HTTP client, the summary.

No sockets here: the client protocol runs over an in-memory transport whose "server" is a
function from request bytes to response bytes (`FakeServer`). Real sockets are in
tests/integration/test_gen_e2e.py.
"""

from __future__ import annotations

import asyncio
import io
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from collector import gen
from tests.fakes import FakeClock

NOW = 1_750_000_000.0  # 2025-06-15T15:06:40Z, a Sunday


def events(total: int, *, seed: int = 7, start: float = NOW - 86400, end: float = NOW,
           users: int = gen.DEFAULT_USERS) -> list[dict[str, Any]]:
    model = gen.EventModel(random.Random(seed), start, end, users=users)
    return list(model.events(total))


# --- options ----------------------------------------------------------------------------------


def test_defaults_follow_the_seed_interface() -> None:
    opts = gen.parse_options(["-u", "http://127.0.0.1:8080/api/events"], NOW)
    assert opts.total == 100
    assert opts.concurrency == 100
    assert opts.end_time == NOW
    assert opts.start_time == NOW - 86400
    assert opts.batch == 1
    assert opts.seed is None


def test_long_options_and_camel_case_times() -> None:
    opts = gen.parse_options(
        ["--uri", "http://h:9/api/events", "--total", "5", "--startTime", "1000",
         "--endTime", "2000.5", "--concurrency", "3", "--batch", "50", "--seed", "42"], NOW)
    assert (opts.total, opts.start_time, opts.end_time) == (5, 1000.0, 2000.5)
    assert (opts.concurrency, opts.batch, opts.seed) == (3, 50, 42)


def test_start_time_alone_runs_until_now() -> None:
    opts = gen.parse_options(["-u", "http://h/x", "--startTime", str(NOW - 60)], NOW)
    assert (opts.start_time, opts.end_time) == (NOW - 60, NOW)


def test_end_time_alone_covers_the_day_before_it() -> None:
    opts = gen.parse_options(["-u", "http://h/x", "--endTime", "500000"], NOW)
    assert (opts.start_time, opts.end_time) == (500000 - 86400, 500000)


@pytest.mark.parametrize("argv, message", [
    ([], "-u/--uri"),
    (["-u", "ftp://h/x"], "http://"),
    (["-u", "http:///x"], "no host"),
    (["-u", "http://h/x", "--total", "-1"], "must not be negative"),
    (["-u", "http://h/x", "--concurrency", "0"], "at least 1"),
    (["-u", "http://h/x", "--batch", "1001"], "limit of 1000"),
    (["-u", "http://h/x", "--startTime", "20", "--endTime", "10"], "after --endTime"),
    (["-u", "http://h/x", "--startTime", "yesterday"], "UNIX seconds"),
])
def test_bad_options_exit_2_with_the_reason(argv: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert gen.main(argv) == 2
    assert message in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert gen.main(["-h"]) == 0
    out = capsys.readouterr().out
    for flag in ("--uri", "--total", "--startTime", "--endTime", "--concurrency", "--batch",
                 "--seed"):
        assert flag in out


def test_target_from_uri() -> None:
    t = gen.Target.parse("http://example.org:8081/api/events?key=k")
    assert (t.host, t.port, t.path, t.tls, t.host_header) == (
        "example.org", 8081, "/api/events?key=k", False, "example.org:8081")
    assert gen.Target.parse("https://example.org").port == 443
    assert gen.Target.parse("https://example.org").path == "/"


# --- the model --------------------------------------------------------------------------------


def test_exact_total_and_the_same_events_for_the_same_seed() -> None:
    a = events(500, seed=3)
    assert len(a) == 500
    assert a == events(500, seed=3)
    assert a != events(500, seed=4)


@pytest.mark.parametrize("start, end", [(NOW - 3600, NOW), (NOW - 100.0004, NOW - 99.9996)])
def test_every_ts_within_start_and_end(start: float, end: float) -> None:
    evs = events(3000, start=start, end=end)
    assert all(start <= e["ts"] <= end for e in evs)


def test_a_zero_length_range_still_yields_events_at_that_instant() -> None:
    evs = events(10, start=NOW, end=NOW)
    assert len(evs) == 10
    assert {int(e["ts"]) for e in evs} == {int(NOW)}


def test_users_are_a_few_hundred_integers_with_a_heavy_tail() -> None:
    evs = events(20000, users=300)
    ids = Counter(e["params"]["user_id"] for e in evs)
    assert all(type(u) is int and 1 <= u <= 300 for u in ids)
    assert 200 <= len(ids) <= 300
    counts = sorted(ids.values(), reverse=True)
    # The busiest tenth of the users sends far more than its tenth of the events.
    assert sum(counts[: len(counts) // 10]) > 0.3 * len(evs)


def test_more_traffic_in_the_evening_than_at_night() -> None:
    # Ten weekdays, so every hour of the day is sampled many times.
    start = 1_749_427_200.0  # Monday 2025-06-09 00:00 UTC
    evs = events(10000, start=start, end=start + 5 * 86400)
    by_hour = Counter(int(e["ts"] // 3600) % 24 for e in evs)
    assert by_hour[20] > 4 * by_hour[3]


def test_sessions_walk_the_purchase_funnel_with_drop_offs() -> None:
    evs = events(8000)
    sessions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in evs:
        sessions[e["params"]["session_id"]].append(e)
    reached: Counter[str] = Counter()
    for s in sessions.values():
        reached.update({e["event_type"] for e in s})
        types = [e["event_type"] for e in s]
        # Order inside a session: every purchase comes after a checkout, every checkout after
        # an add_to_cart, and timestamps never go back.
        for later, earlier in (("purchase", "checkout"), ("checkout", "add_to_cart")):
            if later in types:
                assert earlier in types[: types.index(later)]
        assert [e["ts"] for e in s] == sorted(e["ts"] for e in s)
        # One session belongs to one user.
        assert len({e["params"]["user_id"] for e in s}) == 1
    assert reached["page_view"] > reached["add_to_cart"] > reached["checkout"]
    assert reached["checkout"] > reached["purchase"] > 0
    assert reached["signup"] > 0 and reached["login"] > 0


def test_params_use_every_json_type() -> None:
    seen: set[type] = set()

    def walk(v: Any) -> None:
        seen.add(type(v))
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for e in events(2000):
        walk(e["params"])
    assert {str, int, float, bool, dict, list, type(None)} <= seen


def test_events_are_valid_for_the_collector() -> None:
    from collector.schema import EventLimits, validate_batch

    evs = events(500)
    assert len(validate_batch(evs, NOW, EventLimits())) == 500


def test_request_bodies_one_object_or_arrays() -> None:
    evs = events(7)
    singles = list(gen.request_bodies(evs, 1))
    assert [n for n, _ in singles] == [1] * 7
    assert orjson.loads(singles[0][1]) == evs[0]
    batches = list(gen.request_bodies(evs, 3))
    assert [n for n, _ in batches] == [3, 3, 1]
    assert [e for _, b in batches for e in orjson.loads(b)] == evs


# --- parsing responses ------------------------------------------------------------------------

def response(status: int, body: bytes, *, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n" % (status, len(body), extra)) + body


def test_parse_content_length_response_whole_and_byte_by_byte() -> None:
    raw = response(202, b'{"accepted": 1}') + b"HTTP/1.1"
    result, used = gen.parse_response(raw)  # type: ignore[misc]
    assert (result.status, result.body, result.keep_alive) == (202, b'{"accepted": 1}', True)
    assert raw[used:] == b"HTTP/1.1"
    whole = raw[:used]
    for cut in range(len(whole)):
        assert gen.parse_response(whole[:cut]) is None


def test_parse_chunked_with_trailers_and_interim_100() -> None:
    raw = (b"HTTP/1.1 100 Continue\r\n\r\n"
           b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-T: 1\r\n\r\n")
    result, used = gen.parse_response(raw)  # type: ignore[misc]
    assert (result.status, result.body, used) == (400, b'{"a":1}', len(raw))
    for cut in range(len(raw)):
        assert gen.parse_response(raw[:cut]) is None


def test_connection_close_and_http10_end_keep_alive() -> None:
    r1, _ = gen.parse_response(response(202, b"{}", extra=b"Connection: close\r\n"))  # type: ignore[misc]
    assert not r1.keep_alive
    r2, _ = gen.parse_response(b"HTTP/1.0 202 OK\r\nContent-Length: 0\r\n\r\n")  # type: ignore[misc]
    assert not r2.keep_alive


def test_body_without_length_runs_to_eof() -> None:
    raw = b"HTTP/1.1 500 Oops\r\n\r\npartial"
    assert gen.parse_response(raw) is None
    result, used = gen.parse_response(raw, at_eof=True)  # type: ignore[misc]
    assert (result.body, result.keep_alive, used) == (b"partial", False, len(raw))


@pytest.mark.parametrize("raw", [
    b"SMTP 220 hi\r\n\r\n",
    b"HTTP/1.1 abc OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_malformed_responses_raise(raw: bytes) -> None:
    with pytest.raises(gen.ResponseError):
        gen.parse_response(raw)


# --- the client over an in-memory transport ---------------------------------------------------

Reply = Callable[[list[dict[str, Any]]], bytes | None]
"""What the fake server answers to the events of one request; None drops the connection."""


def accept_all(evs: list[dict[str, Any]]) -> bytes:
    body = orjson.dumps({"status": "accepted", "accepted": len(evs), "ids": ["1"] * len(evs)})
    return response(202, body)


class FakeTransport(asyncio.Transport):
    """Delivers each request to `reply` and the answer back to the protocol, on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, proto: gen.HttpClientProtocol,
                 reply: Reply, log: list[bytes]) -> None:
        super().__init__()
        self._loop = loop
        self._proto = proto
        self._reply = reply
        self._log = log
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        self._log.append(data)
        body = data.split(b"\r\n\r\n", 1)[1]
        doc = orjson.loads(body)
        answer = self._reply(doc if isinstance(doc, list) else [doc])
        if answer is None:
            self._loop.call_soon(self.close)
        else:
            # Split in two writes to exercise reassembly.
            self._loop.call_soon(self._proto.data_received, answer[:10])
            self._loop.call_soon(self._proto.data_received, answer[10:])

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._loop.call_soon(self._proto.connection_lost, None)

    def is_closing(self) -> bool:
        return self._closing


class FakeServer:
    def __init__(self, reply: Reply = accept_all) -> None:
        self.reply = reply
        self.requests: list[bytes] = []
        self.connections = 0

    async def connect(self) -> gen.Connection:
        loop = asyncio.get_running_loop()
        self.connections += 1
        proto = gen.HttpClientProtocol(loop)
        proto.connection_made(FakeTransport(loop, proto, self.reply, self.requests))
        return proto


class CountingBar:
    def __init__(self) -> None:
        self.n = 0

    def update(self, n: int) -> None:
        self.n += n


def send(server: FakeServer, evs: list[dict[str, Any]], *, batch: int = 1,
         concurrency: int = 4, bar: CountingBar | None = None) -> gen.Summary:
    head = gen.request_head(gen.Target.parse("http://h:1/api/events"), "wk")
    return asyncio.run(gen.send_all(gen.request_bodies(evs, batch), head, server.connect,
                                    concurrency=concurrency, clock=FakeClock(), progress=bar))


def test_all_accepted_over_keep_alive_connections() -> None:
    server = FakeServer()
    bar = CountingBar()
    summary = send(server, events(50), concurrency=4, bar=bar)
    assert (summary.sent, summary.accepted, summary.failed) == (50, 50, 0)
    assert summary.requests == 50 == len(server.requests)
    assert server.connections == 4  # reused, not one per request
    assert bar.n == 50
    assert len(summary.latencies) == 50
    first = server.requests[0]
    assert first.startswith(b"POST /api/events HTTP/1.1\r\nHost: h:1\r\n")
    assert b"X-Write-Key: wk\r\n" in first
    head, body = first.split(b"\r\n\r\n", 1)
    assert b"Content-Length: %d" % len(body) in head


def test_batches_are_counted_by_events() -> None:
    summary = send(FakeServer(), events(25), batch=10, concurrency=2)
    assert (summary.sent, summary.requests, summary.accepted) == (25, 3, 25)


def test_rejections_and_dropped_connections_are_failures() -> None:
    calls = {"n": 0}

    def flaky(evs: list[dict[str, Any]]) -> bytes | None:
        calls["n"] += 1
        if calls["n"] % 5 == 0:
            return None  # connection dropped without an answer
        if calls["n"] % 5 == 1:
            return response(400, orjson.dumps({"error": "bad_event", "message": "nope"}))
        return accept_all(evs)

    server = FakeServer(flaky)
    summary = send(server, events(20), concurrency=1)
    assert summary.sent == 20
    assert summary.failed == 8
    assert summary.accepted == 12
    assert summary.errors["HTTP 400: nope"] == 4
    assert any(reason.startswith("ConnectionError") for reason in summary.errors)
    # Drops after requests 5, 10 and 15 each needed a new connection; the one after the last
    # request did not.
    assert server.connections == 1 + 3


def test_a_202_accepting_fewer_events_counts_the_rest_as_failed() -> None:
    def partial(evs: list[dict[str, Any]]) -> bytes:
        return response(202, orjson.dumps({"accepted": len(evs) - 1}))

    summary = send(FakeServer(partial), events(10), batch=5, concurrency=1)
    assert (summary.accepted, summary.failed) == (8, 2)


def test_run_prints_the_summary_and_exits_0_only_without_failures() -> None:
    opts = gen.parse_options(["-u", "http://h/api/events", "--total", "30", "--seed", "1",
                              "--concurrency", "3", "--no-progress"], NOW)
    out = io.StringIO()
    assert gen.run(opts, clock=FakeClock(), connect=FakeServer().connect, out=out) == 0
    text = out.getvalue()
    assert "sent 30 events in 30 requests" in text
    assert "accepted 30, failed 0" in text
    assert "events/s" in text and "p50" in text and "p99" in text

    out = io.StringIO()
    refuse = FakeServer(lambda evs: response(503, b'{"message": "disk full"}'))
    assert gen.run(opts, clock=FakeClock(), connect=refuse.connect, out=out) == 1
    assert "accepted 0, failed 30" in out.getvalue()
    assert "HTTP 503: disk full" in out.getvalue()


def test_unreachable_server_fails_every_event() -> None:
    async def refused() -> gen.Connection:
        raise ConnectionRefusedError(111, "Connection refused")

    opts = gen.parse_options(["-u", "http://h/x", "--total", "7", "--no-progress"], NOW)
    out = io.StringIO()
    assert gen.run(opts, clock=FakeClock(), connect=refused, out=out) == 1
    assert "accepted 0, failed 7" in out.getvalue()


# --- summary ----------------------------------------------------------------------------------


def test_percentiles_are_nearest_rank() -> None:
    s = gen.Summary(latencies=[i / 1000 for i in range(100, 0, -1)])
    assert s.percentile(50) == 0.050
    assert s.percentile(99) == 0.099
    assert s.percentile(100) == 0.100
    assert gen.Summary().percentile(50) is None


def test_report_rates_use_elapsed_time() -> None:
    s = gen.Summary(sent=1000, accepted=1000, requests=100, elapsed=2.0,
                    latencies=[0.001] * 100)
    text = s.report()
    assert "500 events/s accepted, 50 requests/s" in text
    assert "p50 1.00 ms, p99 1.00 ms" in text


def test_a_run_that_reached_nothing_shows_no_rate() -> None:
    # An audit: with the collector down, the report said "3601 events/s".
    s = gen.Summary(sent=10, failed=10, failed_requests=10, requests=10, elapsed=0.01)
    assert "0 events/s accepted" in s.report()
