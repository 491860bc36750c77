"""HTTP/1.1 behaviour of the real collector process, over raw sockets (SPEC §3, issue 2 item 2).

Every test talks to `python -m collector serve` on a free port with exact bytes, so what is
checked is what a client on the network sees: framing, ordering, limits, timeouts, the
connection cap and backpressure. Three servers are shared by the module: one with the
defaults, one with 1 s timeouts, one capped at 5 connections.

Timeouts passed to the raw client are hang guards: they bound how long a test waits for
something that must happen, they are never the thing being measured.
"""

from __future__ import annotations

import gzip
import itertools
import re
import select
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from tests.fixtures import rawhttp
from tests.fixtures.rawhttp import (
    RawConnection,
    chunked,
    module_server,
    peak_rss_kib,
    request_bytes,
    reset_peak_rss,
    segment_events,
    worker_pids,
)
from tests.fixtures.server import ServerProcess

rawconn = rawhttp.rawconn  # the fixture, for this module

Connect = Callable[..., RawConnection]
MIB = 1024 * 1024

_marks = itertools.count()


def marker(prefix: str = "m") -> str:
    """A unique event_id, to find an event in the segments (or prove it is not there)."""
    return f"{prefix}-{time.monotonic_ns()}-{next(_marks)}"


def post_events(body: bytes, headers: dict[str, str] | None = None, **kw: Any) -> bytes:
    return request_bytes("POST", "/api/events", body,
                         {"Content-Type": "application/json", **(headers or {})}, **kw)


def event(mark: str, event_type: str = "t") -> bytes:
    return orjson.dumps({"event_type": event_type, "event_id": mark})


def stored(server: ServerProcess, *marks: str) -> dict[str, int]:
    """How many times each marker's event is in the segments."""
    counts = dict.fromkeys(marks, 0)
    for line in segment_events(server.data_dir):
        if line.get("event_id") in counts:
            counts[line["event_id"]] += 1
    return counts


def assert_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, (resp.status, resp.body)
    assert resp.header("content-type") == "application/json"
    assert resp.header("access-control-allow-origin") == "*"
    body = resp.json()
    assert body["error"] == code, body
    assert body["message"], body
    return body  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with module_server(tmp_path_factory, "http") as server:
        yield server


@pytest.fixture(scope="module")
def fsync_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with module_server(tmp_path_factory, "fsync",
                       {"COLLECTOR_SEGMENTS_DURABILITY": "fsync"}) as server:
        yield server


@pytest.fixture(scope="module", params=["os", "fsync"])
def any_srv(request: pytest.FixtureRequest) -> ServerProcess:
    """Both ingestion paths: "os" answers inside data_received, "fsync" answers from a task
    once the group commit is done, so ordering and framing are checked on both."""
    name = "srv" if request.param == "os" else "fsync_srv"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def slow_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "COLLECTOR_SERVER_HEADER_TIMEOUT": "1",
        "COLLECTOR_SERVER_KEEPALIVE_TIMEOUT": "1",
        "COLLECTOR_SERVER_BODY_TIMEOUT": "1",
    }
    with module_server(tmp_path_factory, "timeouts", env) as server:
        yield server


@pytest.fixture(scope="module")
def patient_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A short header timeout, a long keep-alive: which one applies is visible."""
    env = {"COLLECTOR_SERVER_HEADER_TIMEOUT": "1", "COLLECTOR_SERVER_KEEPALIVE_TIMEOUT": "60"}
    with module_server(tmp_path_factory, "patient", env) as server:
        yield server


@pytest.fixture(scope="module")
def trickle_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A body timeout short enough for an upload to outlast it, long enough that a loaded
    machine never stretches one pause of the test's client past it."""
    with module_server(tmp_path_factory, "trickle",
                       {"COLLECTOR_SERVER_BODY_TIMEOUT": "3"}) as server:
        yield server


@pytest.fixture(scope="module")
def capped_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with module_server(tmp_path_factory, "capped",
                       {"COLLECTOR_SERVER_MAX_CONNECTIONS": "5"}) as server:
        yield server


# --- keep-alive and pipelining ------------------------------------------------------------------


def test_keep_alive_serves_many_requests_on_one_connection(any_srv: ServerProcess,
                                                           rawconn: Connect) -> None:
    conn = rawconn(any_srv.port)
    ids: list[str] = []
    for i in range(50):
        resp = conn.exchange(post_events(event(marker(), f"ka{i}")))
        assert resp.status == 202, resp.body
        assert resp.header("connection") is None  # HTTP/1.1: open unless it says close
        assert resp.header("date") is not None
        ids.extend(resp.json()["ids"])
    assert len(set(ids)) == 50
    assert conn.exchange(request_bytes("GET", "/healthz")).status == 200


