"""Response serialisation: one bytes object per response, written with one transport.write.

Status lines are precomputed, and so is the header block every response shares, so the hot
path is a few concatenations. Header names are lowercase (HTTP/1.1 names are case-insensitive,
and this is what HTTP/2 sends anyway).
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

from collector.http.message import Response

_PHRASES_9110 = {413: "Content Too Large", 414: "URI Too Long", 422: "Unprocessable Content"}
"""RFC 9110 §15's reason phrases where Python 3.11's HTTPStatus still has the older ones."""

STATUS_LINE: dict[int, bytes] = {
    s.value: f"HTTP/1.1 {s.value} {_PHRASES_9110.get(s.value, s.phrase)}\r\n".encode("ascii")
    for s in HTTPStatus
}

CORS = b"access-control-allow-origin: *\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_CONTENT_TYPES: dict[str, bytes] = {}


class DateCache:
    """The `date:` header line, recomputed at most once a second (RFC 9110 §6.6.1)."""

    __slots__ = ("_second", "_line")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
        return self._line


def serialize(
    resp: Response, keep_alive: bool, http10: bool, head_only: bool, date: bytes
) -> bytes:
    """The whole response as bytes.

    Args:
        keep_alive: the connection stays open after this response; for HTTP/1.0 that must be
            said explicitly (`connection: keep-alive`), for 1.1 only closing is announced.
        http10: the request was HTTP/1.0.
        head_only: a HEAD request: the headers of the GET response, `content-length`
            included, and no body (RFC 9110 §9.3.2).
    """
    body = resp.body
    ct = _CONTENT_TYPES.get(resp.content_type)
    if ct is None:
        ct = _CONTENT_TYPES[resp.content_type] = (
            b"content-type: " + resp.content_type.encode("latin-1") + b"\r\n"
        )
    status_line = STATUS_LINE.get(resp.status) or f"HTTP/1.1 {resp.status} Unknown\r\n".encode()
    if keep_alive and not http10 and not head_only and not resp.headers and \
            resp.status != 204 and resp.status != 304:
        # The common response (keep-alive 1.1, no extra headers): one formatting, no list.
        return b"%b%bcontent-length: %d\r\n%b%b\r\n%b" % (status_line, ct, len(body), CORS,
                                                           date, body)
    if resp.status == 204 or resp.status == 304:
        # No body and no content-length on 204 (RFC 9110 §8.6) and 304.
        parts = [status_line, CORS, date]
        head_only = True
    else:
        parts = [status_line, ct, b"content-length: ", str(len(body)).encode(), b"\r\n", CORS,
                 date]
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    elif http10:
        parts.append(b"connection: keep-alive\r\n")
    for name, value in resp.headers:
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)
