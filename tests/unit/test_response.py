"""Response serialisation (collector.http.response): the exact bytes on the wire."""

from __future__ import annotations

from collector.http.message import Response
from collector.http.response import CORS, serialize

DATE = b"date: Sun, 29 Nov 2026 16:00:00 GMT\r\n"


def test_the_common_response_has_length_cors_and_date() -> None:
    wire = serialize(Response(202, b'{"a":1}'), True, False, False, DATE)
    assert wire == (b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\n"
                    b"content-length: 7\r\n" + CORS + DATE + b'\r\n{"a":1}')


def test_extra_headers_closing_and_http10_keep_alive_are_announced() -> None:
    resp = Response(200, b"GIF", "image/gif", [("cache-control", "no-store")])
    assert serialize(resp, False, False, False, DATE) == (
        b"HTTP/1.1 200 OK\r\ncontent-type: image/gif\r\ncontent-length: 3\r\n" + CORS + DATE
        + b"connection: close\r\ncache-control: no-store\r\n\r\nGIF")
    assert serialize(Response(200, b"x"), True, True, False, DATE).split(b"\r\n\r\n")[0] \
        .endswith(b"connection: keep-alive")


def test_head_keeps_the_length_but_not_the_body_and_204_has_neither() -> None:
    head = serialize(Response(200, b"hello"), True, False, True, DATE)
    assert head.endswith(b"content-length: 5\r\n" + CORS + DATE + b"\r\n")
    no_content = serialize(Response(204, b"", "text/plain"), True, False, False, DATE)
    assert no_content == b"HTTP/1.1 204 No Content\r\n" + CORS + DATE + b"\r\n"
