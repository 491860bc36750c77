"""Ingestion through the real collector process (SPEC §2, §3; issue 2 item 3).

POST /api/events in every body shape a client sends, validation and its messages, the
all-or-nothing batch, event_id and the clock-skew correction of sent_at, the pixel, the
rejected-bodies log, /metrics, /healthz, /help, CORS and write keys. Every accepted event is
looked up in the segment files the server wrote: a 202 alone proves nothing.

Two servers are shared by the module: one with the defaults, one with write keys.
"""

from __future__ import annotations

import gzip
import itertools
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from tests.fixtures import rawhttp
from tests.fixtures.rawhttp import (
    RawConnection,
    RawResponse,
    module_server,
    request_bytes,
    segment_events,
)
from tests.fixtures.server import ServerProcess

rawconn = rawhttp.rawconn  # the fixture, for this module
Connect = Callable[..., RawConnection]

_marks = itertools.count()


def marker(prefix: str = "m") -> str:
    return f"{prefix}-{time.monotonic_ns()}-{next(_marks)}"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with module_server(tmp_path_factory, "ingest") as server:
        yield server


@pytest.fixture(scope="module")
def keyed_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with module_server(tmp_path_factory, "keys", {"COLLECTOR_AUTH_WRITE_KEYS": "k1"}) as server:
        yield server


def post(conn: RawConnection, body: bytes | Any, headers: dict[str, str] | None = None,
         target: str = "/api/events") -> RawResponse:
    if not isinstance(body, bytes):
        body = orjson.dumps(body)
    return conn.exchange(request_bytes("POST", target, body, headers or {}))


def lines_by_id(server: ServerProcess) -> dict[str, dict[str, Any]]:
    lines: dict[str, dict[str, Any]] = {}
    for line in segment_events(server.data_dir):
        assert line["id"] not in lines, f"id {line['id']} stored twice"
        lines[line["id"]] = line
    return lines