def test_pipelined_requests_are_answered_in_order(any_srv: ServerProcess, rawconn: Connect) -> None:
    # 20 requests in one write: POSTs interleaved with GETs that answer differently, so an
    # answer out of order shows up as a wrong status at that position.
    kinds = ["post", "health", "post", "missing"] * 5
    marks: list[str] = []
    data = b""
    for i, kind in enumerate(kinds):
        if kind == "post":
            marks.append(marker("pipe"))
            data += post_events(event(marks[-1]))
        elif kind == "health":
            data += request_bytes("GET", "/healthz")
        else:
            data += request_bytes("GET", f"/nope-{i}")
    conn = rawconn(any_srv.port)
    conn.send(data)
    responses = conn.read_responses(len(kinds))
    expected = {"post": 202, "health": 200, "missing": 404}
    assert [r.status for r in responses] == [expected[k] for k in kinds]
    ids = [int(r.json()["ids"][0]) for r, k in zip(responses, kinds, strict=True) if k == "post"]
    assert len(set(ids)) == len(ids) == 10
    assert ids == sorted(ids), "ids are minted in request order, so responses must follow it"
    for i, (resp, kind) in enumerate(zip(responses, kinds, strict=True)):
        if kind == "missing":  # each 404 names the path of its own request
            named = re.findall(r"/nope-\d+", resp.json()["message"])
            assert named == [f"/nope-{i}"]
    assert stored(any_srv, *marks) == dict.fromkeys(marks, 1)


def test_twenty_pipelined_posts_in_one_send_get_distinct_ids(any_srv: ServerProcess,
                                                            rawconn: Connect) -> None:
    marks = [marker("p20") for _ in range(20)]
    conn = rawconn(any_srv.port)
    conn.send(b"".join(post_events(event(m)) for m in marks))
    responses = conn.read_responses(20)
    assert [r.status for r in responses] == [202] * 20
    ids = [r.json()["ids"][0] for r in responses]
    assert len(set(ids)) == 20
    # Response i carries the id of request i's event.
    by_mark = {line["event_id"]: line["id"] for line in segment_events(any_srv.data_dir)
               if line.get("event_id") in set(marks)}
    assert [by_mark[m] for m in marks] == ids


def test_request_split_into_one_byte_writes(any_srv: ServerProcess, rawconn: Connect) -> None:
    mark = marker("split")
    conn = rawconn(any_srv.port)
    conn.send_pieces(post_events(event(mark)), 1, pause=0.001)
    resp = conn.read_response()
    assert resp.status == 202, resp.body
    assert stored(any_srv, mark) == {mark: 1}


def test_http10_without_keep_alive_closes(srv: ServerProcess, rawconn: Connect) -> None:
    conn = rawconn(srv.port)
    conn.send(request_bytes("GET", "/healthz", version="HTTP/1.0", host=None))
    resp = conn.read_response()
    assert resp.status == 200
    assert resp.closes
    assert conn.wait_closed()


def test_http10_with_keep_alive_stays_open(any_srv: ServerProcess, rawconn: Connect) -> None:
    conn = rawconn(any_srv.port)
    req = request_bytes("GET", "/healthz", headers={"Connection": "keep-alive"},
                        version="HTTP/1.0", host=None)
    for _ in range(3):
        resp = conn.exchange(req)
        assert resp.status == 200
        assert resp.header("connection") == "keep-alive"
    # and a 1.0 POST with a Content-Length body on the same connection
    mark = marker("h10")
    resp = conn.exchange(post_events(event(mark), {"Connection": "keep-alive"},
                                     version="HTTP/1.0", host=None))
    assert resp.status == 202
    assert resp.header("connection") == "keep-alive"
    assert stored(any_srv, mark) == {mark: 1}


def test_connection_close_from_an_http11_client(srv: ServerProcess, rawconn: Connect) -> None:
    conn = rawconn(srv.port)
    conn.send(request_bytes("GET", "/healthz", headers={"Connection": "close"})
              + request_bytes("GET", "/healthz"))
    resp = conn.read_response()
    assert resp.status == 200 and resp.closes
    assert conn.wait_closed(), "the request after Connection: close must not be answered"


