"""Connection state of the request side, and the pure decisions that drive it.

Theory of operation
-------------------
A connection reads requests one after another. `RequestParser` owns the state below and moves
it only through `transition()`, so every legal move is listed in one table (`TRANSITIONS`) and
every illegal one fails loudly with "cannot <op>: <reason>" instead of corrupting the stream:

    IDLE --head--> BODY --end (keep-alive)--> DONE --next cycle--> IDLE
                        \\--end (close)-----> MUST_CLOSE
    IDLE --peer EOF with nothing pending--> CLOSED
    any  --protocol error--> ERROR

- IDLE: waiting for (the rest of) a request head. Leading empty lines are skipped here.
- BODY: the head was returned; the body is being read (a bodiless request passes straight
  through to the end).
- DONE: EndOfMessage was returned; the parser answers PAUSED until the server has written
  the response and calls `start_next_cycle()`. This is what keeps pipelined responses in order:
  the next request is not even parsed before the previous one is answered.
- MUST_CLOSE: like DONE, but the request did not allow keep-alive, so there is no next cycle;
  the server closes after its response.
- CLOSED: the peer sent EOF between requests (ConnectionClosed was returned). Terminal.
- ERROR: a ProtocolError was raised; the byte stream can no longer be trusted. Terminal.

Invariants: CLOSED and ERROR have no way out. Only DONE leads back to IDLE, so a request is
never parsed while the previous one is unanswered.

The framing and keep-alive rules are pure functions here (no parser state), each citing the
RFC section it implements, so they can be tested and read on their own.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from collector.errors import ProtocolError


class ConnState(enum.Enum):
    # Enum's __hash__ is Python code and the table below is looked up on every request; members
    # are singletons compared by identity, so the identity hash is equivalent and C-fast.
    __hash__ = object.__hash__

    IDLE = "IDLE"
    BODY = "BODY"
    DONE = "DONE"
    MUST_CLOSE = "MUST_CLOSE"
    CLOSED = "CLOSED"
    ERROR = "ERROR"


class Trigger(enum.Enum):
    """What happened; the value is the operation named in "cannot <op>: <reason>"."""

    __hash__ = object.__hash__  # see ConnState

    HEAD = "read a request head"
    END_KEEP_ALIVE = "end a keep-alive request"
    END_CLOSE = "end a closing request"
    NEXT_CYCLE = "start next cycle"
    PEER_EOF = "close between requests"
    ERROR = "fail"


_TABLE: dict[tuple[ConnState, Trigger], ConnState] = {
    (ConnState.IDLE, Trigger.HEAD): ConnState.BODY,
    (ConnState.IDLE, Trigger.PEER_EOF): ConnState.CLOSED,
    (ConnState.BODY, Trigger.END_KEEP_ALIVE): ConnState.DONE,
    (ConnState.BODY, Trigger.END_CLOSE): ConnState.MUST_CLOSE,
    (ConnState.DONE, Trigger.NEXT_CYCLE): ConnState.IDLE,
    **{(state, Trigger.ERROR): ConnState.ERROR for state in ConnState},
}
TRANSITIONS: Mapping[tuple[ConnState, Trigger], ConnState] = MappingProxyType(_TABLE)
"""Every legal (state, trigger) -> next state; anything absent is a caller bug."""

_WHY_NOT: Mapping[ConnState, str] = MappingProxyType(
    {
        ConnState.IDLE: "no request is complete yet (the parser is waiting for a request head)",
        ConnState.BODY: "the current request has not been read to its end "
        "(next_event() has not returned EndOfMessage)",
        ConnState.DONE: "the current request is complete and waits for start_next_cycle()",
        ConnState.MUST_CLOSE: "the last request did not allow keep-alive "
        "(Connection: close or HTTP/1.0); close the connection after the response",
        ConnState.CLOSED: "the peer closed the connection",
        ConnState.ERROR: "the parser is dead after a protocol error; close the connection",
    }
)


def transition(state: ConnState, trigger: Trigger) -> ConnState:
    """The state after `trigger` in `state`.

    Raises:
        RuntimeError: "cannot <op>: <reason>" when the table has no such move; this is a bug in
            the caller (e.g. the server starting a new cycle before the body was read).
    """
    try:
        return _TABLE[(state, trigger)]
    except KeyError:
        raise RuntimeError(f"cannot {trigger.value}: {_WHY_NOT[state]}") from None


# RFC 9112 §9.3: HTTP/1.1 connections persist unless "close" is among the Connection options;
# HTTP/1.0 ones persist only when the client sent "keep-alive" (and not "close"). Connection
# options are case-insensitive tokens in a comma list that may span several header lines, so
# the caller passes every Connection value in order.
def keep_alive(version: str, connection: Sequence[bytes]) -> bool:
    if not connection:
        return version == "1.1"
    options = {opt.strip(b" \t").lower() for value in connection for opt in value.split(b",")}
    if b"close" in options:
        return False
    return version == "1.1" or b"keep-alive" in options


_MAX_CL_DIGITS = 18
"""A Content-Length of more digits is far beyond any body limit; it is rejected as malformed
(400) rather than converted (int() of a huge digit string is quadratic)."""


# RFC 9112 §6.3 and §6.1, with the request-smuggling rules made strict:
# - Transfer-Encoding and Content-Length together is rejected (400), not resolved in favour of
#   chunked as §6.3 allows: a front proxy that picked the other one would see a different
#   request boundary than we do.
# - Transfer-Encoding in HTTP/1.0 is rejected (400): 1.0 has no chunked coding (§6.1).
# - The only coding we decode is exactly "chunked" (any case). Other codings are 501; a list in
#   which "chunked" is not the single final coding is malformed (§6.1), so 400.
# - Content-Length: 1*DIGIT (no sign, no spaces inside). Duplicate headers or a comma list are
#   folded only when every element is byte-identical (RFC 9110 §8.6), else 400.
# - Neither header: a request has no body (§6.3 rule 7); the caller may still answer 411.
def body_framing(
    version: str,
    content_lengths: Sequence[bytes],
    transfer_encodings: Sequence[bytes],
    max_body: int,
) -> tuple[int | None, bool]:
    """Decide how the request body is delimited.

    Args:
        version: "1.1" or "1.0".
        content_lengths: every Content-Length value, in order (usually zero or one).
        transfer_encodings: every Transfer-Encoding value, in order.
        max_body: the largest body accepted, in bytes on the wire.

    Returns:
        (content_length, chunked): (n, False) for a Content-Length body, (None, True) for
        chunked, (None, False) for no body.

    Raises:
        ProtocolError: 400 for conflicting or malformed framing, 413 for a declared length over
            `max_body`, 501 for a transfer coding other than chunked.
    """
    if transfer_encodings:
        _check_chunked(version, content_lengths, transfer_encodings)
        return None, True
    if not content_lengths:
        return None, False
    if len(content_lengths) == 1 and content_lengths[0].isdigit():
        text = content_lengths[0]
    else:
        text = _fold_content_lengths(content_lengths)
    if len(text) > _MAX_CL_DIGITS:
        raise ProtocolError(
            f"Content-Length has {len(text)} digits; it must be a byte count of at most "
            f"{_MAX_CL_DIGITS} digits",
            400,
            "invalid_content_length",
        )
    length = int(text)
    if length > max_body:
        raise ProtocolError(
            f"the request body is {length} bytes but at most {max_body} are accepted; "
            "send smaller batches",
            413,
            "body_too_large",
        )
    return length, False


def _check_chunked(
    version: str, content_lengths: Sequence[bytes], transfer_encodings: Sequence[bytes]
) -> None:
    if content_lengths:
        raise ProtocolError(
            "the request has both Content-Length and Transfer-Encoding, which makes its length "
            "ambiguous; send only one of them",
            400,
            "conflicting_framing",
        )
    if version != "1.1":
        raise ProtocolError(
            "Transfer-Encoding is not defined in HTTP/1.0; send a Content-Length instead",
            400,
            "bad_transfer_encoding",
        )
    codings = [
        c.strip(b" \t").lower() for value in transfer_encodings for c in value.split(b",")
    ]
    if codings == [b"chunked"]:
        return
    uses = codings.count(b"chunked")
    if b"" in codings or uses > 1 or (uses and codings[-1] != b"chunked"):
        raise ProtocolError(
            "Transfer-Encoding must list 'chunked' exactly once, as its last coding; "
            "send 'Transfer-Encoding: chunked'",
            400,
            "bad_transfer_encoding",
        )
    shown = b", ".join(codings).decode("latin-1")
    raise ProtocolError(
        f"Transfer-Encoding '{shown}' is not supported; send the body with "
        "'Transfer-Encoding: chunked' or a Content-Length (use Content-Encoding: gzip "
        "to compress)",
        501,
        "not_implemented",
    )


def _fold_content_lengths(values: Sequence[bytes]) -> bytes:
    """The single decimal that every Content-Length element spells, or a 400."""
    elements = {e.strip(b" \t") for value in values for e in value.split(b",")}
    if len(elements) != 1:
        shown = b", ".join(sorted(elements)).decode("latin-1")
        raise ProtocolError(
            f"the request has several different Content-Length values ({shown}); "
            "send exactly one",
            400,
            "invalid_content_length",
        )
    (text,) = elements
    if not text.isdigit():
        shown = text.decode("latin-1")
        raise ProtocolError(
            f"Content-Length '{shown}' is not a byte count; send a non-negative decimal integer",
            400,
            "invalid_content_length",
        )
    return text