def by_event_id(server: ServerProcess, *marks: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {m: [] for m in marks}
    for line in segment_events(server.data_dir):
        if line.get("event_id") in found:
            found[line["event_id"]].append(line)
    return found


def accepted_ids(resp: RawResponse, n: int) -> list[str]:
    assert resp.status == 202, resp.body
    body = resp.json()
    assert body["status"] == "accepted"
    assert body["accepted"] == n
    ids = body["ids"]
    assert len(ids) == n and all(type(i) is str and i.isdigit() for i in ids), ids
    return ids  # type: ignore[no-any-return]


def rejected_lines(server: ServerProcess) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    directory = server.data_dir / "rejected"
    for path in sorted(directory.glob("*.ndjson")):
        out.extend(orjson.loads(line) for line in path.read_bytes().splitlines())
    return out


# --- body shapes --------------------------------------------------------------------------------


def test_single_event_is_stored_with_id_and_received_at(srv: ServerProcess,
                                                        rawconn: Connect) -> None:
    sent = {"event_type": "signup", "ts": 1456606932, "params": {"user_id": 42, "plan": "pro"}}
    before = time.time()
    resp = post(rawconn(srv.port), sent)
    after = time.time()
    (sid,) = accepted_ids(resp, 1)
    line = lines_by_id(srv)[sid]
    assert list(line)[:5] == ["id", "event_type", "ts", "params", "received_at"]
    assert line["event_type"] == "signup"
    assert line["ts"] == 1456606932
    assert line["params"] == {"user_id": 42, "plan": "pro"}
    # Server and test share the host clock; received_at is rounded to milliseconds.
    assert before - 0.001 <= line["received_at"] <= after + 0.001


def test_event_without_ts_gets_the_receive_time(srv: ServerProcess, rawconn: Connect) -> None:
    (sid,) = accepted_ids(post(rawconn(srv.port), {"event_type": "no-ts"}), 1)
    line = lines_by_id(srv)[sid]
    assert line["ts"] == line["received_at"]
    assert line["params"] == {}


def test_array_batch_keeps_order_and_ids(srv: ServerProcess, rawconn: Connect) -> None:
    types = ["b0", "  padded  ", "émoji 🎉", "a/b:c{d}", "b4"]
    events = [{"event_type": t, "params": {"i": i}} for i, t in enumerate(types)]
    ids = accepted_ids(post(rawconn(srv.port), events), 5)
    assert [int(i) for i in ids] == sorted(int(i) for i in ids)
    assert len(set(ids)) == 5
    lines = lines_by_id(srv)
    assert [lines[i]["event_type"] for i in ids] == [t.strip() for t in types]
    assert [lines[i]["params"] for i in ids] == [{"i": i} for i in range(5)]


def test_ndjson_body(srv: ServerProcess, rawconn: Connect) -> None:
    marks = [marker("nd") for _ in range(3)]
    body = b"\n".join(orjson.dumps({"event_type": "nd", "event_id": m}) for m in marks)
    body = body.replace(b"\n", b"\n\n", 1) + b"\n"  # a blank line and a trailing newline
    accepted_ids(post(rawconn(srv.port), body, {"Content-Type": "application/x-ndjson"}), 3)
    assert {m: len(v) for m, v in by_event_id(srv, *marks).items()} == dict.fromkeys(marks, 1)


def test_ndjson_body_of_a_dozen_compact_lines(srv: ServerProcess, rawconn: Connect) -> None:
    """The layout most NDJSON writers use (one compact object per line, as rawbatch's short
    way takes it): every event stored once, with its own ts and params."""
    marks = [marker("ndc") for _ in range(12)]
    now = int(time.time())
    body = b"\n".join(orjson.dumps({"event_type": "ndc", "ts": now - i, "params": {"i": i},
                                    "event_id": m}) for i, m in enumerate(marks)) + b"\n"
    ids = accepted_ids(post(rawconn(srv.port), body, {"Content-Type": "application/x-ndjson"}),
                       12)
    stored = by_event_id(srv, *marks)
    assert {m: len(v) for m, v in stored.items()} == dict.fromkeys(marks, 1)
    assert [(stored[m][0]["id"], stored[m][0]["ts"], stored[m][0]["params"])
            for m in marks] == [(ids[i], now - i, {"i": i}) for i in range(12)]


def test_gzip_body(srv: ServerProcess, rawconn: Connect) -> None:
    marks = [marker("gz") for _ in range(4)]
    body = gzip.compress(orjson.dumps([{"event_type": "gz", "event_id": m} for m in marks]))
    accepted_ids(post(rawconn(srv.port), body, {"Content-Encoding": "gzip"}), 4)
    assert {m: len(v) for m, v in by_event_id(srv, *marks).items()} == dict.fromkeys(marks, 1)


def test_gzip_body_of_several_members_stores_every_event(srv: ServerProcess,
                                                         rawconn: Connect) -> None:
    """`gzip -c a >> f; gzip -c b >> f` makes one body of two gzip members (RFC 1952)."""
    marks = [marker("gzm") for _ in range(2)]
    body = b"".join(gzip.compress(orjson.dumps({"event_type": "gzm", "event_id": m}) + b"\n")
                    for m in marks)
    accepted_ids(post(rawconn(srv.port), body, {"Content-Encoding": "gzip"}), 2)
    assert {m: len(v) for m, v in by_event_id(srv, *marks).items()} == dict.fromkeys(marks, 1)


@pytest.mark.parametrize("encoding, body, status, code", [
    ("gzip", gzip.compress(b'{"event_type":"gzt"}') + b"garbage", 400, "bad_gzip"),
    ("gzip", b'{"event_type":"plain"}', 400, "bad_gzip"),
    ("br", b'{"event_type":"br"}', 415, "unsupported_encoding"),
], ids=["garbage-after-member", "not-gzip", "brotli"])
def test_undecodable_bodies_are_refused_and_recorded(srv: ServerProcess, rawconn: Connect,
                                                     encoding: str, body: bytes, status: int,
                                                     code: str) -> None:
    resp = post(rawconn(srv.port), body, {"Content-Encoding": encoding})
    assert (resp.status, resp.json()["error"]) == (status, code)
    assert any(r["reason"] == f"{code}: {resp.json()['message']}" and r["size"] == len(body)
               for r in rejected_lines(srv)), "the refused body is not in data/rejected/"
    assert not {"gzt", "plain", "br"} & {e["event_type"] for e in lines_by_id(srv).values()}


@pytest.mark.parametrize("content_type", [
    "text/plain;charset=UTF-8",  # navigator.sendBeacon with a string
    "application/x-www-form-urlencoded",  # a form post or a careless client
    None,
])
def test_content_type_is_not_trusted(srv: ServerProcess, rawconn: Connect,
                                     content_type: str | None) -> None:
    mark = marker("ct")
    headers = {"Content-Type": content_type} if content_type else {}
    accepted_ids(post(rawconn(srv.port), {"event_type": "beacon", "event_id": mark}, headers), 1)
    assert len(by_event_id(srv, mark)[mark]) == 1


# --- validation ---------------------------------------------------------------------------------


def test_batch_is_all_or_nothing_with_indexes(srv: ServerProcess, rawconn: Connect) -> None:
    marks = [marker("aon") for _ in range(5)]
    events: list[dict[str, Any]] = [{"event_type": "ok", "event_id": m} for m in marks]
    del events[1]["event_type"]
    events[3]["colour"] = "red"
    resp = post(rawconn(srv.port), events)
    assert resp.status == 400
    body = resp.json()
    assert body["error"]
    assert "2 of 5" in body["message"]
    assert [e["index"] for e in body["errors"]] == [1, 3]
    assert "event_type is required" in body["errors"][0]["reason"]
    assert "'colour'" in body["errors"][1]["reason"]
    assert by_event_id(srv, *marks) == {m: [] for m in marks}, "a rejected batch stored events"


def test_batch_reports_at_most_100_errors(srv: ServerProcess, rawconn: Connect) -> None:
    resp = post(rawconn(srv.port), [{"ts": 1}] * 150)
    assert resp.status == 400
    body = resp.json()
    assert len(body["errors"]) == 100
    assert [e["index"] for e in body["errors"]] == list(range(100))
    assert "150 of 150" in body["message"]


def test_thousand_events_pass_and_1001_is_413(srv: ServerProcess, rawconn: Connect) -> None:
    conn = rawconn(srv.port)
    ids = accepted_ids(post(conn, [{"event_type": "bulk"}] * 1000), 1000)
    assert len(set(ids)) == 1000
    stored = lines_by_id(srv)
    assert all(i in stored for i in ids)
    mark = marker("1001")
    resp = post(conn, [{"event_type": "bulk", "event_id": f"{mark}-{i}"} for i in range(1001)])
    assert resp.status == 413
    body = resp.json()
    assert body["error"] and "1000" in body["message"]
    assert not any(str(line.get("event_id", "")).startswith(mark)
                   for line in segment_events(srv.data_dir))


def _deep(depth: int) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for _ in range(depth - 1):
        params = {"n": params}
    return params


NOW = time.time()


@pytest.mark.parametrize(("body", "fragment"), [
    (b"{}", "event_type is required"),
    (b'{"event_type": ""}', "event_type is empty"),
    (b'{"event_type": "   "}', "event_type is empty"),
    (orjson.dumps({"event_type": "x" * 257}), "the limit is 256"),
    (b'{"event_type": "a\\u0001b"}', "control character U+0001"),
    (b'{"event_type": 5}', "event_type must be a string"),
    (b'{"event_type": "a", "ts": 1456606932000}', "looks like milliseconds"),
    (b'{"event_type": "a", "ts": -1}', "must be >= 0"),
    (orjson.dumps({"event_type": "a", "ts": NOW + 3 * 86400}), "ahead of the server clock"),
    (b'{"event_type": "a", "ts": "soon"}', "is not a number"),
    (b'{"event_type": "a", "ts": true}', "must be a number"),
    (b'{"event_type": "a", "params": [1]}', "params must be a JSON object"),
    (orjson.dumps({"event_type": "a", "params": _deep(40)}), "nested more than 32 levels"),
    (b'{"event_type": "a", "user": 1}', "unknown field 'user'"),
    (orjson.dumps({"event_type": "a", "event_id": "e" * 65}), "the limit is 64"),
    (b'{"event_type": "a",', "not valid JSON"),
    (b"", "empty body"),
    (b"[]", "empty array"),
    (b"42", "not an event"),
    (b'{"event_type": "a"}\n[1]\n', "line 2"),
])
def test_invalid_event_messages(srv: ServerProcess, rawconn: Connect, body: bytes,
                                fragment: str) -> None:
    resp = post(rawconn(srv.port), body)
    assert resp.status == 400, resp.body
    err = resp.json()
    assert re.fullmatch(r"[a-z_]+", err["error"]), err
    assert fragment in err["message"], err


def test_string_ts_of_digits_is_accepted(srv: ServerProcess, rawconn: Connect) -> None:
    (sid,) = accepted_ids(post(rawconn(srv.port), {"event_type": "s", "ts": "1456606932.5"}), 1)
    assert lines_by_id(srv)[sid]["ts"] == 1456606932.5


def test_event_id_and_sent_at_correct_the_clock_skew(srv: ServerProcess,
                                                     rawconn: Connect) -> None:
    # The client's clock runs 100 s behind; the event happened 10 s before it was sent.
    mark = marker("skew")
    client_now = time.time() - 100
    sent = {"event_type": "skewed", "event_id": mark, "ts": round(client_now - 10, 3),
            "sent_at": round(client_now, 3)}
    (sid,) = accepted_ids(post(rawconn(srv.port), sent), 1)
    line = lines_by_id(srv)[sid]
    assert line["event_id"] == mark
    assert line["sent_at"] == sent["sent_at"]
    assert line["client_ts"] == sent["ts"]
    skew = line["received_at"] - line["sent_at"]
    assert line["ts"] == pytest.approx(line["client_ts"] + skew, abs=0.0015)
    assert line["ts"] == pytest.approx(line["received_at"] - 10, abs=0.0015)


# --- pixel --------------------------------------------------------------------------------------


def test_pixel_answers_a_gif_and_stores_the_event(srv: ServerProcess, rawconn: Connect) -> None:
    mark = marker("px")
    params = quote(orjson.dumps({"campaign": "c1", "user_id": 7}).decode())
    target = (f"/api/events/pixel.gif?event_type=email_open&params={params}"
              f"&event_id={mark}&_=1712345678")
    resp = rawconn(srv.port).exchange(request_bytes("GET", target))
    assert resp.status == 200
    assert resp.header("content-type") == "image/gif"
    assert "no-store" in (resp.header("cache-control") or "")
    assert resp.body[:6] == b"GIF89a"
    assert resp.body[6:10] == b"\x01\x00\x01\x00"  # 1 x 1
    assert resp.body.endswith(b";")
    (line,) = by_event_id(srv, mark)[mark]
    assert line["event_type"] == "email_open"
    assert line["params"] == {"campaign": "c1", "user_id": 7}


@pytest.mark.parametrize("query, words", [
    ("event_type=open&params=%7Bnot-json", "params is not valid JSON"),
    # Not UTF-8 once percent-decoded: a POST body with these bytes is refused, and they must
    # not be stored as U+FFFD either.
    ("event_type=%ff%fe", "not UTF-8"),
    ("event_type=%ZZ%E9", "not UTF-8"),
    ("event_type=ok%C3", "not UTF-8"),
], ids=["bad-params", "invalid-utf8", "bad-escape-then-latin1", "cut-utf8"])
def test_pixel_with_bad_params_is_rejected_and_recorded(srv: ServerProcess, rawconn: Connect,
                                                        query: str, words: str) -> None:
    mark = marker("pxbad")
    target = f"/api/events/pixel.gif?{query}&event_id={mark}"
    resp = rawconn(srv.port).exchange(request_bytes("GET", target))
    assert resp.status == 400
    assert words in resp.json()["message"]
    assert by_event_id(srv, mark) == {mark: []}
    assert any(mark in line.get("body", "") for line in rejected_lines(srv))


# --- rejected bodies ----------------------------------------------------------------------------


def test_rejected_body_is_kept_with_its_reason(srv: ServerProcess, rawconn: Connect) -> None:
    mark = marker("rej")
    body = orjson.dumps({"event_type": "x", "secret_field": mark})
    resp = post(rawconn(srv.port), body)
    assert resp.status == 400
    err = resp.json()
    (line,) = [r for r in rejected_lines(srv) if r.get("body") == body.decode()]
    # The reason tells the operator what the client was told: its error code and message.
    assert err["error"] in line["reason"]
    assert err["message"] in line["reason"]
    assert line["path"] == "/api/events"
    assert line["size"] == len(body) and line["truncated"] is False
    assert line["remote"].startswith("127.0.0.1")


def test_rejected_batch_keeps_the_per_event_errors(srv: ServerProcess, rawconn: Connect) -> None:
    mark = marker("rejb")
    body = orjson.dumps([{"event_type": "ok", "event_id": mark}, {"event_type": 1}])
    resp = post(rawconn(srv.port), gzip.compress(body), {"Content-Encoding": "gzip"})
    assert resp.status == 400
    # The decoded body is what an operator can read and replay.
    (line,) = [r for r in rejected_lines(srv) if mark in r.get("body", "")]
    assert line["body"] == body.decode()
    assert line["errors"] == resp.json()["errors"]


def test_large_rejected_body_is_truncated_to_64_kib(srv: ServerProcess, rawconn: Connect) -> None:
    mark = marker("rejbig")
    body = orjson.dumps({"event_type": "x", "event_id": mark, "bogus": "z" * 100_000})
    assert post(rawconn(srv.port), body).status == 400
    (line,) = [r for r in rejected_lines(srv) if mark in r.get("body", "")]
    assert line["truncated"] is True
    assert line["size"] == len(body)
    assert line["body"].encode() == body[:64 * 1024]


# --- metrics, healthz, help ---------------------------------------------------------------------


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def scrape(server: ServerProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, headers, data = server.request("GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in data.decode().splitlines():
        if not line or line.startswith("#"):
            assert re.match(r"^(# (HELP|TYPE) \S+ .+)?$", line), line
            continue
        m = _SAMPLE.match(line)
        assert m, f"not Prometheus text: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
           **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_counters_move(srv: ServerProcess, rawconn: Connect) -> None:
    before = scrape(srv)
    conn = rawconn(srv.port)
    accepted_ids(post(conn, [{"event_type": "m"}] * 3), 3)
    assert post(conn, {"event_type": ""}).status == 400
    after = scrape(srv)
    assert metric(after, "collector_events_accepted_total") - \
        metric(before, "collector_events_accepted_total") == 3
    ok = {"route": "/api/events", "status": "202"}
    assert metric(after, "collector_requests_total", **ok) - \
        metric(before, "collector_requests_total", **ok) == 1
    bad = {"route": "/api/events", "status": "400"}
    assert metric(after, "collector_requests_total", **bad) - \
        metric(before, "collector_requests_total", **bad) == 1
    rejected_before = sum(v for (n, _), v in before.items()
                          if n == "collector_events_rejected_total")
    rejected_after = sum(v for (n, _), v in after.items()
                         if n == "collector_events_rejected_total")
    assert rejected_after - rejected_before == 1
    # A refused batch counts its events (all of them: all or nothing), not 1 per request.
    assert post(conn, [{"event_type": "ok"}] * 4 + [{"event_type": ""}]).status == 400
    requests = sum(v for (n, _), v in scrape(srv).items()
                   if n == "collector_requests_rejected_total")
    later = sum(v for (n, _), v in scrape(srv).items() if n == "collector_events_rejected_total")
    assert later - rejected_after == 5
    assert requests - sum(v for (n, _), v in before.items()
                          if n == "collector_requests_rejected_total") == 2
    assert metric(after, "collector_segment_bytes_total") > \
        metric(before, "collector_segment_bytes_total")
    count = "collector_request_duration_seconds_count"
    assert metric(after, count) > metric(before, count)


@pytest.mark.parametrize("raw", [
    b"HELLO\r\n\r\n",
    b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
], ids=["garbage", "cl-and-te", "long-target"])
def test_requests_refused_by_the_parser_take_no_time_in_the_histogram(
        srv: ServerProcess, rawconn: Connect, raw: bytes) -> None:
    """They used to be timed from the loop's epoch (the host's uptime: hours per request)."""
    conn = rawconn(srv.port)
    accepted_ids(post(conn, {"event_type": "before"}), 1)  # a request earlier on the connection
    before = scrape(srv)
    assert conn.exchange(raw).status in (400, 414)
    conn = rawconn(srv.port)  # and a new connection whose first bytes are refused
    assert conn.exchange(raw).status in (400, 414)
    after = scrape(srv)
    name = "collector_request_duration_seconds"
    # The two refused requests, and the first scrape (counted once its answer was written).
    assert metric(after, name + "_count") - metric(before, name + "_count") == 3
    assert metric(after, name + "_sum") - metric(before, name + "_sum") < 5.0


def test_metrics_exposes_type_lines(srv: ServerProcess) -> None:
    _, _, data = srv.request("GET", "/metrics")
    text = data.decode()
    assert "# TYPE collector_requests_total counter" in text
    assert "# TYPE collector_request_duration_seconds histogram" in text
    assert 'collector_request_duration_seconds_bucket{le="+Inf"}' in text


def test_healthz(srv: ServerProcess) -> None:
    status, headers, data = srv.request("GET", "/healthz")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert orjson.loads(data)["status"] == "ok"


def test_help_is_the_seed_document(srv: ServerProcess) -> None:
    status, _, data = srv.request("GET", "/help")
    assert status == 200
    doc = orjson.loads(data)
    assert doc["message"] == "Move along nothing to see here."
    assert "/help" in doc["routes"]
    assert set(doc["routes"]["/api"]) >= {"/events", "/stats"}


# --- CORS ---------------------------------------------------------------------------------------


CORS_REQUESTS = {
    "get": request_bytes("GET", "/help"),
    "head": request_bytes("HEAD", "/healthz"),
    "post-202": request_bytes("POST", "/api/events", b'{"event_type": "cors"}'),
    "post-400": request_bytes("POST", "/api/events", b"{}"),
    "404": request_bytes("GET", "/nowhere"),
    "405": request_bytes("DELETE", "/help"),
    "411": request_bytes("POST", "/api/events"),
    "413": request_bytes("POST", "/api/events", headers={"Content-Length": str(2 << 20)}),
    "414": request_bytes("GET", "/" + "a" * 9000),
    "415": request_bytes("POST", "/api/events", b"x", {"Content-Encoding": "zstd"}),
    "400-protocol": b"GET / HTTP/1.1\r\n\r\n",
    "pixel": request_bytes("GET", "/api/events/pixel.gif?event_type=cors"),
    "metrics": request_bytes("GET", "/metrics"),
    "options": request_bytes("OPTIONS", "/api/events"),
}


@pytest.mark.parametrize("name", list(CORS_REQUESTS))
def test_every_response_allows_any_origin(srv: ServerProcess, rawconn: Connect,
                                          name: str) -> None:
    resp = rawconn(srv.port).exchange(CORS_REQUESTS[name], head=name == "head")
    assert resp.header("access-control-allow-origin") == "*", (resp.status, resp.raw_head)


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


@pytest.mark.parametrize("target", ["/api/events", "*", "/any/path/at/all"])
def test_options_preflight(srv: ServerProcess, rawconn: Connect, target: str) -> None:
    conn = rawconn(srv.port)
    preflight = request_bytes("OPTIONS", target, headers={
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, content-encoding",
    })
    # A GET pipelined behind it proves the 204 carried no body.
    conn.send(preflight + request_bytes("GET", "/healthz"))
    resp = conn.read_response()
    assert resp.status == 204
    assert resp.body == b""
    assert resp.header("access-control-allow-origin") == "*"
    assert _tokens(resp.header("access-control-allow-methods")) >= {"get", "post", "options"}
    assert _tokens(resp.header("access-control-allow-headers")) >= {
        "content-type", "authorization", "content-encoding"}
    assert resp.header("access-control-max-age") == "86400"
    assert conn.read_response().status == 200


# --- write keys ---------------------------------------------------------------------------------


def test_write_key_required_when_configured(keyed_srv: ServerProcess, rawconn: Connect) -> None:
    conn = rawconn(keyed_srv.port)
    missing, wrong, header_key, query_key = (marker("wk") for _ in range(4))
    resp = post(conn, {"event_type": "k", "event_id": missing})
    assert resp.status == 401
    assert "X-Write-Key" in resp.json()["message"]
    resp = post(conn, {"event_type": "k", "event_id": wrong}, {"X-Write-Key": "nope"})
    assert resp.status == 403
    accepted_ids(post(conn, {"event_type": "k", "event_id": header_key}, {"X-Write-Key": "k1"}), 1)
    accepted_ids(post(conn, {"event_type": "k", "event_id": query_key},
                      target="/api/events?key=k1"), 1)
    found = by_event_id(keyed_srv, missing, wrong, header_key, query_key)
    assert {m: len(v) for m, v in found.items()} == {missing: 0, wrong: 0, header_key: 1,
                                                      query_key: 1}


def test_pixel_needs_the_write_key_too(keyed_srv: ServerProcess, rawconn: Connect) -> None:
    conn = rawconn(keyed_srv.port)
    denied, allowed = marker("pxk"), marker("pxk")
    resp = conn.exchange(request_bytes(
        "GET", f"/api/events/pixel.gif?event_type=open&event_id={denied}"))
    assert resp.status == 401
    resp = conn.exchange(request_bytes(
        "GET", f"/api/events/pixel.gif?event_type=open&event_id={allowed}&key=k1"))
    assert resp.status == 200 and resp.body[:6] == b"GIF89a"
    found = by_event_id(keyed_srv, denied, allowed)
    assert {m: len(v) for m, v in found.items()} == {denied: 0, allowed: 1}


def test_health_and_help_stay_open_with_write_keys(keyed_srv: ServerProcess) -> None:
    assert keyed_srv.request("GET", "/healthz")[0] == 200
    assert keyed_srv.request("GET", "/help")[0] == 200


def test_rejected_dir_lives_in_the_data_dir(srv: ServerProcess, rawconn: Connect) -> None:
    assert post(rawconn(srv.port), b"{").status == 400
    directory: Path = srv.data_dir / "rejected"
    names = [p.name for p in directory.iterdir()]
    assert names and all(re.fullmatch(r"rejected-\d+\.ndjson", n) for n in names), names