def test_absolute_form_target_and_leading_empty_lines(srv: ServerProcess,
                                                     rawconn: Connect) -> None:
    conn = rawconn(srv.port)
    # RFC 9112 §3.2.2: a server accepts the absolute form; §2.2: it ignores at least one
    # empty line before a request (some clients send CRLF after a POST body).
    conn.send(request_bytes("GET", "http://test/healthz") + b"\r\n"
              + request_bytes("GET", "/healthz"))
    first, second = conn.read_responses(2)
    assert first.status == 200 and first.json()["status"] == "ok"
    assert second.status == 200


# --- bodies -------------------------------------------------------------------------------------


def test_chunked_request_body(any_srv: ServerProcess, rawconn: Connect) -> None:
    marks = [marker("chunk") for _ in range(5)]
    body = orjson.dumps([{"event_type": "c", "event_id": m, "params": {"i": i}}
                         for i, m in enumerate(marks)])
    conn = rawconn(any_srv.port)
    data = request_bytes("POST", "/api/events", headers={"Transfer-Encoding": "chunked"})
    data += chunked(body, 7)
    conn.send_pieces(data, 13)
    resp = conn.read_response()
    assert resp.status == 202, resp.body
    assert resp.json()["accepted"] == 5
    assert stored(any_srv, *marks) == dict.fromkeys(marks, 1)
    # The connection stays usable: the chunked framing ended exactly at the last-chunk.
    assert conn.exchange(request_bytes("GET", "/healthz")).status == 200


def test_chunked_body_with_extensions_and_trailers(srv: ServerProcess, rawconn: Connect) -> None:
    mark = marker("trailer")
    body = event(mark)
    data = request_bytes("POST", "/api/events", headers={"Transfer-Encoding": "chunked"})
    data += b"%x;name=value\r\n" % len(body) + body + b"\r\n0\r\nX-Checksum: abc\r\n\r\n"
    conn = rawconn(srv.port)
    resp = conn.exchange(data)
    assert resp.status == 202, resp.body
    assert stored(srv, mark) == {mark: 1}


def test_expect_100_continue_gets_100_before_the_body(any_srv: ServerProcess,
                                                      rawconn: Connect) -> None:
    mark = marker("expect")
    body = orjson.dumps({"event_type": "big", "event_id": mark, "params": {"pad": "x" * 2000}})
    head = request_bytes("POST", "/api/events",
                         headers={"Content-Length": str(len(body)), "Expect": "100-continue"})
    conn = rawconn(any_srv.port)
    conn.send(head)
    interim = conn.read_response()
    assert interim.status == 100
    assert interim.raw_head == b"HTTP/1.1 100 Continue"
    conn.send(body)
    final = conn.read_response()
    assert final.status == 202, final.body
    assert stored(any_srv, mark) == {mark: 1}


def test_expect_100_continue_rejected_early_gets_no_100(srv: ServerProcess,
                                                        rawconn: Connect) -> None:
    head = request_bytes("POST", "/api/events",
                         headers={"Content-Length": str(2 * MIB), "Expect": "100-continue"})
    conn = rawconn(srv.port)
    conn.send(head)
    resp = conn.read_response()
    assert_error(resp, 413, "body_too_large")
    assert resp.closes
    assert conn.wait_closed()


@pytest.mark.parametrize(("method", "path", "headers", "status", "code"), [
    ("POST", "/api/events", {"Content-Encoding": "br"}, 415, "unsupported_encoding"),
    ("POST", "/nope", {}, 404, "not_found"),
    ("PUT", "/api/events", {}, 405, "method_not_allowed"),
    ("POST", "/api/events/query", {}, 401, "unauthorized"),
    ("POST", "/api/analytics/funnel", {"Authorization": "Bearer wrong"}, 403, "forbidden"),
], ids=["encoding", "path", "method", "no-token", "wrong-token"])
def test_expect_100_continue_gets_the_final_status_the_head_decides(
        srv: ServerProcess, rawconn: Connect, method: str, path: str, headers: dict[str, str],
        status: int, code: str) -> None:
    # RFC 9110 §10.1.1: a status the head alone decides is sent at once, instead of a 100
    # that makes the client upload the body first (an audit: only 411 and 413 were).
    conn = rawconn(srv.port)
    conn.send(request_bytes(method, path, headers={
        "Content-Length": "5000", "Expect": "100-continue", **headers}))
    resp = conn.read_response()
    assert_error(resp, status, code)
    assert resp.closes and conn.wait_closed()


