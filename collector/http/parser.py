"""Sans-IO HTTP/1.1 request parser: bytes in, request events out.

Theory of operation
-------------------
The protocol calls `feed(data)` with whatever the transport delivered (b"" for EOF) and then
`next_event()` until it answers NEED_DATA or PAUSED. Each request comes out as `RequestHead`,
zero or more `Body`, `EndOfMessage`; after that the parser answers PAUSED until the server has
written the response and calls `start_next_cycle()`, so pipelined requests are parsed (and
answered) strictly one after another. The connection-level states and their legal moves live
in `state.py`; this module owns the receive buffer and the byte-level readers.

The common case is one `feed()` holding a whole small request. It costs one `find(CRLFCRLF)`,
one `split(CRLF)` of the head, one `translate()` that proves the head holds no control bytes
besides its CRLFs, a `partition(":")` + `lower()` + `strip()` per field, one `translate()`
over all field names together, a dict of the fields (duplicate-free heads skip the slow path),
and a slice for the body: no per-byte Python loop and no regular expression. And most of that
only once per distinct head: `parse_head` is a pure function of the head's bytes and the
limits, so a head seen before (a keep-alive client repeats its head, changed at most in its
Content-Length) is one dict hit (`_HEADS`), as are request and field lines seen before.

Buffer: `_buf` is the received bytes not yet discarded and `_pos` the first unconsumed byte.
While everything arrives in whole requests, `_buf` is the very `bytes` object the transport
gave us: the body costs one slice (a body piece that fills a feed of its own is handed out as
that object, no copy at all) and nothing is ever concatenated. Only when a partial request
remains does `feed()` switch to a `bytearray` and append to it (amortised O(1) per byte; front
deletion of a bytearray is O(1) in CPython). Leftovers are bounded: a partial head by
max_header_bytes, a partial chunk-size line by max_chunk_line, and body bytes are handed out
as soon as they arrive. What is *not* bounded here is data fed while PAUSED (pipelined
requests waiting for their turn): the protocol watches `buffered` and stops reading.

Line endings: CRLF is required in the request line, header fields, chunk-size lines and
trailers; a bare LF or bare CR is a 400. h11 and most servers accept a bare LF, but a front
proxy that splits lines differently from us is exactly how request smuggling works, and every
client we serve (browsers, SDKs, curl, wrk, load testers) sends CRLF. Rejecting is the safe
choice for an ingestion endpoint; the message tells the client what to fix.

Invariants
----------
- `_pos <= len(_buf)`; bytes before `_pos` are consumed and never looked at again.
- In IDLE, `_scanned` bytes after `_pos` are known to hold no CRLFCRLF (so a trickled head is
  scanned once, not once per feed) and `_crlfs/_lfs/_crs` count what they hold.
- After a ProtocolError the parser is dead: `next_event()` raises the same error again and
  `feed()` discards its input (bytes already in flight when the server decided to close must not
  make `data_received` blow up while the error response is being written).

Limits (ParserLimits)
---------------------
- max_request_line: bytes of the request line without its CRLF; over it -> 414, raised as
  soon as that many bytes are buffered without a line end.
- max_header_bytes: the whole head, request line through the final empty line, CRLFs
  included; over it -> 431 as soon as exceeded. Chunked trailers spend what the head left of
  this same budget. Leading empty lines before a request are bounded by max_request_line.
- max_headers: header fields in one head; over it -> 431 as soon as the extra line is seen.
- max_body: body bytes on the wire. A larger Content-Length -> 413 before RequestHead is
  returned (so the server never sends 100 Continue for it); a chunk that would take the total
  over -> 413 as soon as its size line is read.
- max_chunk_line: one chunk-size line (size and extensions, without CRLF); over it -> 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType

from collector.errors import ProtocolError
from collector.http.events import (
    NEED_DATA,
    PAUSED,
    Body,
    ConnectionClosed,
    EndOfMessage,
    Event,
    RequestHead,
    Sentinel,
)
from collector.http.state import (
    _MAX_CL_DIGITS,
    TRANSITIONS,
    ConnState,
    Trigger,
    body_framing,
    keep_alive,
    transition,
)


@dataclass(frozen=True, slots=True)
class ParserLimits:
    max_request_line: int = 8192
    max_header_bytes: int = 16384
    max_body: int = 1024 * 1024
    max_headers: int = 100
    max_chunk_line: int = 4096

    def __post_init__(self) -> None:
        for name in ("max_request_line", "max_header_bytes", "max_body", "max_headers",
                     "max_chunk_line"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"ParserLimits.{name} must be a positive int, got {value!r}")


DEFAULT_LIMITS = ParserLimits()

# --- byte classes (RFC 9110 §5.6.2 tchar, RFC 5234 CTL/HEXDIG) --------------------------------
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_HEXDIG = b"0123456789abcdefABCDEF"
_CTL_NOT_HT = bytes(range(0x09)) + bytes(range(0x0A, 0x20)) + b"\x7f"
_NOT_CTL = bytes(sorted(set(range(256)) - set(_CTL_NOT_HT)))
"""`x.translate(None, _NOT_CTL)` keeps only the control bytes of x (HTAB counts as text)."""

_METHODS = {m: m.decode() for m in (b"GET", b"POST", b"HEAD", b"OPTIONS", b"PUT", b"DELETE",
                                     b"PATCH")}
"""Common methods, already validated and decoded: a dict hit skips both steps."""
_VERSIONS = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}
_MAX_CHUNK_SIZE_DIGITS = 16
"""A 64-bit size; anything longer would overflow every body limit anyway."""

_END = EndOfMessage()
_new_head = tuple.__new__
"""`_new_head(RequestHead, (...nine values...))`: the head in one C call (see RequestHead)."""
_CLOSED = ConnectionClosed()

# Where the chunked reader is inside the body (compared by identity; names read well in a
# debugger).
_SIZE = "chunk-size"
_DATA = "chunk-data"
_DATA_END = "chunk-data-crlf"
_TRAILERS = "trailers"

# Module-level aliases: a global lookup is cheaper than an attribute of an Enum class, and
# next_event() tests the state on every call.
_IDLE = ConnState.IDLE
_BODY = ConnState.BODY
_DONE = ConnState.DONE
_MUST_CLOSE = ConnState.MUST_CLOSE
_CLOSED_STATE = ConnState.CLOSED
_ERROR = ConnState.ERROR
# The moves the parser makes from a state its own dispatch guarantees (the head reader only
# runs in IDLE, the body readers only in BODY) are looked up in the table once, here, rather
# than per request; the table stays the single source of truth. Moves a caller can get wrong
# (start_next_cycle) and the error move go through transition() every time.
_AFTER_HEAD = TRANSITIONS[(_IDLE, Trigger.HEAD)]
_AFTER_PEER_EOF = TRANSITIONS[(_IDLE, Trigger.PEER_EOF)]
_AFTER_END_KEEP_ALIVE = TRANSITIONS[(_BODY, Trigger.END_KEEP_ALIVE)]
_AFTER_END_CLOSE = TRANSITIONS[(_BODY, Trigger.END_CLOSE)]
_AFTER_NEXT_CYCLE = TRANSITIONS[(_DONE, Trigger.NEXT_CYCLE)]


class RequestParser:
    """Parse the request side of one HTTP/1.1 connection; see the module comment.

    Not thread-safe; one instance per connection, driven from the event loop.
    """

    __slots__ = (
        "_limits", "_buf", "_pos", "_eof", "_state", "_error",
        "_scanned", "_crlfs", "_lfs", "_crs", "_line_ok", "_skipped",
        "_keep_alive", "_chunked", "_left", "_seen", "_chunk_phase", "_budget",
    )

    def __init__(self, limits: ParserLimits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._eof = False
        self._state = ConnState.IDLE
        self._error: ProtocolError | None = None
        self._keep_alive = True
        self._chunked = False
        self._left = 0
        """Content-Length bytes still to read, or data bytes left in the current chunk."""
        self._seen = 0
        """Chunk data bytes of the current body so far (for max_body)."""
        self._chunk_phase = _SIZE
        self._budget = 0
        """Header bytes the trailers may still use (max_header_bytes minus the head)."""
        self._reset_head_scan()

    # --- public API ---------------------------------------------------------------------------

    @property
    def at_rest(self) -> bool:
        """Between requests with nothing buffered and the peer still there: next_event()
        would answer NEED_DATA. Lets the server skip asking after each response."""
        return self._state is _IDLE and self._pos == len(self._buf) and not self._eof

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed (the pipelining/backpressure signal)."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer; b"" means the peer closed its side (EOF).

        So never feed an empty chunk to mean "nothing yet" (asyncio never delivers one to
        `data_received`; `eof_received` is where b"" belongs). Cheap: no parsing happens here.

        Raises:
            RuntimeError: data after EOF (a caller bug: a closed socket delivers nothing).
        """
        if self._state is _ERROR:
            return
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("cannot feed: the peer already closed the connection (EOF fed)")
        buf = self._buf
        pos = self._pos
        if pos == len(buf):
            # Everything consumed: adopt the caller's object without copying (an immutable
            # copy if it handed us something mutable).
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = 0
        elif type(buf) is bytearray:
            if pos:
                del buf[:pos]
                self._pos = 0
            buf += data
        else:
            grown = bytearray(memoryview(buf)[pos:])
            grown += data
            self._buf = grown
            self._pos = 0

    def next_event(self) -> Event | Sentinel:
        """The next event, NEED_DATA (feed more) or PAUSED (call start_next_cycle()).

        Raises:
            ProtocolError: the input is not a request we accept; `status_hint` is the status to
                answer with before closing. The parser is dead afterwards: every later call
                raises the same error.
        """
        state = self._state
        try:
            if state is _BODY:
                if self._chunked:
                    return self._read_chunked()
                return self._read_sized()
            if state is _IDLE:
                return self._read_head()
            if state is _DONE or state is _MUST_CLOSE:
                return PAUSED
            if state is _CLOSED_STATE:
                return _CLOSED
        except ProtocolError as exc:
            self._error = exc
            self._state = transition(self._state, Trigger.ERROR)
            raise
        error = self._error
        assert error is not None, "ERROR state without an error"
        raise ProtocolError(error.message, error.status_hint, error.code)

    def start_next_cycle(self) -> None:
        """Let the next (possibly already buffered) request be parsed.

        Raises:
            RuntimeError: "cannot start next cycle: <reason>" unless the current request has
                been read to its EndOfMessage and allowed keep-alive.
        """
        if self._state is _DONE:  # the one legal move, without the table lookup
            self._state = _AFTER_NEXT_CYCLE
        else:
            self._state = transition(self._state, Trigger.NEXT_CYCLE)  # raises
        if self._scanned or self._skipped:
            self._reset_head_scan()

    def take_whole_body(self) -> bytes | None:
        """Fast path right after a RequestHead: the whole Content-Length body, if it is all
        buffered already (a small request in one read, the common case), consuming the body
        and its EndOfMessage in one call. None otherwise (chunked, or not all here yet): then
        read Body events as usual. Saves two next_event() calls and two event objects per
        request.
        """
        if self._state is not _AFTER_HEAD or self._chunked:
            return None
        left = self._left
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < left:
            return None
        self._pos = pos + left
        self._left = 0
        self._state = _AFTER_END_KEEP_ALIVE if self._keep_alive else _AFTER_END_CLOSE
        if type(buf) is bytes:
            return buf[pos:pos + left]
        return bytes(memoryview(buf)[pos:pos + left])

    # --- head ---------------------------------------------------------------------------------

    def _reset_head_scan(self) -> None:
        self._scanned = 0
        self._crlfs = 0
        self._lfs = 0
        self._crs = 0
        self._line_ok = False
        self._skipped = 0

    def _read_head(self) -> RequestHead | ConnectionClosed | Sentinel:
        buf = self._buf
        pos = self._pos
        if buf.startswith(b"\r\n", pos):
            pos = self._skip_empty_lines(buf, pos)
        if pos == len(buf):
            if self._eof:
                self._state = _AFTER_PEER_EOF
                return _CLOSED
            return NEED_DATA
        end = buf.find(b"\r\n\r\n", pos + self._scanned - 3 if self._scanned > 3 else pos)
        if end < 0:
            self._check_partial_head(buf, pos)
            if self._eof:
                raise _incomplete()
            return NEED_DATA
        size = end + 4 - pos
        limits = self._limits
        if size > limits.max_header_bytes:
            _check_request_line_length(buf, pos, limits)
            raise _headers_too_large(limits)
        head_bytes = buf[pos:end] if type(buf) is bytes else bytes(memoryview(buf)[pos:end])
        self._pos = end + 4
        cached = _HEADS.get(head_bytes)
        if cached is not None and cached[0] is limits:
            head = cached[1]
        else:
            head = parse_head(head_bytes, limits)
            if size <= _CACHED_HEAD_BYTES:
                if len(_HEADS) >= _CACHED_HEADS:
                    _HEADS.clear()
                _HEADS[head_bytes] = (limits, head)
        self._state = _AFTER_HEAD
        self._keep_alive = head.keep_alive
        if head.chunked:
            self._chunked = True
            self._chunk_phase = _SIZE
            self._seen = 0
            self._budget = limits.max_header_bytes - size
        else:
            self._chunked = False
            self._left = head.content_length or 0
        return head

    def _skip_empty_lines(self, buf: bytes | bytearray, pos: int) -> int:
        """RFC 9112 §2.2: ignore CRLFs before a request line, but not without bound."""
        start = pos
        allowed = self._limits.max_request_line - self._skipped
        while buf.startswith(b"\r\n", pos) and pos - start <= allowed:
            pos += 2
        self._skipped += pos - start
        if self._skipped > self._limits.max_request_line:
            raise ProtocolError(
                f"more than {self._limits.max_request_line} bytes of empty lines before the "
                "request line; send the request line right away",
                400,
                "bad_request_line",
            )
        self._pos = pos
        # What was scanned so far could only be the start of these line ends: scan afresh.
        skipped = self._skipped
        self._reset_head_scan()
        self._skipped = skipped
        return pos

    def _scan_partial(self, buf: bytes | bytearray, pos: int) -> int:
        """Count the line ends of an incomplete head or trailer section; reject bare CR/LF.

        Only the bytes after `_scanned` are looked at, so a head trickled in one byte per feed
        costs O(head) in total, not O(head^2). Returns 1 when the buffer ends in a CR that may
        still become a CRLF, else 0.
        """
        end = len(buf)
        start = pos + self._scanned
        self._crlfs += buf.count(b"\r\n", start - 1 if start > pos else pos, end)
        self._lfs += buf.count(b"\n", start, end)
        self._crs += buf.count(b"\r", start, end)
        self._scanned = end - pos
        trailing_cr = 1 if buf[end - 1] == 0x0D else 0
        if self._lfs != self._crlfs:
            raise _bare_line_end("LF")
        if self._crs != self._crlfs + trailing_cr:
            raise _bare_line_end("CR")
        return trailing_cr

    def _check_partial_head(self, buf: bytes | bytearray, pos: int) -> None:
        """Fail now, not at the header timeout, on a head that can no longer become valid."""
        limits = self._limits
        trailing_cr = self._scan_partial(buf, pos)
        avail = len(buf) - pos
        if not self._line_ok:
            if self._crlfs == 0:
                if avail - trailing_cr > limits.max_request_line:
                    raise _request_line_too_long(limits)
            else:
                _check_request_line_length(buf, pos, limits)
                self._line_ok = True
        if avail >= limits.max_header_bytes:
            raise _headers_too_large(limits)
        if self._crlfs - 1 > limits.max_headers:
            raise _too_many_headers(limits)

    # --- bodies -------------------------------------------------------------------------------

    def _take(self, n: int) -> bytes:
        """The next n buffered bytes as an immutable object, consumed."""
        buf = self._buf
        pos = self._pos
        self._pos = pos + n
        if type(buf) is bytes:
            return buf[pos:pos + n]  # the whole object itself when it is all of it
        return bytes(memoryview(buf)[pos:pos + n])

    def _end(self) -> EndOfMessage:
        self._state = _AFTER_END_KEEP_ALIVE if self._keep_alive else _AFTER_END_CLOSE
        return _END

    def _read_sized(self) -> Body | EndOfMessage | Sentinel:
        left = self._left
        if not left:
            self._state = _AFTER_END_KEEP_ALIVE if self._keep_alive else _AFTER_END_CLOSE
            return _END
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if not avail:
            if self._eof:
                raise _incomplete()
            return NEED_DATA
        n = avail if avail < left else left
        self._left = left - n
        self._pos = pos + n
        if type(buf) is bytes:
            return Body(buf[pos:pos + n])  # the whole object itself when it is all of it
        return Body(bytes(memoryview(buf)[pos:pos + n]))

    def _read_chunked(self) -> Body | EndOfMessage | Sentinel:
        """Decode as many chunks as are buffered into one Body (RFC 9112 §7.1).

        Partial chunk data is handed out as it arrives, so the leftover never holds more than
        a chunk-size line or the trailer section.
        """
        pieces: list[bytes] = []
        while True:
            phase = self._chunk_phase
            if phase is _DATA:
                avail = len(self._buf) - self._pos
                if not avail:
                    break
                left = self._left
                n = avail if avail < left else left
                pieces.append(self._take(n))
                self._left = left - n
                if n < left:
                    break
                self._chunk_phase = _DATA_END
            elif phase is _SIZE:
                if not self._read_chunk_size():
                    break
            elif phase is _DATA_END:
                buf = self._buf
                pos = self._pos
                if len(buf) - pos < 2:
                    if len(buf) - pos == 1 and buf[pos] != 0x0D:
                        raise _bad_chunk_end()
                    break
                if not buf.startswith(b"\r\n", pos):
                    raise _bad_chunk_end()
                self._pos = pos + 2
                self._chunk_phase = _SIZE
            else:  # _TRAILERS
                if pieces:
                    break
                if self._read_trailers():
                    return self._end()
                break
        if pieces:
            return Body(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if self._eof:
            raise _incomplete()
        return NEED_DATA

    def _read_chunk_size(self) -> bool:
        """Consume one chunk-size line; False when it is not complete yet."""
        buf = self._buf
        pos = self._pos
        limit = self._limits.max_chunk_line
        i = buf.find(b"\r\n", pos, pos + limit + 2)
        if i < 0:
            if buf.find(b"\n", pos, pos + limit + 2) >= 0:
                raise _bare_line_end("LF")
            if len(buf) - pos - (1 if buf.endswith(b"\r") else 0) > limit:
                raise ProtocolError(
                    f"a chunk-size line is longer than {limit} bytes; send the chunk size in "
                    "hex followed by CRLF, without long chunk extensions",
                    400,
                    "bad_chunk",
                )
            return False
        line = bytes(buf[pos:i])
        size_text = line.split(b";", 1)[0].rstrip(b" \t")
        controls = line.translate(None, _NOT_CTL)
        if b"\n" in controls or b"\r" in controls:
            raise _bare_line_end("LF" if b"\n" in controls else "CR")
        if controls or not size_text or size_text.translate(None, _HEXDIG):
            shown = line[:40].decode("latin-1")
            raise ProtocolError(
                f"invalid chunk-size line {shown!r}; each chunk must start with its size in "
                "hex, optionally followed by ';extensions', and CRLF",
                400,
                "bad_chunk",
            )
        digits = size_text.lstrip(b"0") or b"0"  # (leading zeros are valid: 1*HEXDIG)
        max_body = self._limits.max_body
        if len(digits) > _MAX_CHUNK_SIZE_DIGITS:
            raise ProtocolError(
                f"a chunk of 0x{digits[:20].decode()}... bytes exceeds the body limit of "
                f"{max_body} bytes; send smaller batches", 413, "body_too_large")
        size = int(digits, 16)
        self._pos = i + 2
        if size == 0:
            self._chunk_phase = _TRAILERS
            self._reset_head_scan()
            return True
        if self._seen + size > max_body:
            raise ProtocolError(
                f"the chunked request body exceeds {max_body} bytes; send smaller batches",
                413,
                "body_too_large",
            )
        self._seen += size
        self._left = size
        self._chunk_phase = _DATA
        return True

    def _read_trailers(self) -> bool:
        """Consume the trailer section (validated, then discarded); False if incomplete."""
        buf = self._buf
        pos = self._pos
        if buf.startswith(b"\r\n", pos):
            self._pos = pos + 2
            return True
        avail = len(buf) - pos
        if not avail or (avail == 1 and buf[pos] == 0x0D):
            return False  # may still be the empty trailer section
        end = buf.find(b"\r\n\r\n", pos + self._scanned - 3 if self._scanned > 3 else pos)
        budget = self._budget
        if end < 0:
            self._scan_partial(buf, pos)
            if avail >= budget:
                raise _trailers_too_large(self._limits)
            return False
        if end + 4 - pos > budget:
            raise _trailers_too_large(self._limits)
        block = bytes(buf[pos:end])
        lines = block.split(b"\r\n")
        if block.translate(None, _NOT_CTL) != b"\r\n" * (len(lines) - 1):
            _reject_control_bytes(lines, "trailer")
        for line in lines:
            _check_field_line(line, "trailer")
        self._pos = end + 4
        return True


# --- the head, as a pure function -------------------------------------------------------------


def parse_head(head: bytes, limits: ParserLimits = DEFAULT_LIMITS) -> RequestHead:
    """Validate and decode one request head (without its final CRLFCRLF).

    Pure: the parser calls it once per request with the whole head in hand, which is what
    lets it work on whole lines with C-level bytes methods. The caller has already enforced
    `limits.max_header_bytes` (it had to, to know when to stop waiting for the head).

    Raises:
        ProtocolError: with the status for the first problem found (400, 414, 431, 413, 501,
            505).
    """
    lines = head.split(b"\r\n")
    n_fields = len(lines) - 1
    request_line = lines[0]
    known = _REQUEST_LINES.get(request_line)
    # Field lines repeat from request to request (Host, User-Agent, Content-Type, and the
    # Content-Length of bodies of the same size), so each line already seen is one dict hit.
    found: list[tuple[bytes, bytes] | None] = list(map(_FIELD_LINES.get, lines))
    del found[0]  # the request line's slot
    missed = known is None or None in found
    # Control bytes: a line found in a cache was checked when it was first seen, and the
    # split on CRLF leaves no CR or LF in any line equal to it, so only a head with a new line
    # needs the scan (a translate costs more than all the dict hits together).
    if missed and head.translate(None, _NOT_CTL) != b"\r\n" * n_fields:
        _reject_control_bytes(lines, "header")
    if len(request_line) > limits.max_request_line:
        raise _request_line_too_long(limits)
    if n_fields > limits.max_headers:
        raise _too_many_headers(limits)
    if known is None:
        known = _parse_request_line(request_line)
    method, target, version = known
    if missed:
        for i, field in enumerate(found):
            if field is None:
                found[i] = _parse_field_line(lines[i + 1])
    headers: list[tuple[bytes, bytes]] = found  # type: ignore[assignment]  # None-free now

    fields = dict(headers)
    if len(fields) == len(headers):
        cl = fields.get(b"content-length")
        te = fields.get(b"transfer-encoding")
        conn = fields.get(b"connection")
        if b"host" not in fields and version == "1.1":
            raise _bad_host(0)
        if te is None and cl is not None and cl.isdigit() and len(cl) <= _MAX_CL_DIGITS:
            # The common framing, decided here; everything else goes to body_framing.
            content_length: int | None = int(cl)
            chunked = False
            if content_length > limits.max_body:  # type: ignore[operator]
                body_framing(version, (cl,), (), limits.max_body)  # raises its 413
        else:
            content_length, chunked = body_framing(
                version, () if cl is None else (cl,), () if te is None else (te,),
                limits.max_body)
        expect = fields.get(b"expect")
        return _new_head(RequestHead, (
            method,
            target,
            version,
            tuple(headers),
            keep_alive(version, (conn,)) if conn is not None else version == "1.1",
            expect is not None and version == "1.1" and expect.lower() == b"100-continue",
            content_length,
            chunked,
            MappingProxyType(fields),  # (every name once: each value is its first)
        ))
    return _parse_repeated_fields(method, target, version, tuple(headers), fields, limits)


def _parse_repeated_fields(
    method: str, target: str, version: str, headers: tuple[tuple[bytes, bytes], ...],
    fields: dict[bytes, bytes], limits: ParserLimits,
) -> RequestHead:
    """parse_head's end for a head in which some field name occurs more than once."""
    content_lengths = [v for k, v in headers if k == b"content-length"]
    transfer_encodings = [v for k, v in headers if k == b"transfer-encoding"]
    connection = [v for k, v in headers if k == b"connection"]
    hosts = sum(1 for k, _ in headers if k == b"host")
    if hosts != 1 and (hosts or version == "1.1"):
        raise _bad_host(hosts)
    content_length, chunked = body_framing(
        version, content_lengths, transfer_encodings, limits.max_body
    )
    expect = fields.get(b"expect")
    return _new_head(RequestHead, (
        method,
        target,
        version,
        headers,
        keep_alive(version, connection) if connection else version == "1.1",
        expect is not None and version == "1.1" and expect.lower() == b"100-continue",
        content_length,
        chunked,
        MappingProxyType(dict(reversed(headers))),  # (each name's first value: the last
        # assignment wins)
    ))


_CACHED_LINE_BYTES = 256
"""Longer lines are parsed every time (they are rarely repeated: cookies, tokens)."""
_CACHED_LINES = 1024
"""Each cache is emptied when it reaches this many lines: bounded memory whatever comes in."""
_CACHED_HEAD_BYTES = 1024
"""Longer heads are parsed every time."""
_CACHED_HEADS = 256
"""The head cache is emptied when it reaches this many heads. A head of 1 KiB split into a
hundred short fields keeps ~11 KB of objects alive, so the cache holds at most ~3 MB."""
_REQUEST_LINES: dict[bytes, tuple[str, str, str]] = {}
_HEADS: dict[bytes, tuple[ParserLimits, RequestHead]] = {}
"""Whole heads already parsed, with the limits they were parsed under. parse_head is a pure
function of the two, and a client on a keep-alive connection sends the same head again and
again, changed at most in its Content-Length: a head seen before is one dict hit instead of
parse_head (about 17k instructions, 15% of a single-event request). Only heads that parsed
are kept; RequestHead is an immutable tuple, so one object can serve every request."""
_FIELD_LINES: dict[bytes, tuple[bytes, bytes]] = {}


def _parse_request_line(request_line: bytes) -> tuple[str, str, str]:
    """(method, target, version) of a request line free of control bytes, or a ProtocolError;
    remembered in _REQUEST_LINES when short (a pure function of the line)."""
    parts = request_line.split(b" ")
    if len(parts) != 3:
        raise _bad_request_line(request_line)
    raw_method, raw_target, raw_version = parts
    method = _METHODS.get(raw_method) or _parse_method(raw_method)
    version = _VERSIONS.get(raw_version) or _other_version(raw_version)
    if raw_target[:1] == b"/" and raw_target.isascii() and b"\t" not in raw_target:
        target = raw_target.decode("latin-1")
    else:
        target = _parse_other_target(raw_target, method)
    if "#" in target:
        # RFC 9112 §3.2: no fragment in a request target (a client strips it); "/healthz#f"
        # was answered 404, and an absolute form kept the fragment in its query.
        raise ProtocolError(
            f"the request target {target[:60]!r} holds a fragment ('#...'); send the path and "
            "query only (percent-encode a '#' that is data as %23)", 400, "bad_target")
    known = (method, target, version)
    if len(request_line) <= _CACHED_LINE_BYTES:
        if len(_REQUEST_LINES) >= _CACHED_LINES:
            _REQUEST_LINES.clear()
        _REQUEST_LINES[request_line] = known
    return known


def _parse_field_line(line: bytes) -> tuple[bytes, bytes]:
    """(lowercase name, value without surrounding whitespace) of a field line free of control
    bytes, or a ProtocolError; remembered in _FIELD_LINES when short."""
    name, colon, value = line.partition(b":")
    if not colon or not name or name.translate(None, _TCHAR):
        _check_field_line(line, "header")
        raise AssertionError("unreachable: a bad field line fails _check_field_line")
    field = (name.lower(), value.strip(b" \t"))
    if field[0] == b"host" and _HOST.fullmatch(field[1]) is None:
        # RFC 9112 §3.2: a Host that is not a valid host[:port] gets a 400 (checked once per
        # distinct line: valid ones are remembered below).
        shown = field[1][:60].decode("latin-1")
        raise ProtocolError(f"invalid Host header {shown!r}; send 'Host: name[:port]'", 400,
                            "bad_host")
    if len(line) <= _CACHED_LINE_BYTES:
        if len(_FIELD_LINES) >= _CACHED_LINES:
            _FIELD_LINES.clear()
        _FIELD_LINES[line] = field
    return field


def _parse_method(raw: bytes) -> str:
    if not raw or raw.translate(None, _TCHAR):
        shown = raw[:40].decode("latin-1")
        raise ProtocolError(
            f"invalid request method {shown!r}; the request line must be "
            "'METHOD /path HTTP/1.1' with a method such as GET or POST",
            400,
            "bad_request_line",
        )
    return raw.decode("ascii")


def _other_version(raw: bytes) -> str:
    """The version of a request line that is not HTTP/1.1 or 1.0: "1.1" for a later 1.x (RFC
    9110 §2.5: process it as the highest minor version implemented); otherwise a 505 for a
    well-formed version we do not speak, a 400 for anything else."""
    shown = raw[:40].decode("latin-1")
    rest = raw[5:] if raw.startswith(b"HTTP/") else b""
    major, dot, minor = rest.partition(b".")
    if major == b"1" and dot and minor.isdigit() and len(minor) == 1 and minor > b"1":
        return "1.1"
    if major.isdigit() and len(major) == 1 and (not dot or (minor.isdigit() and len(minor) == 1)):
        raise ProtocolError(
            f"{shown} is not supported; this server speaks HTTP/1.1 and HTTP/1.0",
            505,
            "http_version_not_supported",
        )
    raise ProtocolError(
        f"invalid HTTP version {shown!r}; the request line must end with 'HTTP/1.1'",
        400,
        "bad_request_line",
    )


def _parse_other_target(raw: bytes, method: str) -> str:
    """Everything but a plain origin-form target: "*", absolute-form, or garbage."""
    if raw.isascii() and b"\t" not in raw:
        if raw == b"*":
            if method == "OPTIONS":
                return "*"
            raise ProtocolError(
                f"the request target '*' is only allowed with OPTIONS, not {method}; "
                "send a path starting with '/'",
                400,
                "bad_target",
            )
        lowered = raw[:8].lower()
        scheme_len = 7 if lowered.startswith(b"http://") else 8 if lowered == b"https://" else 0
        if scheme_len:
            # absolute-form (RFC 9112 §3.2.2): keep path and query, drop scheme and authority
            rest = raw[scheme_len:]
            slash = rest.find(b"/")
            query = rest.find(b"?")
            cut = min(i for i in (slash, query, len(rest)) if i >= 0)
            if cut > 0:
                path = rest[cut:]
                return ("/" if not path.startswith(b"/") else "") + path.decode("latin-1")
    shown = raw[:60].decode("latin-1")
    raise ProtocolError(
        f"invalid request target {shown!r}; send a path starting with '/' (percent-encode "
        "spaces and non-ASCII bytes), or an absolute http:// URL",
        400,
        "bad_target",
    )


def _check_field_line(line: bytes, what: str) -> None:
    """Raise the precise 400 for a malformed field line (the error path of parse_head)."""
    if line[:1] in (b" ", b"\t"):
        raise ProtocolError(
            f"{what} line {_show(line)} starts with whitespace (obsolete line folding, RFC 9112 "
            f"§5.2); put each {what} on one line",
            400,
            "bad_header",
        )
    name, colon, _ = line.partition(b":")
    if not colon:
        raise ProtocolError(
            f"{what} line {_show(line)} has no ':'; send 'Name: value'",
            400,
            "bad_header",
        )
    if not name:
        raise ProtocolError(
            f"{what} line {_show(line)} has an empty field name; send 'Name: value'",
            400,
            "bad_header",
        )
    if name[-1:] in (b" ", b"\t"):
        raise ProtocolError(
            f"{what} {_show(name.rstrip())} has whitespace before its ':' (forbidden by RFC "
            "9112 §5.1); remove it",
            400,
            "bad_header",
        )
    if name.translate(None, _TCHAR):
        raise ProtocolError(
            f"{what} name {_show(name)} contains characters not allowed in a field name; use "
            "letters, digits and !#$%&'*+-.^_`|~",
            400,
            "bad_header",
        )


def _reject_control_bytes(lines: list[bytes], what: str) -> None:
    """Raise the precise 400 for a head whose lines hold a CR, LF or other control byte."""
    for index, line in enumerate(lines):
        bad = line.translate(None, _NOT_CTL)
        if not bad:
            continue
        if b"\n" in bad:
            raise _bare_line_end("LF")
        if b"\r" in bad:
            raise _bare_line_end("CR")
        place = "request line" if index == 0 and what == "header" else f"{what} line"
        raise ProtocolError(
            f"the {place} {_show(line)} contains control byte 0x{bad[0]:02x}; field values "
            "must be visible text, spaces and tabs (percent-encode anything else)",
            400,
            "bad_header" if place != "request line" else "bad_request_line",
        )
    raise AssertionError("unreachable: a head that fails the control-byte check has one")


def _check_request_line_length(buf: bytes | bytearray, pos: int, limits: ParserLimits) -> None:
    i = buf.find(b"\r\n", pos)
    if i - pos > limits.max_request_line:
        raise _request_line_too_long(limits)


def _show(raw: bytes) -> str:
    return repr(raw[:40].decode("latin-1")) + ("..." if len(raw) > 40 else "")


def _incomplete() -> ProtocolError:
    return ProtocolError(
        "the connection was closed in the middle of a request; send the whole request "
        "(check Content-Length against the body actually sent)",
        400,
        "incomplete_request",
    )


def _bare_line_end(kind: str) -> ProtocolError:
    return ProtocolError(
        f"the request has a bare {kind} line ending; end every line of the request head, chunk "
        "sizes and trailers with CRLF (\\r\\n)",
        400,
        "bad_line_ending",
    )


def _bad_request_line(line: bytes) -> ProtocolError:
    return ProtocolError(
        f"malformed request line {_show(line)}; send 'METHOD /path HTTP/1.1' with single "
        "spaces",
        400,
        "bad_request_line",
    )


def _request_line_too_long(limits: ParserLimits) -> ProtocolError:
    return ProtocolError(
        f"the request line is longer than {limits.max_request_line} bytes; send long data in "
        "the request body instead of the URL",
        414,
        "uri_too_long",
    )


def _headers_too_large(limits: ParserLimits) -> ProtocolError:
    return ProtocolError(
        f"the request head is larger than {limits.max_header_bytes} bytes; send fewer or "
        "shorter headers (large cookies?)",
        431,
        "headers_too_large",
    )


def _too_many_headers(limits: ParserLimits) -> ProtocolError:
    return ProtocolError(
        f"the request has more than {limits.max_headers} header fields; send fewer headers",
        431,
        "headers_too_large",
    )


def _trailers_too_large(limits: ParserLimits) -> ProtocolError:
    return ProtocolError(
        f"the request head and chunked trailers together exceed {limits.max_header_bytes} "
        "bytes; send fewer or shorter trailers",
        431,
        "headers_too_large",
    )


_HOST = re.compile(rb"(?:\[[0-9A-Za-z:.\-_~!$&'()*+,;=%]+\]|[0-9A-Za-z\-._~!$&'()*+,;=%]*)"
                   rb"(?::[0-9]*)?")
"""RFC 3986 host (IP-literal, with an RFC 6874 zone id, IPv4address or reg-name) and an
optional port."""


def _bad_host(count: int) -> ProtocolError:
    if count == 0:
        return ProtocolError(
            "HTTP/1.1 requests must have a Host header; add 'Host: <server name>'",
            400,
            "missing_host",
        )
    return ProtocolError(
        f"the request has {count} Host headers; send exactly one",
        400,
        "duplicate_host",
    )


def _bad_chunk_end() -> ProtocolError:
    return ProtocolError(
        "chunk data is not followed by CRLF; the chunk size must equal the number of data "
        "bytes that follow it",
        400,
        "bad_chunk",
    )
