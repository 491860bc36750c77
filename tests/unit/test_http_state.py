"""The request-side connection state table and the pure framing/keep-alive decisions."""

from __future__ import annotations

import pytest

from collector.errors import ProtocolError
from collector.http.state import (
    TRANSITIONS,
    ConnState,
    Trigger,
    body_framing,
    keep_alive,
    transition,
)

# --- transition table --------------------------------------------------------------------------

LEGAL = [
    (ConnState.IDLE, Trigger.HEAD, ConnState.BODY),
    (ConnState.IDLE, Trigger.PEER_EOF, ConnState.CLOSED),
    (ConnState.BODY, Trigger.END_KEEP_ALIVE, ConnState.DONE),
    (ConnState.BODY, Trigger.END_CLOSE, ConnState.MUST_CLOSE),
    (ConnState.DONE, Trigger.NEXT_CYCLE, ConnState.IDLE),
]


@pytest.mark.parametrize(("state", "trigger", "after"), LEGAL)
def test_legal_moves(state: ConnState, trigger: Trigger, after: ConnState) -> None:
    assert transition(state, trigger) is after


@pytest.mark.parametrize("state", list(ConnState))
def test_error_is_reachable_from_every_state(state: ConnState) -> None:
    assert transition(state, Trigger.ERROR) is ConnState.ERROR


def test_table_holds_exactly_the_documented_moves() -> None:
    expected = {(s, t): a for s, t, a in LEGAL}
    expected.update({(s, Trigger.ERROR): ConnState.ERROR for s in ConnState})
    assert dict(TRANSITIONS) == expected


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (ConnState.IDLE, "waiting for a request head"),
        (ConnState.BODY, "has not been read to its end"),
        (ConnState.MUST_CLOSE, "did not allow keep-alive"),
        (ConnState.CLOSED, "peer closed"),
        (ConnState.ERROR, "protocol error"),
    ],
)
def test_illegal_next_cycle_says_why(state: ConnState, reason: str) -> None:
    with pytest.raises(RuntimeError, match="^cannot start next cycle: .*" + reason):
        transition(state, Trigger.NEXT_CYCLE)


@pytest.mark.parametrize("state", [ConnState.CLOSED, ConnState.ERROR])
@pytest.mark.parametrize("trigger", [t for t in Trigger if t is not Trigger.ERROR])
def test_terminal_states_have_no_way_out(state: ConnState, trigger: Trigger) -> None:
    with pytest.raises(RuntimeError, match="^cannot "):
        transition(state, trigger)


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[(ConnState.DONE, Trigger.HEAD)] = ConnState.IDLE  # type: ignore[index]


# --- keep-alive (RFC 9112 §9.3) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "connection", "expected"),
    [
        ("1.1", [], True),
        ("1.1", [b"keep-alive"], True),
        ("1.1", [b"close"], False),
        ("1.1", [b"Close"], False),
        ("1.1", [b"upgrade, close"], False),
        ("1.1", [b"keep-alive", b" CLOSE "], False),
        ("1.1", [b"te"], True),
        ("1.0", [], False),
        ("1.0", [b"keep-alive"], True),
        ("1.0", [b"Keep-Alive"], True),
        ("1.0", [b"foo,keep-alive"], True),
        ("1.0", [b"keep-alive, close"], False),
        ("1.0", [b"upgrade"], False),
    ],
)
def test_keep_alive(version: str, connection: list[bytes], expected: bool) -> None:
    assert keep_alive(version, connection) is expected


# --- body framing (RFC 9112 §6.3) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "cl", "te", "expected"),
    [
        ("1.1", [], [], (None, False)),
        ("1.0", [], [], (None, False)),
        ("1.1", [b"0"], [], (0, False)),
        ("1.1", [b"42"], [], (42, False)),
        ("1.1", [b"007"], [], (7, False)),
        ("1.1", [b"5, 5"], [], (5, False)),
        ("1.1", [b"5", b"5"], [], (5, False)),
        ("1.1", [b"5,5", b" 5 "], [], (5, False)),
        ("1.1", [], [b"chunked"], (None, True)),
        ("1.1", [], [b"CHUNKED"], (None, True)),
        ("1.1", [], [b" chunked "], (None, True)),
        ("1.1", [b"1000"], [], (1000, False)),
    ],
)
def test_framing_accepted(
    version: str, cl: list[bytes], te: list[bytes], expected: tuple[int | None, bool]
) -> None:
    assert body_framing(version, cl, te, 1000) == expected


@pytest.mark.parametrize(
    ("version", "cl", "te", "status", "code"),
    [
        ("1.1", [b"5"], [b"chunked"], 400, "conflicting_framing"),
        ("1.1", [b"5", b"6"], [], 400, "invalid_content_length"),
        ("1.1", [b"5, 6"], [], 400, "invalid_content_length"),
        ("1.1", [b"5", b"05"], [], 400, "invalid_content_length"),
        ("1.1", [b"abc"], [], 400, "invalid_content_length"),
        ("1.1", [b"-1"], [], 400, "invalid_content_length"),
        ("1.1", [b"+5"], [], 400, "invalid_content_length"),
        ("1.1", [b"0x10"], [], 400, "invalid_content_length"),
        ("1.1", [b"1 0"], [], 400, "invalid_content_length"),
        ("1.1", [b""], [], 400, "invalid_content_length"),
        ("1.1", [b"5,"], [], 400, "invalid_content_length"),
        ("1.1", [b"1" * 19], [], 400, "invalid_content_length"),
        ("1.1", [b"1001"], [], 413, "body_too_large"),
        ("1.1", [b"1" * 18], [], 413, "body_too_large"),
        ("1.0", [], [b"chunked"], 400, "bad_transfer_encoding"),
        ("1.1", [], [b"gzip"], 501, "not_implemented"),
        ("1.1", [], [b"gzip, chunked"], 501, "not_implemented"),
        ("1.1", [], [b"identity"], 501, "not_implemented"),
        ("1.1", [], [b"chunked, gzip"], 400, "bad_transfer_encoding"),
        ("1.1", [], [b"chunked", b"chunked"], 400, "bad_transfer_encoding"),
        ("1.1", [], [b""], 400, "bad_transfer_encoding"),
        ("1.1", [], [b"chunked,"], 400, "bad_transfer_encoding"),
    ],
)
def test_framing_rejected(
    version: str, cl: list[bytes], te: list[bytes], status: int, code: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        body_framing(version, cl, te, 1000)
    assert (info.value.status_hint, info.value.code) == (status, code)
    assert info.value.message