def test_expect_100_continue_on_a_preflight_is_still_204(srv: ServerProcess,
                                                         rawconn: Connect) -> None:
    conn = rawconn(srv.port)
    conn.send(request_bytes("OPTIONS", "/api/events", headers={
        "Content-Length": "5", "Expect": "100-continue"}))
    resp = conn.read_response()
    if resp.status == 100:
        conn.send(b"hello")
        resp = conn.read_response()
    assert resp.status == 204 and resp.header("access-control-allow-origin") == "*"


def test_every_content_encoding_line_counts(srv: ServerProcess, rawconn: Connect) -> None:
    # RFC 9110 §5.3: two field lines are one list; "gzip" then "br" is not gzip (an audit got
    # a 202 for a gzip body with a second line naming br).
    mark = marker("two-encodings")
    conn = rawconn(srv.port)
    body = gzip.compress(event(mark))
    conn.send(request_bytes("POST", "/api/events", body, [
        ("Content-Encoding", "gzip"), ("Content-Encoding", "br")]))
    assert_error(conn.read_response(), 415, "unsupported_encoding")
    assert stored(srv, mark) == {mark: 0}


@pytest.mark.parametrize("method", ["FOO", "get", "PROPFIND"])
def test_an_unknown_method_is_501(srv: ServerProcess, rawconn: Connect, method: str) -> None:
    conn = rawconn(srv.port)
    conn.send(request_bytes(method, "/healthz"))
    assert_error(conn.read_response(), 501, "not_implemented")


def test_head_of_the_pixel_records_nothing(srv: ServerProcess, rawconn: Connect) -> None:
    mark = marker("head-pixel")
    conn = rawconn(srv.port)
    conn.send(request_bytes("HEAD", f"/api/events/pixel.gif?event_type=open&event_id={mark}"))
    resp = conn.read_response(head=True)
    assert resp.status == 200 and resp.header("content-type") == "image/gif"
    conn.send(request_bytes("GET", f"/api/events/pixel.gif?event_type=open&event_id={mark}"))
    assert conn.read_response().status == 200
    assert stored(srv, mark) == {mark: 1}


@pytest.mark.parametrize("path", ["/api/stats/%ff%fe", "/api/stats/a%00b", "/api/stats/%01",
                                  "/api/stats/" + "t" * 257])
def test_a_stats_type_that_no_event_can_have_is_400(srv: ServerProcess, rawconn: Connect,
                                                   path: str) -> None:
    conn = rawconn(srv.port)
    conn.send(request_bytes("GET", path))
    assert_error(conn.read_response(), 400, "bad_event_type")


def test_expect_100_continue_with_the_body_already_sent(srv: ServerProcess,
                                                        rawconn: Connect) -> None:
    # A client that does not wait for 100 (allowed, RFC 9110 §10.1.1): the final response
    # must still come, and no 100 is needed since the body was already there.
    mark = marker("expect-eager")
    body = event(mark)
    conn = rawconn(srv.port)
    conn.send(request_bytes("POST", "/api/events", body, {"Expect": "100-continue"}))
    resp = conn.read_response()
    if resp.status == 100:  # a 100 is allowed here too; the final answer must follow
        resp = conn.read_response()
    assert resp.status == 202
    assert stored(srv, mark) == {mark: 1}


def test_identical_duplicate_content_lengths_are_one(srv: ServerProcess,
                                                    rawconn: Connect) -> None:
    # RFC 9110 §8.6: repeated identical values may be folded into one.
    mark = marker("dupcl")
    body = event(mark)
    n = str(len(body))
    resp = rawconn(srv.port).exchange(request_bytes(
        "POST", "/api/events", body, [("Content-Length", n), ("Content-Length", f"{n}, {n}")]))
    assert resp.status == 202, resp.body
    assert stored(srv, mark) == {mark: 1}


def test_transfer_coding_name_is_case_insensitive(srv: ServerProcess, rawconn: Connect) -> None:
    mark = marker("Chunked")
    data = request_bytes("POST", "/api/events", headers={"Transfer-Encoding": "Chunked"})
    resp = rawconn(srv.port).exchange(data + chunked(event(mark), 5))
    assert resp.status == 202, resp.body
    assert stored(srv, mark) == {mark: 1}


def test_get_with_a_body_keeps_the_framing(srv: ServerProcess, rawconn: Connect) -> None:
    conn = rawconn(srv.port)
    # The body of a GET is read and ignored; what follows it is the next request.
    conn.send(request_bytes("GET", "/healthz", b"GET /smuggled HTTP/1.1\r\n\r\n")
              + request_bytes("GET", "/help"))
    first, second = conn.read_responses(2)
    assert first.status == 200 and first.json()["status"] == "ok"
    assert second.status == 200 and "message" in second.json()


