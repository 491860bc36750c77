"""The sans-IO request parser, fed bytes only.

Every reader is exercised three ways: the whole input in one feed, one byte per feed, and
with trailing bytes (a second, pipelined request that must only be parsed after
start_next_cycle()). Results are compared modulo how the body is split into Body events.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.errors import ProtocolError
from collector.http.events import (
    NEED_DATA,
    PAUSED,
    Body,
    ConnectionClosed,
    EndOfMessage,
    RequestHead,
)
from collector.http.message import Request
from collector.http.parser import DEFAULT_LIMITS, ParserLimits, RequestParser, parse_head

# --- helpers -----------------------------------------------------------------------------------

Outcome = list[object]
"""Events in order, Body data merged, and ("error", status, code) if parsing failed."""


def request(
    method: str = "GET",
    target: str = "/",
    version: str = "1.1",
    headers: Sequence[tuple[str, str]] = (("Host", "example.com"),),
    body: bytes = b"",
) -> bytes:
    head = f"{method} {target} HTTP/{version}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers)
    return head.encode("latin-1") + b"\r\n" + body


def post(body: bytes, *extra: tuple[str, str]) -> bytes:
    headers = [("Host", "example.com"), ("Content-Length", str(len(body))), *extra]
    return request("POST", "/api/events", headers=headers, body=body)


def chunked(*chunks: bytes, trailers: bytes = b"", ext: bytes = b"") -> bytes:
    wire = b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks if c)
    return wire + b"0" + ext + b"\r\n" + trailers + b"\r\n"


def chunked_post(body_wire: bytes) -> bytes:
    headers = [("Host", "example.com"), ("Transfer-Encoding", "chunked")]
    return request("POST", "/api/events", headers=headers, body=body_wire)


def merged(events: Iterable[object]) -> Outcome:
    """Join consecutive Body events: how the body is split is not part of the contract."""
    out: Outcome = []
    for event in events:
        if isinstance(event, Body) and out and isinstance(out[-1], Body):
            out[-1] = Body(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def drive(
    pieces: Iterable[bytes],
    *,
    limits: ParserLimits = DEFAULT_LIMITS,
    eof: bool = False,
    cycle: bool = True,
) -> Outcome:
    """Feed `pieces` in order, draining events after each; optionally EOF at the end.

    With `cycle`, PAUSED after a keep-alive request is answered by start_next_cycle(), as the
    server does once its response is written; otherwise parsing stops at the first PAUSED.
    """
    parser = RequestParser(limits)
    out: list[object] = []
    keep = True
    feeds = [*pieces, b""] if eof else list(pieces)
    try:
        for piece in feeds:
            parser.feed(piece)
            while True:
                event = parser.next_event()
                if event is NEED_DATA:
                    break
                if event is PAUSED:
                    if not (cycle and keep):
                        return merged(out)
                    parser.start_next_cycle()
                    continue
                out.append(event)
                if isinstance(event, RequestHead):
                    keep = event.keep_alive
                if isinstance(event, ConnectionClosed):
                    return merged(out)
    except ProtocolError as exc:
        out.append(("error", exc.status_hint, exc.code))
    return merged(out)


def whole(data: bytes, **kw: object) -> Outcome:
    return drive([data], **kw)  # type: ignore[arg-type]


def bytewise(data: bytes, **kw: object) -> Outcome:
    return drive([data[i : i + 1] for i in range(len(data))], **kw)  # type: ignore[arg-type]


def error_of(outcome: Outcome) -> tuple[int, str] | None:
    last = outcome[-1] if outcome else None
    if isinstance(last, tuple) and last[0] == "error":
        return last[1], last[2]
    return None


def heads(outcome: Outcome) -> list[RequestHead]:
    return [e for e in outcome if isinstance(e, RequestHead)]


def head_of(data: bytes, limits: ParserLimits = DEFAULT_LIMITS) -> RequestHead:
    parser = RequestParser(limits)
    parser.feed(data)
    event = parser.next_event()
    assert isinstance(event, RequestHead), event
    return event


def assert_all_ways(data: bytes, expected: Outcome, **kw: object) -> None:
    """Whole, byte by byte, and followed by a pipelined request: same events."""
    assert whole(data, **kw) == expected
    assert bytewise(data, **kw) == expected
    follow = request("GET", "/next")
    got = whole(data + follow, **kw)
    if expected and isinstance(expected[-1], EndOfMessage) and heads(expected)[-1].keep_alive:
        assert got[: len(expected)] == expected
        assert [h.target for h in heads(got[len(expected) :])] == ["/next"]
        assert got[-1] == EndOfMessage()
    else:
        assert got[: len(expected)] == expected


def expect_error(data: bytes, status: int, code: str, **kw: object) -> None:
    """The error, the same whether the input arrives whole or byte by byte, with EOF or not."""
    for outcome in (whole(data, **kw), bytewise(data, **kw), whole(data, eof=True, **kw)):
        assert error_of(outcome) == (status, code), outcome


def make_head(**overrides: object) -> RequestHead:
    fields: dict[str, object] = {
        "method": "GET",
        "target": "/",
        "version": "1.1",
        "headers": ((b"host", b"example.com"),),
        "keep_alive": True,
        "expect_continue": False,
        "content_length": None,
        "chunked": False,
    }
    fields.update(overrides)
    if "fields" not in fields:  # (each name's first value, as the parser gives them)
        fields["fields"] = dict(reversed(fields["headers"]))  # type: ignore[call-overload]
    return RequestHead(**fields)  # type: ignore[arg-type]


END = EndOfMessage()

# --- valid requests ----------------------------------------------------------------------------

VALID = {
    "get": (request(), [make_head(), END]),
    "head": (request("HEAD", "/x"), [make_head(method="HEAD", target="/x"), END]),
    "options-star": (request("OPTIONS", "*"), [make_head(method="OPTIONS", target="*"), END]),
    "options-path": (
        request("OPTIONS", "/api/events"),
        [make_head(method="OPTIONS", target="/api/events"), END],
    ),
    "query": (request("GET", "/api/events?page=2&limit=5"),
              [make_head(target="/api/events?page=2&limit=5"), END]),
    "unknown-method": (request("PURGE", "/c"), [make_head(method="PURGE", target="/c"), END]),
    "post": (
        post(b'{"event_type":"x"}'),
        [
            make_head(
                method="POST",
                target="/api/events",
                headers=((b"host", b"example.com"), (b"content-length", b"18")),
                content_length=18,
            ),
            Body(b'{"event_type":"x"}'),
            END,
        ],
    ),
    "post-empty-body": (
        post(b""),
        [
            make_head(
                method="POST",
                target="/api/events",
                headers=((b"host", b"example.com"), (b"content-length", b"0")),
                content_length=0,
            ),
            END,
        ],
    ),
    "post-no-length": (
        request("POST", "/api/events"),
        [make_head(method="POST", target="/api/events"), END],
    ),
    "absolute-form": (
        request("GET", "http://example.com/a/b?c=d"),
        [make_head(target="/a/b?c=d"), END],
    ),
    "absolute-form-no-path": (
        request("GET", "HTTPS://example.com:8443?q=1"),
        [make_head(target="/?q=1"), END],
    ),
    "absolute-form-bare": (request("GET", "http://example.com"), [make_head(target="/"), END]),
    "leading-empty-lines": (b"\r\n\r\n" + request(), [make_head(), END]),
    "http10-no-host": (
        request(version="1.0", headers=()),
        [make_head(version="1.0", headers=(), keep_alive=False), END],
    ),
    "http10-with-host": (
        request(version="1.0"),
        [make_head(version="1.0", keep_alive=False), END],
    ),
    "http11-empty-host": (
        request(headers=[("Host", "")]),
        [make_head(headers=((b"host", b""),)), END],
    ),
}


@pytest.mark.parametrize("name", list(VALID))
def test_valid_request(name: str) -> None:
    data, expected = VALID[name]
    assert_all_ways(data, expected)


def test_headers_lowercased_stripped_in_order_with_duplicates() -> None:
    data = (
        b"GET / HTTP/1.1\r\n"
        b"HOST:   example.com  \r\n"
        b"X-Tab:\tvalue with  inner  spaces\t\r\n"
        b"Accept: a\r\n"
        b"accept: b\r\n"
        b"X-Empty:\r\n"
        b"X-Obs-Text: caf\xe9\r\n"
        b"X-Colon: a:b::c\r\n"
        b"\r\n"
    )
    head = head_of(data)
    assert head.headers == (
        (b"host", b"example.com"),
        (b"x-tab", b"value with  inner  spaces"),
        (b"accept", b"a"),
        (b"accept", b"b"),
        (b"x-empty", b""),
        (b"x-obs-text", b"caf\xe9"),
        (b"x-colon", b"a:b::c"),
    )
    assert bytewise(data) == [head, END]


@pytest.mark.parametrize(
    ("headers", "content_length"),
    [
        ([("Content-Length", "5, 5")], 5),
        ([("Content-Length", "5"), ("Content-Length", "5")], 5),
        ([("content-length", "5")], 5),
    ],
)
def test_identical_content_lengths_are_folded(
    headers: list[tuple[str, str]], content_length: int
) -> None:
    data = request("POST", "/", headers=[("Host", "h"), *headers], body=b"hello")
    outcome = whole(data)
    assert heads(outcome)[0].content_length == content_length
    assert outcome[1:] == [Body(b"hello"), END]


def test_transfer_encoding_is_case_insensitive() -> None:
    data = request("POST", "/", headers=[("Host", "h"), ("Transfer-Encoding", "Chunked")],
                   body=chunked(b"abc"))
    head = head_of(data)
    assert head.chunked and head.content_length is None
    assert whole(data)[1:] == [Body(b"abc"), END]


# --- keep-alive and Expect -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "headers", "keep_alive"),
    [
        ("1.1", [], True),
        ("1.1", [("Connection", "close")], False),
        ("1.1", [("Connection", "Keep-Alive, Close")], False),
        ("1.1", [("Connection", "keep-alive")], True),
        ("1.1", [("Connection", "upgrade"), ("Connection", "close")], False),
        ("1.0", [], False),
        ("1.0", [("Connection", "keep-alive")], True),
        ("1.0", [("Connection", "Keep-Alive")], True),
        ("1.0", [("Connection", "close")], False),
    ],
)
def test_keep_alive_rules(version: str, headers: list[tuple[str, str]], keep_alive: bool) -> None:
    head = head_of(request(version=version, headers=[("Host", "h"), *headers]))
    assert head.keep_alive is keep_alive


def test_connection_close_forbids_next_cycle_even_with_pipelined_bytes() -> None:
    parser = RequestParser()
    parser.feed(request(headers=[("Host", "h"), ("Connection", "close")]) + request())
    assert isinstance(parser.next_event(), RequestHead)
    assert parser.next_event() == END
    assert parser.next_event() is PAUSED
    with pytest.raises(RuntimeError, match="^cannot start next cycle: .*keep-alive"):
        parser.start_next_cycle()
    assert parser.next_event() is PAUSED


@pytest.mark.parametrize(
    ("version", "headers", "expect_continue"),
    [
        ("1.1", [("Expect", "100-continue")], True),
        ("1.1", [("Expect", "100-Continue")], True),
        ("1.1", [], False),
        ("1.1", [("Expect", "something-else")], False),
        ("1.0", [("Expect", "100-continue")], False),
    ],
)
def test_expect_continue(
    version: str, headers: list[tuple[str, str]], expect_continue: bool
) -> None:
    data = request("POST", "/", version, [("Host", "h"), ("Content-Length", "2"), *headers])
    assert head_of(data).expect_continue is expect_continue


def test_expect_continue_head_comes_before_any_body_byte() -> None:
    parser = RequestParser()
    parser.feed(request("POST", "/", headers=[("Host", "h"), ("Content-Length", "3"),
                                              ("Expect", "100-continue")]))
    head = parser.next_event()
    assert isinstance(head, RequestHead) and head.expect_continue
    assert parser.next_event() is NEED_DATA
    parser.feed(b"abc")
    assert parser.next_event() == Body(b"abc")
    assert parser.next_event() == END


# --- bodies ------------------------------------------------------------------------------------


def test_content_length_body_is_emitted_as_it_arrives() -> None:
    parser = RequestParser()
    parser.feed(post(b"0123456789")[:-6])
    assert isinstance(parser.next_event(), RequestHead)
    assert parser.next_event() == Body(b"0123")
    assert parser.next_event() is NEED_DATA
    parser.feed(b"45")
    assert parser.next_event() == Body(b"45")
    parser.feed(b"6789" + b"GET")
    assert parser.next_event() == Body(b"6789")
    assert parser.next_event() == END
    assert parser.buffered == 3


def test_body_of_a_large_batch_in_one_feed_is_one_body_event() -> None:
    body = b"[" + b",".join([b'{"event_type":"e","ts":1}'] * 100) + b"]"
    outcome = whole(post(body))
    assert outcome[1:] == [Body(body), END]


CHUNKED = {
    "simple": (chunked(b"hello", b" world"), b"hello world"),
    "one-byte-chunks": (chunked(*[bytes([c]) for c in b"abcdef"]), b"abcdef"),
    "extensions": (chunked(b"hello", ext=b";name=value;flag"), b"hello"),
    "extension-with-bws": (b"5 ;a=b\r\nhello\r\n0\t; x\r\n\r\n", b"hello"),
    "uppercase-hex": (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
    "leading-zeros": (b"0005\r\nhello\r\n000\r\n\r\n", b"hello"),
    # 1*HEXDIG: any number of leading zeros (an audit found 17 or more refused).
    "many-leading-zeros": (b"0" * 40 + b"5\r\nhello\r\n" + b"0" * 40 + b"\r\n\r\n", b"hello"),
    "trailers": (chunked(b"hello", trailers=b"X-Checksum: abc\r\nX-Other: 1\r\n"), b"hello"),
    "empty-body": (chunked(), b""),
    "binary": (chunked(b"\r\n\x00\r\n0\r\n\r\n"), b"\r\n\x00\r\n0\r\n\r\n"),
}


@pytest.mark.parametrize("name", list(CHUNKED))
def test_chunked_body(name: str) -> None:
    wire, body = CHUNKED[name]
    data = chunked_post(wire)
    head = head_of(data)
    assert head.chunked and head.content_length is None
    expected: Outcome = [head, Body(body), END] if body else [head, END]
    assert_all_ways(data, expected)


@pytest.mark.parametrize("name", list(CHUNKED))
def test_chunked_split_at_every_offset(name: str) -> None:
    wire, _ = CHUNKED[name]
    data = chunked_post(wire) + request("GET", "/next")
    expected = whole(data)
    assert [h.target for h in heads(expected)] == ["/api/events", "/next"]
    for cut in range(1, len(data)):
        assert drive([data[:cut], data[cut:]]) == expected, cut


def test_chunked_data_is_emitted_before_the_chunk_is_complete() -> None:
    parser = RequestParser()
    parser.feed(chunked_post(b"a\r\n01234"))
    assert isinstance(parser.next_event(), RequestHead)
    assert parser.next_event() == Body(b"01234")
    assert parser.next_event() is NEED_DATA
    parser.feed(b"56789\r\n0\r\n\r\n")
    assert parser.next_event() == Body(b"56789")
    assert parser.next_event() == END


# --- pipelining and cycles ---------------------------------------------------------------------


def test_pipelined_request_waits_for_start_next_cycle() -> None:
    first = post(b"abc")
    second = request("GET", "/second")
    parser = RequestParser()
    parser.feed(first + second)
    assert isinstance(parser.next_event(), RequestHead)
    assert parser.next_event() == Body(b"abc")
    assert parser.next_event() == END
    assert parser.buffered == len(second)
    for _ in range(3):
        assert parser.next_event() is PAUSED
    parser.start_next_cycle()
    head = parser.next_event()
    assert isinstance(head, RequestHead) and head.target == "/second"
    assert parser.next_event() == END
    assert parser.buffered == 0


def test_many_pipelined_requests_in_one_feed() -> None:
    stream = b"".join(request("GET", f"/{i}") for i in range(50))
    outcome = whole(stream)
    assert [h.target for h in heads(outcome)] == [f"/{i}" for i in range(50)]
    assert outcome.count(END) == 50


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (b"", "waiting for a request head"),
        (b"GET / HT", "waiting for a request head"),
        (post(b"abc")[:-1], "has not been read to its end"),
    ],
)
def test_start_next_cycle_in_the_wrong_state(setup: bytes, reason: str) -> None:
    parser = RequestParser()
    if setup:  # feeding b"" would mean EOF
        parser.feed(setup)
    events = [parser.next_event() for _ in range(3)]
    assert PAUSED not in events
    with pytest.raises(RuntimeError, match="^cannot start next cycle: .*" + reason):
        parser.start_next_cycle()


def test_start_next_cycle_twice_fails() -> None:
    parser = RequestParser()
    parser.feed(request())
    assert isinstance(parser.next_event(), RequestHead)
    assert parser.next_event() == END
    parser.start_next_cycle()
    with pytest.raises(RuntimeError, match="^cannot start next cycle"):
        parser.start_next_cycle()


# --- malformed input ---------------------------------------------------------------------------

HOST = b"Host: h\r\n"
MALFORMED = {
    # request line
    "two-parts": (b"GET /\r\n" + HOST + b"\r\n", 400, "bad_request_line"),
    "double-space": (b"GET  / HTTP/1.1\r\n" + HOST + b"\r\n", 400, "bad_request_line"),
    "four-parts": (b"GET / HTTP/1.1 x\r\n" + HOST + b"\r\n", 400, "bad_request_line"),
    "tab-separator": (b"GET\t/ HTTP/1.1\r\n" + HOST + b"\r\n", 400, "bad_request_line"),
    "empty-method": (b" / HTTP/1.1\r\n" + HOST + b"\r\n", 400, "bad_request_line"),
    "bad-method-token": (b"G(T / HTTP/1.1\r\n" + HOST + b"\r\n", 400, "bad_request_line"),
    "non-ascii-method": (b"G\xc9T / HTTP/1.1\r\n" + HOST + b"\r\n", 400, "bad_request_line"),
    "control-in-request-line": (b"GET /\x01 HTTP/1.1\r\n" + HOST + b"\r\n", 400,
                                "bad_request_line"),
    "garbage": (b"hello\r\n\r\n", 400, "bad_request_line"),
    "tls-client-hello": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400,
                         "bad_request_line"),
    # version
    "http2": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "http_version_not_supported"),
    "http2-short": (b"GET / HTTP/2\r\n" + HOST + b"\r\n", 505, "http_version_not_supported"),
    "http09": (b"GET / HTTP/0.9\r\n" + HOST + b"\r\n", 505, "http_version_not_supported"),
    "lowercase-version": (b"GET / http/1.1\r\n" + HOST + b"\r\n", 400, "bad_request_line"),
    "bad-version": (b"GET / HTTP/1.1x\r\n" + HOST + b"\r\n", 400, "bad_request_line"),
    "no-version-digits": (b"GET / HTTP/\r\n" + HOST + b"\r\n", 400, "bad_request_line"),
    # target
    "relative-target": (b"GET foo HTTP/1.1\r\n" + HOST + b"\r\n", 400, "bad_target"),
    "star-with-get": (b"GET * HTTP/1.1\r\n" + HOST + b"\r\n", 400, "bad_target"),
    "authority-form": (b"CONNECT example.com:443 HTTP/1.1\r\n" + HOST + b"\r\n", 400,
                       "bad_target"),
    "non-ascii-target": (b"GET /caf\xe9 HTTP/1.1\r\n" + HOST + b"\r\n", 400, "bad_target"),
    "tab-in-target": (b"GET /a\tb HTTP/1.1\r\n" + HOST + b"\r\n", 400, "bad_target"),
    "empty-authority": (b"GET http:///x HTTP/1.1\r\n" + HOST + b"\r\n", 400, "bad_target"),
    "other-scheme": (b"GET ftp://h/x HTTP/1.1\r\n" + HOST + b"\r\n", 400, "bad_target"),
    # header fields
    "no-colon": (b"GET / HTTP/1.1\r\n" + HOST + b"NoColon\r\n\r\n", 400, "bad_header"),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400, "bad_header"),
    "tab-before-colon": (b"GET / HTTP/1.1\r\nHost\t: h\r\n\r\n", 400, "bad_header"),
    "bad-name-char": (b"GET / HTTP/1.1\r\n" + HOST + b"X(a): b\r\n\r\n", 400, "bad_header"),
    "non-ascii-name": (b"GET / HTTP/1.1\r\n" + HOST + b"X\xe9: b\r\n\r\n", 400, "bad_header"),
    "empty-name": (b"GET / HTTP/1.1\r\n" + HOST + b": b\r\n\r\n", 400, "bad_header"),
    "obs-fold": (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\r\n b\r\n\r\n", 400, "bad_header"),
    "obs-fold-tab": (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\r\n\tb: c\r\n\r\n", 400,
                     "bad_header"),
    "space-before-first-header": (b"GET / HTTP/1.1\r\n Host: h\r\n\r\n", 400, "bad_header"),
    "nul-in-value": (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\x00b\r\n\r\n", 400, "bad_header"),
    "escape-in-value": (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: \x1b[0m\r\n\r\n", 400,
                        "bad_header"),
    "del-in-value": (b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\x7f\r\n\r\n", 400, "bad_header"),
    # line endings
    "bare-lf-everywhere": (b"GET / HTTP/1.1\nHost: h\n\n", 400, "bad_line_ending"),
    "bare-lf-in-head": (b"GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n", 400, "bad_line_ending"),
    "bare-lf-at-end": (b"GET / HTTP/1.1\r\nHost: h\r\n\n", 400, "bad_line_ending"),
    "bare-cr-in-value": (b"GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n", 400, "bad_line_ending"),
    "bare-cr-line-end": (b"GET / HTTP/1.1\rHost: h\r\n\r\n", 400, "bad_line_ending"),
    "bare-lf-before-request": (b"\nGET / HTTP/1.1\r\n" + HOST + b"\r\n", 400,
                               "bad_line_ending"),
    # framing and smuggling
    "cl-and-te": (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "conflicting_framing"),
    "two-different-cl": (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n"
                         b"Content-Length: 6\r\n\r\nhello!", 400, "invalid_content_length"),
    "cl-list-different": (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5, 6\r\n\r\n", 400,
                          "invalid_content_length"),
    "cl-not-digits": (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: five\r\n\r\n", 400,
                      "invalid_content_length"),
    "cl-negative": (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: -1\r\n\r\n", 400,
                    "invalid_content_length"),
    "cl-plus": (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: +1\r\n\r\nx", 400,
                "invalid_content_length"),
    "cl-huge": (b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: " + b"9" * 40 + b"\r\n\r\n",
                400, "invalid_content_length"),
    "te-gzip": (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip\r\n\r\n", 501,
                "not_implemented"),
    "te-gzip-chunked": (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip, chunked\r\n"
                        b"\r\n", 501, "not_implemented"),
    "te-chunked-not-last": (b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked, gzip"
                            b"\r\n\r\n", 400, "bad_transfer_encoding"),
    "te-http10": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
                  "bad_transfer_encoding"),
    # Host
    "missing-host": (b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400, "missing_host"),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "duplicate_host"),
    "two-hosts-http10": (b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n", 400, "duplicate_host"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_head(name: str) -> None:
    data, status, code = MALFORMED[name]
    expect_error(data, status, code)
    assert error_of(whole(data + request())) == (status, code)


def test_error_message_says_what_to_fix() -> None:
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\nHost : h\r\n\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert "'Host'" in info.value.message and "whitespace before its ':'" in info.value.message


def test_http2_message_names_the_version() -> None:
    with pytest.raises(ProtocolError, match="HTTP/2.0 is not supported"):
        parse_head(b"PRI * HTTP/2.0")


@pytest.mark.parametrize("version", [b"HTTP/1.2", b"HTTP/1.9"])
def test_a_later_http_1_minor_version_is_read_as_1_1(version: bytes) -> None:
    """RFC 9110 §2.5: a higher minor version of a major version we implement is processed as
    the highest minor version we implement (so it keeps the 1.1 rules: Host, keep-alive)."""
    head = parse_head(b"POST /api/events " + version + b"\r\nHost: h\r\nContent-Length: 2")
    assert (head.version, head.keep_alive, head.content_length) == ("1.1", True, 2)
    with pytest.raises(ProtocolError, match="Host header"):
        parse_head(b"GET / " + version)


CHUNK_ERRORS = {
    "non-hex-size": (b"zz\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk"),
    "0x-prefix": (b"0x5\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk"),
    "negative-size": (b"-5\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk"),
    "leading-space": (b" 5\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk"),
    "underscore": (b"1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n", 400, "bad_chunk"),
    "empty-size": (b"\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk"),
    "too-many-digits": (b"1" + b"0" * 16 + b"\r\nhello\r\n0\r\n\r\n", 413, "body_too_large"),
    "data-longer-than-size": (b"5\r\nhello!\r\n0\r\n\r\n", 400, "bad_chunk"),
    "data-shorter-than-size": (b"6\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk"),
    "bare-lf-after-size": (b"5\nhello\r\n0\r\n\r\n", 400, "bad_line_ending"),
    "bare-lf-after-data": (b"5\r\nhello\n0\r\n\r\n", 400, "bad_chunk"),
    "control-in-extension": (b"5;a=\x00\r\nhello\r\n0\r\n\r\n", 400, "bad_chunk"),
    "trailer-without-colon": (b"0\r\nNoColon\r\n\r\n", 400, "bad_header"),
    "trailer-obs-fold": (b"0\r\nX: a\r\n b\r\n\r\n", 400, "bad_header"),
    "trailer-bare-lf": (b"0\r\nX: a\n\r\n\r\n", 400, "bad_line_ending"),
    "trailer-nul": (b"0\r\nX: a\x00\r\n\r\n", 400, "bad_header"),
}


@pytest.mark.parametrize("name", list(CHUNK_ERRORS))
def test_malformed_chunked_body(name: str) -> None:
    wire, status, code = CHUNK_ERRORS[name]
    expect_error(chunked_post(wire), status, code)


# --- limits ------------------------------------------------------------------------------------

SMALL = ParserLimits(
    max_request_line=64, max_header_bytes=256, max_body=100, max_headers=5, max_chunk_line=16
)


def request_line_of(length: int) -> bytes:
    prefix, suffix = b"GET /", b" HTTP/1.1"
    return prefix + b"a" * (length - len(prefix) - len(suffix)) + suffix


def test_request_line_at_limit_is_accepted() -> None:
    data = request_line_of(64) + b"\r\n" + HOST + b"\r\n"
    assert_all_ways(data, [head_of(data, SMALL), END], limits=SMALL)


def test_request_line_over_limit_is_414() -> None:
    expect_error(request_line_of(65) + b"\r\n" + HOST + b"\r\n", 414, "uri_too_long",
                 limits=SMALL)


def test_request_line_over_limit_is_detected_before_its_end_arrives() -> None:
    parser = RequestParser(SMALL)
    parser.feed(request_line_of(200)[:64])
    assert parser.next_event() is NEED_DATA
    parser.feed(b"a\r")  # 65 bytes of line: over, whatever comes next
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.status_hint == 414


@pytest.mark.parametrize("head_size", [200, 300])  # within and over max_header_bytes
def test_long_request_line_is_414_when_its_line_end_arrives_with_it(head_size: int) -> None:
    line = request_line_of(100)
    head = line + b"\r\n" + HOST + b"X: " + b"p" * (head_size - len(line) - 16) + b"\r\n\r\n"
    assert error_of(whole(head, limits=SMALL)) == (414, "uri_too_long")
    assert error_of(whole(line + b"\r\n", limits=SMALL)) == (414, "uri_too_long")


def test_request_line_at_limit_with_pending_cr_waits() -> None:
    parser = RequestParser(SMALL)
    parser.feed(request_line_of(64) + b"\r")
    assert parser.next_event() is NEED_DATA
    parser.feed(b"\n" + HOST + b"\r\n")
    assert isinstance(parser.next_event(), RequestHead)


def head_of_size(size: int) -> bytes:
    """A valid head of exactly `size` bytes, final CRLFCRLF included."""
    base = b"GET / HTTP/1.1\r\n" + HOST + b"X-Pad: \r\n\r\n"
    assert size >= len(base)
    return base[:-4] + b"p" * (size - len(base)) + b"\r\n\r\n"


def test_header_block_at_limit_is_accepted() -> None:
    data = head_of_size(256)
    assert len(data) == 256
    assert_all_ways(data, [head_of(data, SMALL), END], limits=SMALL)


def test_header_block_over_limit_is_431() -> None:
    expect_error(head_of_size(257), 431, "headers_too_large", limits=SMALL)


def test_header_block_over_limit_is_detected_before_its_end_arrives() -> None:
    parser = RequestParser(SMALL)
    data = head_of_size(1000)
    parser.feed(data[:255])
    assert parser.next_event() is NEED_DATA
    parser.feed(data[255:256])
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.status_hint == 431


def head_with_fields(count: int) -> bytes:
    return b"GET / HTTP/1.1\r\n" + HOST + b"".join(b"X-%d: v\r\n" % i for i in range(count - 1))


def test_header_count_at_limit_is_accepted() -> None:
    data = head_with_fields(5) + b"\r\n"
    head = head_of(data, SMALL)
    assert len(head.headers) == 5
    assert_all_ways(data, [head, END], limits=SMALL)


def test_header_count_over_limit_is_431() -> None:
    expect_error(head_with_fields(6) + b"\r\n", 431, "headers_too_large", limits=SMALL)


def test_header_count_over_limit_is_detected_before_the_head_ends() -> None:
    parser = RequestParser(SMALL)
    parser.feed(head_with_fields(5))
    assert parser.next_event() is NEED_DATA
    parser.feed(b"X-Extra: v\r\n")
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.status_hint == 431


def test_content_length_at_limit_is_accepted() -> None:
    data = post(b"x" * 100)
    assert whole(data, limits=SMALL)[1:] == [Body(b"x" * 100), END]


def test_content_length_over_limit_is_413_before_the_head_is_returned() -> None:
    parser = RequestParser(SMALL)
    parser.feed(request("POST", "/", headers=[("Host", "h"), ("Content-Length", "101"),
                                              ("Expect", "100-continue")]))
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert (info.value.status_hint, info.value.code) == (413, "body_too_large")


def test_chunked_total_at_limit_is_accepted() -> None:
    data = chunked_post(chunked(b"x" * 60, b"y" * 40))
    assert whole(data, limits=SMALL)[1:] == [Body(b"x" * 60 + b"y" * 40), END]


def test_chunked_total_over_limit_is_413_as_soon_as_the_size_line_is_read() -> None:
    parser = RequestParser(SMALL)
    parser.feed(chunked_post(b"3c\r\n" + b"x" * 60 + b"\r\n"))
    assert isinstance(parser.next_event(), RequestHead)
    assert parser.next_event() == Body(b"x" * 60)
    parser.feed(b"29\r\n")  # 41 more: one past the limit, before any of its data
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert (info.value.status_hint, info.value.code) == (413, "body_too_large")


def test_chunked_over_limit_is_413_every_way() -> None:
    expect_error(chunked_post(chunked(b"x" * 60, b"y" * 41)), 413, "body_too_large",
                 limits=SMALL)


@pytest.mark.parametrize(("ext_len", "ok"), [(14, True), (15, False)])
def test_chunk_size_line_limit(ext_len: int, ok: bool) -> None:
    line = b"5;" + b"e" * ext_len  # 16 bytes is the limit in SMALL
    data = chunked_post(line + b"\r\nhello\r\n0\r\n\r\n")
    if ok:
        assert whole(data, limits=SMALL)[1:] == [Body(b"hello"), END]
        assert bytewise(data, limits=SMALL)[1:] == [Body(b"hello"), END]
    else:
        expect_error(data, 400, "bad_chunk", limits=SMALL)


def test_trailers_share_the_header_budget() -> None:
    head_len = len(chunked_post(b""))
    budget = 256 - head_len
    fits = b"X: " + b"t" * (budget - 7) + b"\r\n"  # + final CRLF = budget bytes
    data = chunked_post(b"0\r\n" + fits + b"\r\n")
    assert whole(data, limits=SMALL)[1:] == [END]
    assert bytewise(data, limits=SMALL)[1:] == [END]
    too_big = chunked_post(b"0\r\n" + b"X: " + b"t" * (budget - 6) + b"\r\n\r\n")
    expect_error(too_big, 431, "headers_too_large", limits=SMALL)


def test_empty_trailers_need_no_budget() -> None:
    data = head_of_size(256)[:-2] + b"Transfer-Encoding: chunked\r\n\r\n"
    limits = dataclasses.replace(SMALL, max_header_bytes=len(data))
    assert whole(data + b"0\r\n\r\n", limits=limits)[1:] == [END]
    assert bytewise(data + b"0\r\n\r\n", limits=limits)[1:] == [END]


def test_leading_empty_lines_are_bounded() -> None:
    ok = b"\r\n" * 32 + request()  # 64 bytes: the request-line limit in SMALL
    assert heads(whole(ok, limits=SMALL))
    expect_error(b"\r\n" * 33 + request(), 400, "bad_request_line", limits=SMALL)


def test_leading_empty_lines_fed_forever_are_bounded() -> None:
    parser = RequestParser(SMALL)
    with pytest.raises(ProtocolError):
        for _ in range(1000):
            parser.feed(b"\r\n")
            assert parser.next_event() is NEED_DATA


@pytest.mark.parametrize(
    "kwargs",
    [{"max_body": 0}, {"max_headers": -1}, {"max_request_line": 1.5}, {"max_chunk_line": "1"}],
)
def test_limits_are_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be a positive int"):
        ParserLimits(**kwargs)  # type: ignore[arg-type]


# --- EOF ---------------------------------------------------------------------------------------


def test_eof_on_a_fresh_connection_is_connection_closed() -> None:
    parser = RequestParser()
    parser.feed(b"")
    assert parser.next_event() == ConnectionClosed()
    assert parser.next_event() == ConnectionClosed()


def test_eof_after_leading_empty_lines_is_connection_closed() -> None:
    assert whole(b"\r\n\r\n", eof=True) == [ConnectionClosed()]


def test_eof_while_paused_is_reported_after_the_next_cycle() -> None:
    parser = RequestParser()
    parser.feed(request())
    parser.feed(b"")
    assert isinstance(parser.next_event(), RequestHead)
    assert parser.next_event() == END
    assert parser.next_event() is PAUSED
    parser.start_next_cycle()
    assert parser.next_event() == ConnectionClosed()


def test_eof_after_pipelined_requests_comes_last() -> None:
    stream = request("GET", "/1") + post(b"ab") + request("GET", "/3")
    outcome = whole(stream, eof=True)
    assert [h.target for h in heads(outcome)] == ["/1", "/api/events", "/3"]
    assert outcome[-1] == ConnectionClosed()
    assert bytewise(stream, eof=True) == outcome


@pytest.mark.parametrize(
    "data",
    [
        b"G",
        b"GET / HTTP/1.1\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n\r",
        b"\r",
        post(b"hello")[:-1],
        chunked_post(b"5\r\nhel"),
        chunked_post(b"5\r\nhello\r\n"),
        chunked_post(b"5\r\nhello\r\n0\r\n"),
        chunked_post(b"5\r\nhello\r\n0\r\nX: y\r\n"),
    ],
)
def test_eof_inside_a_request_is_400_incomplete(data: bytes) -> None:
    assert error_of(whole(data, eof=True)) == (400, "incomplete_request")
    assert error_of(bytewise(data, eof=True)) == (400, "incomplete_request")


def test_eof_inside_a_body_hands_out_what_arrived_first() -> None:
    parser = RequestParser()
    parser.feed(post(b"hello")[:-2])
    parser.feed(b"")
    assert isinstance(parser.next_event(), RequestHead)
    assert parser.next_event() == Body(b"hel")
    with pytest.raises(ProtocolError) as info:
        parser.next_event()
    assert info.value.code == "incomplete_request"


def test_feeding_after_eof_is_a_caller_bug() -> None:
    parser = RequestParser()
    parser.feed(b"")
    parser.feed(b"")  # repeating EOF is harmless
    with pytest.raises(RuntimeError, match="^cannot feed"):
        parser.feed(b"GET")


# --- after an error ----------------------------------------------------------------------------


def test_parser_is_dead_after_an_error() -> None:
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\nHost : h\r\n\r\n")
    with pytest.raises(ProtocolError) as first:
        parser.next_event()
    parser.feed(request())  # discarded: bytes in flight while the server closes
    for _ in range(2):
        with pytest.raises(ProtocolError) as again:
            parser.next_event()
        assert (again.value.status_hint, again.value.code, again.value.message) == (
            first.value.status_hint,
            first.value.code,
            first.value.message,
        )
    with pytest.raises(RuntimeError, match="^cannot start next cycle: .*protocol error"):
        parser.start_next_cycle()


def test_parser_is_dead_after_an_error_in_a_body() -> None:
    parser = RequestParser()
    parser.feed(chunked_post(b"zz\r\n"))
    assert isinstance(parser.next_event(), RequestHead)
    with pytest.raises(ProtocolError):
        parser.next_event()
    with pytest.raises(ProtocolError, match="chunk"):
        parser.next_event()


# --- buffer handling ---------------------------------------------------------------------------


def test_buffered_counts_unconsumed_bytes() -> None:
    parser = RequestParser()
    assert parser.buffered == 0
    parser.feed(b"GET / HT")
    assert parser.next_event() is NEED_DATA
    assert parser.buffered == 8
    parser.feed(b"TP/1.1\r\nHost: h\r\n\r\nGET /2")
    assert isinstance(parser.next_event(), RequestHead)
    assert parser.buffered == 6


def test_requests_straddling_feeds() -> None:
    first, second, third = post(b"hello"), request("GET", "/2"), chunked_post(chunked(b"abc"))
    stream = first + second + third
    cuts = [5, len(first) + 3, len(first) + len(second) + 7, len(stream) - 4]
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert drive(pieces) == whole(stream)
    assert [h.target for h in heads(whole(stream))] == ["/api/events", "/2", "/api/events"]


def test_feeding_a_mutable_buffer_does_not_alias_it() -> None:
    data = bytearray(post(b"hello"))
    parser = RequestParser()
    parser.feed(data)  # type: ignore[arg-type]
    data[:] = b"X" * len(data)
    assert isinstance(parser.next_event(), RequestHead)
    assert parser.next_event() == Body(b"hello")


def test_feeding_a_memoryview_works() -> None:
    data = post(b"hello")
    parser = RequestParser()
    parser.feed(memoryview(data)[:10])  # type: ignore[arg-type]
    assert parser.next_event() is NEED_DATA
    parser.feed(memoryview(data)[10:])  # type: ignore[arg-type]
    assert isinstance(parser.next_event(), RequestHead)
    assert parser.next_event() == Body(b"hello")


def test_body_events_are_immutable_bytes_after_fragmented_feeds() -> None:
    outcome = bytewise(post(b"hello") + chunked_post(chunked(b"world")))
    bodies = [e for e in outcome if isinstance(e, Body)]
    assert [b.data for b in bodies] == [b"hello", b"world"]
    assert all(type(b.data) is bytes for b in bodies)


# --- events ------------------------------------------------------------------------------------


def test_heads_built_by_the_parser_are_ordinary_immutable_request_heads() -> None:
    head = head_of(post(b"x"))
    assert type(head) is RequestHead
    assert head == make_head(method="POST", target="/api/events", content_length=1,
                             headers=((b"host", b"example.com"), (b"content-length", b"1")))
    assert head.content_length == 1 and head.keep_alive and not head.chunked
    assert dict(head.fields) == {b"host": b"example.com", b"content-length": b"1"}
    with pytest.raises(AttributeError):
        head.target = "/other"  # type: ignore[misc]
    with pytest.raises(TypeError):  # (one head serves every request that repeats it)
        head.fields[b"host"] = b"elsewhere"  # type: ignore[index]


@pytest.mark.parametrize("block", [
    b"Host: a\r\nX-Tag: one\r\nAccept: */*\r\nX-Tag: two\r\nx-tag: three\r\n",
    b"Host: a\r\nX-Tag: one\r\nAccept: */*\r\n",
])
def test_a_heads_fields_give_each_names_first_value_as_a_scan_of_its_headers_does(
        block: bytes) -> None:
    # Request.header answers from `fields` when the parser gave them, else by a scan of
    # `headers`: both must answer the same, repeated names included (the first value).
    head = head_of(b"GET / HTTP/1.1\r\n" + block + b"\r\n")
    with_fields = Request(head.method, head.target, "", head.headers, fields=head.fields)
    scanned = Request(head.method, head.target, "", head.headers)
    assert set(head.fields) == {name for name, _ in head.headers}
    for name in (b"x-tag", b"host", b"accept", b"absent"):
        assert with_fields.header(name) == scanned.header(name)
        assert with_fields.header(name, b"d") == scanned.header(name, b"d")
    assert with_fields.header(b"x-tag") == b"one"
    assert with_fields.header(b"absent") is None


def test_sentinels_have_readable_reprs() -> None:
    assert repr(NEED_DATA) == "NEED_DATA" and repr(PAUSED) == "PAUSED"
    assert NEED_DATA is not PAUSED


# --- property: any split of a valid pipelined stream gives the same requests -------------------

TOKENS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
                 min_size=1, max_size=12)
VALUES = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                 max_size=30).map(str.strip)
PATHS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/._-?=&%", max_size=30).map(
    lambda s: "/" + s
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, str, list[tuple[bytes, bytes]], bytes]:
    extra = draw(st.lists(st.tuples(TOKENS, VALUES), max_size=5).filter(
        lambda hs: all(n.lower() not in {"host", "content-length", "transfer-encoding",
                                         "connection", "expect"} for n, _ in hs)
    ))
    body = draw(st.binary(max_size=200))
    path = draw(PATHS)
    headers = [("Host", "example.com"), *extra]
    if draw(st.booleans()):
        sizes = draw(st.lists(st.integers(1, 50), max_size=10))
        pieces, rest = [], body
        for size in sizes:
            pieces.append(rest[:size])
            rest = rest[size:]
        pieces.append(rest)
        wire = chunked(*pieces, ext=draw(st.sampled_from([b"", b";x=1"])))
        data = request("POST", path, headers=[*headers, ("Transfer-Encoding", "chunked")],
                       body=wire)
    else:
        data = request("POST", path, headers=[*headers, ("Content-Length", str(len(body)))],
                       body=body)
    expected_headers = [(n.lower().encode(), v.encode()) for n, v in headers]
    return data, path, expected_headers, body


@settings(max_examples=100, deadline=None)
@given(
    reqs=st.lists(requests(), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
    leading=st.integers(0, 2),
)
def test_any_split_of_a_pipelined_stream_yields_the_same_requests(
    reqs: list[tuple[bytes, str, list[tuple[bytes, bytes]], bytes]],
    cuts: list[int],
    leading: int,
) -> None:
    stream = b"\r\n" * leading + b"".join(r[0] for r in reqs)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    bounds = zip([0, *points], [*points, len(stream)], strict=True)
    pieces = [stream[a:b] for a, b in bounds if b > a]  # an empty feed would mean EOF
    outcome = drive(pieces, eof=True)
    assert outcome == whole(stream, eof=True)
    assert outcome[-1] == ConnectionClosed()
    got_heads = heads(outcome)
    assert [h.target for h in got_heads] == [r[1] for r in reqs]
    for head, (_, _, expected_headers, _) in zip(got_heads, reqs, strict=True):
        assert [h for h in head.headers if h[0] not in {b"content-length",
                                                        b"transfer-encoding"}] == expected_headers
    bodies: list[bytes] = []
    for event in outcome:
        if isinstance(event, RequestHead):
            bodies.append(b"")
        elif isinstance(event, Body):
            bodies[-1] += event.data
    assert bodies == [r[3] for r in reqs]


# --- the line caches of parse_head ---------------------------------------------------------------


def test_remembered_lines_parse_exactly_like_new_ones() -> None:
    from collector.http import parser as parser_module

    head = (b"POST /api/events?x=1 HTTP/1.1\r\nHost: a\r\nX-Mixed-Case:  Value \t\r\n"
            b"Content-Length: 5")
    parser_module._FIELD_LINES.clear()
    parser_module._REQUEST_LINES.clear()
    first = parse_head(head)
    assert parser_module._FIELD_LINES and parser_module._REQUEST_LINES  # remembered
    again = parse_head(head)
    assert again == first
    assert again.headers == ((b"host", b"a"), (b"x-mixed-case", b"Value"),
                             (b"content-length", b"5"))
    assert (again.method, again.target, again.version) == ("POST", "/api/events?x=1", "1.1")


def test_bad_lines_are_never_remembered() -> None:
    from collector.http import parser as parser_module

    for _ in range(2):  # the second time is not a cache hit: the same 400 again
        with pytest.raises(ProtocolError) as info:
            parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x")
        assert info.value.status_hint == 400
        with pytest.raises(ProtocolError):
            parse_head(b"GET  / HTTP/1.1\r\nHost: a")
    assert b"Bad Name: x" not in parser_module._FIELD_LINES
    assert b"GET  / HTTP/1.1" not in parser_module._REQUEST_LINES


def test_the_line_caches_stay_bounded() -> None:
    from collector.http import parser as parser_module

    limit = parser_module._CACHED_LINES
    for n in range(limit * 2 + 5):
        parse_head(b"GET /p%d HTTP/1.1\r\nHost: a\r\nX-N: %d" % (n, n))
        assert len(parser_module._FIELD_LINES) <= limit
        assert len(parser_module._REQUEST_LINES) <= limit
    long_value = b"v" * parser_module._CACHED_LINE_BYTES
    parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nCookie: " + long_value)
    assert b"Cookie: " + long_value not in parser_module._FIELD_LINES


def _read_one_head(parser: RequestParser, data: bytes) -> RequestHead:
    parser.feed(data)
    head = parser.next_event()
    assert type(head) is RequestHead
    return head


def test_a_repeated_head_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.http import parser as parser_module

    parser_module._HEADS.clear()
    calls: list[bytes] = []
    real = parser_module.parse_head

    def counting(head: bytes, limits: ParserLimits = parser_module.DEFAULT_LIMITS
                 ) -> RequestHead:
        calls.append(head)
        return real(head, limits)

    monkeypatch.setattr(parser_module, "parse_head", counting)
    limits = ParserLimits()
    first = _read_one_head(RequestParser(limits), post(b"hello"))
    second = _read_one_head(RequestParser(limits), post(b"world"))  # same head, new connection
    assert second == first and len(calls) == 1
    third = _read_one_head(RequestParser(limits), post(b"hello!"))  # another Content-Length
    assert third.content_length == 6 and len(calls) == 2


def test_a_remembered_head_is_judged_again_under_other_limits() -> None:
    from collector.http import parser as parser_module

    parser_module._HEADS.clear()
    data = post(b"x" * 100)
    assert _read_one_head(RequestParser(ParserLimits()), data).content_length == 100
    small = RequestParser(ParserLimits(max_body=50))  # the same head is now too large
    small.feed(data)
    with pytest.raises(ProtocolError) as info:
        small.next_event()
    assert info.value.status_hint == 413


def test_refused_heads_are_never_remembered_and_the_head_cache_stays_bounded() -> None:
    from collector.http import parser as parser_module

    parser_module._HEADS.clear()
    for _ in range(2):  # the second time is not a cache hit: the same 400 again
        bad = RequestParser()
        bad.feed(b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n")
        with pytest.raises(ProtocolError):
            bad.next_event()
    assert not parser_module._HEADS
    limit = parser_module._CACHED_HEADS
    for n in range(limit + 5):
        _read_one_head(RequestParser(), b"GET /p%d HTTP/1.1\r\nHost: a\r\n\r\n" % n)
        assert len(parser_module._HEADS) <= limit
    big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"v" * parser_module._CACHED_HEAD_BYTES
    _read_one_head(RequestParser(), big + b"\r\n\r\n")
    assert big not in parser_module._HEADS


def test_at_rest_only_between_requests_with_nothing_buffered() -> None:
    parser = RequestParser()
    assert parser.at_rest
    parser.feed(post(b"hi")[:10])
    assert not parser.at_rest
    parser.feed(post(b"hi")[10:])
    assert type(parser.next_event()) is RequestHead
    assert parser.take_whole_body() == b"hi"
    assert not parser.at_rest  # the request still waits for start_next_cycle()
    parser.start_next_cycle()
    assert parser.at_rest
    parser.feed(b"")
    assert not parser.at_rest  # EOF: next_event() has something to say


@pytest.mark.parametrize("value", [b"a b/c", b"a, b", b"x/y", b"a@b", b"[::1", b"h:80x"])
def test_an_invalid_host_value_is_400(value: bytes) -> None:
    # RFC 9112 §3.2: a server MUST answer 400 to a Host field with an invalid value (an audit
    # found 'a b/c' served).
    expect_error(b"GET / HTTP/1.1\r\nHost: " + value + b"\r\n\r\n", 400, "bad_host")


@pytest.mark.parametrize("value", [b"example.com", b"example.com:8080", b"127.0.0.1:80",
                                   b"[::1]:8080", b"", b"xn--bcher-kva.example",
                                   b"[fe80::1%25eth0]:80", b"example.com."])
def test_a_valid_host_value_is_accepted(value: bytes) -> None:
    assert parse_head(b"GET / HTTP/1.1\r\nHost: " + value).method == "GET"


@pytest.mark.parametrize("target", [b"/healthz#f", b"/api/events?x=1#top", b"http://a/healthz?x#f"])
def test_a_fragment_in_the_target_is_400(target: bytes) -> None:
    expect_error(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_target")
