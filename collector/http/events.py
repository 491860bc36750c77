"""What the sans-IO request parser hands to the protocol.

One request is always the sequence `RequestHead`, zero or more `Body`, `EndOfMessage`. Between
requests the parser may report `ConnectionClosed` (the peer sent EOF with nothing pending).
`NEED_DATA` and `PAUSED` are not events but answers of `RequestParser.next_event()`: "feed me
more bytes" and "the current request is complete; answer it, then call `start_next_cycle()`".

Events are immutable (frozen, slotted dataclasses, and a NamedTuple for the head): cheap to
build on the hot path, safe to pass around, comparable in tests. `EndOfMessage` and
`ConnectionClosed` carry nothing, so the parser reuses one instance of each; compare them with
`==` or `isinstance`, never with `is`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple


class Sentinel(enum.Enum):
    """The two non-event answers of `next_event()`; compare with `is`."""

    NEED_DATA = "NEED_DATA"
    PAUSED = "PAUSED"

    def __repr__(self) -> str:
        return self.value


NEED_DATA = Sentinel.NEED_DATA
"""The parser has consumed everything it can: feed it more bytes (or b"" for EOF)."""
PAUSED = Sentinel.PAUSED
"""A complete request was returned; nothing more until the server calls `start_next_cycle()`."""


class RequestHead(NamedTuple):
    """The request line and header block of one request, validated.

    `headers` keeps every field in wire order, names lowercased and values stripped of optional
    whitespace, so a handler can read any header; the fields below it are the framing and
    connection decisions the protocol needs, already made once by the parser (RFC 9112 §6.3 for
    the body, §9.3 for persistence) so that nobody re-derives them differently.

    A NamedTuple rather than a frozen dataclass like the other events: one is built per
    request, and the parser builds it with `_new_head` (tuple.__new__, a single C call), where
    a frozen dataclass's __init__ stores each of the nine fields through object.__setattr__
    (measured: a sixth of the whole parse of a small request). Immutable either way.
    """

    method: str
    """Request method, a validated token, case preserved (methods are case-sensitive)."""
    target: str
    """The request-target decoded as latin-1: origin-form ("/path?query"), or "*" (OPTIONS).
    An absolute-form target ("http://host/path") is reduced to its origin-form."""
    version: str
    """"1.1" or "1.0"."""
    headers: tuple[tuple[bytes, bytes], ...]
    keep_alive: bool
    """The client allows another request on this connection after this one."""
    expect_continue: bool
    """HTTP/1.1 "Expect: 100-continue": the client waits for 100 before sending the body."""
    content_length: int | None
    """Declared body length; None when the request has no Content-Length."""
    chunked: bool
    """The body is sent with Transfer-Encoding: chunked (content_length is then None)."""
    fields: Mapping[bytes, bytes]
    """Each field name of `headers` with its first value, read-only (a MappingProxyType):
    `Request.header` in one lookup rather than a scan of every field (a browser sends a
    dozen). Built once per distinct head, like the rest of it. (It makes a head unhashable;
    nothing hashes heads.)"""


@dataclass(frozen=True, slots=True)
class Body:
    """A piece of the request body, in order; with chunked framing, decoded chunk data."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The request body (possibly empty) is complete."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its side between two requests: no more requests will come."""


Event = RequestHead | Body | EndOfMessage | ConnectionClosed
"""Everything `RequestParser.next_event()` returns, besides NEED_DATA and PAUSED."""