def test_post_without_length_is_411(srv: ServerProcess, rawconn: Connect) -> None:
    conn = rawconn(srv.port)
    resp = conn.exchange(request_bytes("POST", "/api/events"))
    assert_error(resp, 411, "length_required")


# --- HEAD, 404, 405 -----------------------------------------------------------------------------


def test_head_sends_headers_with_content_length_and_no_body(srv: ServerProcess,
                                                            rawconn: Connect) -> None:
    conn = rawconn(srv.port)
    get = conn.exchange(request_bytes("GET", "/help"))
    # HEAD and a GET pipelined behind it: if HEAD's response carried a body, those bytes
    # would be read as the next status line and fail to parse.
    conn.send(request_bytes("HEAD", "/help") + request_bytes("GET", "/healthz"))
    head = conn.read_response(head=True)
    after = conn.read_response()
    assert head.status == 200
    assert head.header("content-length") == str(len(get.body))
    assert head.header("content-type") == get.header("content-type")
    assert head.header("access-control-allow-origin") == "*"
    assert after.status == 200 and after.json()["status"] == "ok"


def test_unknown_path_is_404(srv: ServerProcess, rawconn: Connect) -> None:
    resp = rawconn(srv.port).exchange(request_bytes("GET", "/no/such/thing"))
    body = assert_error(resp, 404, "not_found")
    assert "/no/such/thing" in body["message"]


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/api/events", {"GET", "HEAD", "POST", "OPTIONS"}),
    ("POST", "/healthz", {"GET", "HEAD", "OPTIONS"}),
    ("PUT", "/help", {"GET", "HEAD", "OPTIONS"}),
])
def test_wrong_method_is_405_with_allow(srv: ServerProcess, rawconn: Connect, method: str,
                                        path: str, allowed: set[str]) -> None:
    body = b"{}" if method in ("POST", "PUT") else None
    resp = rawconn(srv.port).exchange(request_bytes(method, path, body))
    assert_error(resp, 405, "method_not_allowed")
    allow = resp.header("allow")
    assert allow is not None
    assert {m.strip() for m in allow.split(",")} == allowed


# --- smuggling defences and malformed requests --------------------------------------------------


def test_content_length_and_transfer_encoding_is_400_and_close(srv: ServerProcess,
                                                               rawconn: Connect) -> None:
    smuggled = request_bytes("GET", "/smuggled")
    body = b"0\r\n\r\n" + smuggled
    data = request_bytes("POST", "/api/events", body,
                         [("Content-Length", str(len(body))), ("Transfer-Encoding", "chunked")])
    conn = rawconn(srv.port)
    conn.send(data)
    resp = conn.read_response()
    assert_error(resp, 400, "conflicting_framing")
    assert resp.closes
    assert conn.wait_closed(), "nothing after the ambiguous request may be answered"


def test_two_different_content_lengths_is_400_and_close(srv: ServerProcess,
                                                        rawconn: Connect) -> None:
    body = b'{"event_type":"a"}'
    data = request_bytes("POST", "/api/events", body,
                         [("Content-Length", str(len(body))), ("Content-Length", "5")])
    conn = rawconn(srv.port)
    conn.send(data)
    resp = conn.read_response()
    assert_error(resp, 400, "invalid_content_length")
    assert resp.closes
    assert conn.wait_closed()


@pytest.mark.parametrize(("data", "status"), [
    (b"GET /healthz HTTP/1.1\nHost: x\n\n", 400),  # bare LF
    (b"GET /healthz HTTP/1.1\r\n\r\n", 400),  # no Host in 1.1
    (b"GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # double space
    (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", 400),
    (b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /api/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    (b"POST /api/events HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET /he\x00lthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
])
def test_malformed_requests_get_their_status_and_close(srv: ServerProcess, rawconn: Connect,
                                                       data: bytes, status: int) -> None:
    conn = rawconn(srv.port)
    conn.send(data)
    resp = conn.read_response()
    assert resp.status == status, resp.body
    assert resp.json()["message"]
    assert resp.closes
    assert conn.wait_closed()


# --- limits -------------------------------------------------------------------------------------


def test_request_line_over_the_limit_is_414(srv: ServerProcess, rawconn: Connect) -> None:
    conn = rawconn(srv.port)
    conn.send(request_bytes("GET", "/help?" + "a" * 9000))
    resp = conn.read_response()
    assert_error(resp, 414, "uri_too_long")
    assert resp.closes and conn.wait_closed()


def test_header_block_over_the_limit_is_431(srv: ServerProcess, rawconn: Connect) -> None:
    headers = [(f"X-Filler-{i}", "v" * 200) for i in range(90)]  # ~19 KiB
    conn = rawconn(srv.port)
    conn.send(request_bytes("GET", "/healthz", headers=headers))
    resp = conn.read_response()
    assert_error(resp, 431, "headers_too_large")
    assert resp.closes and conn.wait_closed()


def test_body_over_the_limit_is_413_by_content_length(srv: ServerProcess,
                                                      rawconn: Connect) -> None:
    conn = rawconn(srv.port)
    # Only the head: the server must answer from the Content-Length, without the body.
    conn.send(request_bytes("POST", "/api/events", headers={"Content-Length": str(MIB + 1)}))
    resp = conn.read_response()
    assert_error(resp, 413, "body_too_large")
    assert resp.closes and conn.wait_closed()


def test_chunk_declaring_more_than_the_limit_is_413(srv: ServerProcess,
                                                    rawconn: Connect) -> None:
    conn = rawconn(srv.port)
    # Only the chunk-size line: the server must refuse from the size, without the data.
    conn.send(request_bytes("POST", "/api/events", headers={"Transfer-Encoding": "chunked"})
              + b"%x\r\n" % (2 * MIB))
    resp = conn.read_response()
    assert_error(resp, 413, "body_too_large")
    assert resp.closes and conn.wait_closed()


def test_chunks_adding_up_to_more_than_the_limit_is_413(srv: ServerProcess,
                                                       rawconn: Connect) -> None:
    piece = b"x" * (256 * 1024)
    data = request_bytes("POST", "/api/events", headers={"Transfer-Encoding": "chunked"})
    data += (b"%x\r\n" % len(piece) + piece + b"\r\n") * 4  # exactly 1 MiB: still fine
    data += b"1\r\n"  # one byte more
    conn = rawconn(srv.port)
    conn.send(data)
    resp = conn.read_response()
    assert_error(resp, 413, "body_too_large")
    assert resp.closes and conn.wait_closed()


def gzip_bomb(mib: int) -> bytes:
    """A valid gzip stream of `mib` MiB of zeros, about 1 KiB per MiB.

    Compressing 256 MiB takes seconds; instead one MiB is compressed once and its deflate
    block repeated: after a full flush the compressor's state is reset, so every further MiB
    compresses to the same bytes. The trailer (CRC-32 and size) is computed for the whole.
    """
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(MIB)
    first = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    unit = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    end = comp.flush()[:-8]  # the final empty block, without the trailer for 2 MiB
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    return first + unit * (mib - 1) + end + struct.pack("<II", crc, (mib * MIB) & 0xFFFFFFFF)


def test_gzip_bomb_generator_is_valid_gzip() -> None:
    assert gzip.decompress(gzip_bomb(3)) == bytes(3 * MIB)


def test_gzip_bomb_is_413_without_the_server_blowing_up(srv: ServerProcess,
                                                        rawconn: Connect) -> None:
    bomb = gzip_bomb(256)
    assert len(bomb) < MIB
    (pid,) = worker_pids(srv)
    baseline = reset_peak_rss(pid)
    conn = rawconn(srv.port)
    resp = conn.exchange(post_events(bomb, {"Content-Encoding": "gzip"}))
    assert_error(resp, 413, "body_too_large")
    grown = peak_rss_kib(pid) - baseline
    assert grown < 64 * 1024, f"worker peak RSS grew by {grown} KiB decoding a gzip bomb"
    # The connection and the server are fine afterwards.
    assert conn.exchange(request_bytes("GET", "/healthz")).status == 200


def event_of_size(size: int, mark: str) -> bytes:
    """One event whose JSON is exactly `size` bytes."""
    empty = orjson.dumps({"event_type": "pad", "event_id": mark, "params": {"p": ""}})
    body = orjson.dumps({"event_type": "pad", "event_id": mark,
                         "params": {"p": "y" * (size - len(empty))}})
    assert len(body) == size
    return body


def test_body_of_exactly_the_limit_is_accepted(srv: ServerProcess, rawconn: Connect) -> None:
    mark = marker("1mib")
    resp = rawconn(srv.port).exchange(post_events(event_of_size(MIB, mark)))
    assert resp.status == 202, resp.body[:300]
    assert stored(srv, mark) == {mark: 1}


@pytest.mark.parametrize(("size", "status"), [(MIB, 202), (MIB + 1, 413)])
def test_decoded_limit_boundary(srv: ServerProcess, rawconn: Connect, size: int,
                                status: int) -> None:
    mark = marker("gzlimit")
    body = gzip.compress(event_of_size(size, mark))
    resp = rawconn(srv.port).exchange(post_events(body, {"Content-Encoding": "gzip"}))
    assert resp.status == status, resp.body[:300]
    if status == 413:
        assert_error(resp, 413, "body_too_large")
    assert stored(srv, mark) == {mark: 1 if status == 202 else 0}


def test_unsupported_content_encoding_is_415(srv: ServerProcess, rawconn: Connect) -> None:
    resp = rawconn(srv.port).exchange(post_events(b"\x00\x01", {"Content-Encoding": "br"}))
    body = assert_error(resp, 415, "unsupported_encoding")
    assert "br" in body["message"]


# --- timeouts -----------------------------------------------------------------------------------


def test_slowloris_head_gets_408_while_others_are_served(slow_srv: ServerProcess,
                                                         rawconn: Connect) -> None:
    slow = rawconn(slow_srv.port)
    slow.send(b"POST /api/events HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    guard = time.monotonic() + 8.0  # eight times the 1 s header timeout
    served = 0
    while time.monotonic() < guard:
        ready, _, _ = select.select([slow.sock], [], [], 0.25)
        if ready:
            break
        try:
            slow.send(b"a")  # a byte at a time: must not re-arm the header timer
        except OSError:
            break
        status, _, _ = slow_srv.request("GET", "/healthz", timeout=5)
        assert status == 200
        served += 1
    else:
        pytest.fail("a head trickled a byte at a time was never timed out")
    assert served >= 1, "other clients were served while the slow head was pending"
    resp = slow.read_response()
    assert_error(resp, 408, "request_timeout")
    assert resp.closes and slow.wait_closed()


def test_stalled_body_gets_408(slow_srv: ServerProcess, rawconn: Connect) -> None:
    mark = marker("stall")
    body = event(mark)
    conn = rawconn(slow_srv.port)
    conn.send(request_bytes("POST", "/api/events",
                            headers={"Content-Length": str(len(body))}) + body[:5])
    resp = conn.read_response(timeout=8.0)
    assert_error(resp, 408, "request_timeout")
    assert resp.closes and conn.wait_closed()
    assert stored(slow_srv, mark) == {mark: 0}


def test_slow_but_progressing_body_is_not_timed_out(trickle_srv: ServerProcess,
                                                    rawconn: Connect) -> None:
    # The body timer is re-armed by every piece (unlike the header timer): an upload that
    # takes longer than the timeout in total but never pauses that long is fine.
    mark = marker("trickle")
    body = orjson.dumps({"event_type": "slow", "event_id": mark, "params": {"p": "q" * 40}})
    conn = rawconn(trickle_srv.port)
    conn.send(request_bytes("POST", "/api/events", headers={"Content-Length": str(len(body))}))
    # At least 16 pieces 0.3 s apart: the last comes 4.5 s or more after the head, well past
    # the 3 s timeout plus the sweep's 0.75 s, whatever the marker makes the body's length.
    conn.send_pieces(body, len(body) // 16, pause=0.3)
    resp = conn.read_response()
    assert resp.status == 202, resp.body
    assert stored(trickle_srv, mark) == {mark: 1}


def test_idle_keep_alive_connection_is_closed(slow_srv: ServerProcess, rawconn: Connect) -> None:
    conn = rawconn(slow_srv.port)
    assert conn.exchange(request_bytes("GET", "/healthz")).status == 200
    assert conn.wait_closed(timeout=8.0), "idle connection still open long after 1 s timeout"


def test_connection_that_never_sends_is_closed(slow_srv: ServerProcess, rawconn: Connect) -> None:
    conn = rawconn(slow_srv.port)
    assert conn.wait_closed(timeout=8.0)


def test_a_header_timeout_is_timed_from_the_timeout_in_the_histogram(
        slow_srv: ServerProcess, rawconn: Connect) -> None:
    """Like a parser refusal, a 408 before a complete head has no request start of its own:
    it used to be timed from the loop's epoch (the host's uptime)."""
    def duration_sum() -> float:
        text = slow_srv.request("GET", "/metrics")[2].decode()
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("collector_request_duration_seconds_sum"))

    before = duration_sum()
    conn = rawconn(slow_srv.port)
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
    assert conn.read_response(timeout=8.0).status == 408
    assert duration_sum() - before < 5.0


def test_a_new_connection_gets_the_header_timeout_for_its_first_request(
        patient_srv: ServerProcess, rawconn: Connect) -> None:
    """Not the keep-alive timeout, which is for clients that were served: a connection that
    never sends (or sends only blank lines) would hold a connection slot for a minute."""
    silent = rawconn(patient_srv.port)
    blank = rawconn(patient_srv.port)
    blank.send(b"\r\n")
    split = rawconn(patient_srv.port)  # "\r" arms the header timer, "\n" empties the buffer
    split.send(b"\r")
    time.sleep(0.3)
    split.send(b"\n")
    served = rawconn(patient_srv.port)
    assert served.exchange(request_bytes("GET", "/healthz")).status == 200
    assert silent.wait_closed(timeout=8.0), "a silent new connection outlived the 1 s timeout"
    assert blank.wait_closed(timeout=8.0)
    assert split.wait_closed(timeout=8.0), "blank lines bought a keep-alive timeout"
    assert not served.wait_closed(timeout=0.5), "a served connection lost its keep-alive"
    assert served.exchange(request_bytes("GET", "/healthz")).status == 200


# --- connection cap -----------------------------------------------------------------------------


def test_connection_cap_answers_503_and_closes(capped_srv: ServerProcess,
                                               rawconn: Connect) -> None:
    held = [rawconn(capped_srv.port) for _ in range(5)]
    for conn in held:  # each one is registered by the server once it has answered
        assert conn.exchange(request_bytes("GET", "/healthz")).status == 200
    extra = rawconn(capped_srv.port)
    resp = extra.read_response()
    assert_error(resp, 503, "too_many_connections")
    assert resp.closes
    assert resp.header("retry-after") is not None
    assert extra.wait_closed()
    for conn in held:  # the five are still served
        assert conn.exchange(request_bytes("GET", "/healthz")).status == 200
    # Once one closes, a new client gets in (the server notices the close asynchronously).
    held.pop().close()
    guard = time.monotonic() + 5.0
    while True:
        conn = rawconn(capped_srv.port)
        conn.send(request_bytes("GET", "/healthz"))
        resp = conn.read_response()
        if resp.status == 200:
            break
        assert resp.status == 503
        assert time.monotonic() < guard, "a freed connection slot was never reused"
        time.sleep(0.05)


# --- backpressure -------------------------------------------------------------------------------


def test_client_that_never_reads_does_not_grow_server_memory(srv: ServerProcess,
                                                             rawconn: Connect) -> None:
    """Pipeline requests without reading a single response.

    The responses (bigger than the requests) have nowhere to go but the server's buffers. A
    server that stops reading once its write buffer is full stalls the client's send after
    the kernel buffers fill; one that kept reading would buffer every response.
    """
    req = request_bytes("GET", "/help", headers={"X-Pad": "p" * 200})
    budget = 24 * MIB  # what we are prepared to send; a healthy server stops us far earlier
    (pid,) = worker_pids(srv)
    baseline = reset_peak_rss(pid)
    conn = rawconn(srv.port)
    sock = conn.sock
    sock.setblocking(False)
    payload = req * 256
    sent = 0
    stalled = False
    while sent < budget:
        _, writable, _ = select.select([], [sock], [], 2.0)
        if not writable:
            stalled = True  # the server stopped reading us
            break
        try:
            sent += sock.send(payload[sent % len(payload):])
        except BlockingIOError:
            continue
    grown = peak_rss_kib(pid) - baseline
    assert stalled, f"the server read all {sent} bytes of a client that never reads"
    assert grown < 48 * 1024, f"worker peak RSS grew by {grown} KiB for one non-reading client"
    # Nothing was lost: reading now lets the server go on, in order.
    sock.setblocking(True)
    complete = sent // len(req)
    n = min(complete, 200)
    responses = conn.read_responses(n, timeout=30.0)
    assert all(r.status == 200 for r in responses)
    # And the server still serves everybody else.
    status, _, _ = srv.request("GET", "/healthz")
    assert status == 200


def test_server_survives_a_client_that_resets_mid_pipeline(srv: ServerProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(request_bytes("GET", "/help") * 500)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # RST with responses still unread
    status, _, _ = srv.request("GET", "/healthz")
    assert status == 200
