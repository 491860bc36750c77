"""Test doubles shared by the whole suite.

`FakeClock` satisfies `collector.clock.Clock`. Time only moves when a test moves it, so a test
of a timeout or a roll decision runs instantly and deterministically.
"""

from __future__ import annotations

from decimal import Decimal

DEFAULT_START = 1_700_000_000.0
"""2023-11-14T22:13:20Z: after the Snowflake epoch, with no sub-second part to surprise anyone."""


class FakeClock:
    """A wall clock and a monotonic clock that move only on request.

    Wall time is kept in integer nanoseconds so that `wall_ms()` after `advance(0.001)` a
    thousand times is exact, not off by one from float rounding.

    * `advance(seconds)` moves both clocks forward, like real time passing.
    * `set(seconds)` jumps the wall clock to an absolute UNIX time, forwards or backwards, and
      leaves the monotonic clock alone, like an NTP step or an operator changing the date.
    """

    __slots__ = ("_wall_ns", "_mono_ns")

    def __init__(self, start: float = DEFAULT_START, monotonic_start: float = 1000.0) -> None:
        self._wall_ns = _to_ns(start)
        self._mono_ns = _to_ns(monotonic_start)

    def time(self) -> float:
        return self._wall_ns / 1_000_000_000

    def wall_ms(self) -> int:
        return self._wall_ns // 1_000_000

    def monotonic(self) -> float:
        return self._mono_ns / 1_000_000_000

    def advance(self, seconds: float) -> None:
        """Let `seconds` (>= 0) pass on both clocks; use `set` to move the wall clock back."""
        if seconds < 0:
            raise ValueError("cannot advance a clock by a negative amount; use set() to step back")
        ns = _to_ns(seconds)
        self._wall_ns += ns
        self._mono_ns += ns

    def set(self, seconds: float) -> None:
        """Step the wall clock to UNIX time `seconds`; the monotonic clock does not move."""
        self._wall_ns = _to_ns(seconds)


def _to_ns(seconds: float) -> int:
    # Through the shortest decimal repr: 1700000000.123 * 1e9 as a float is ...122999808 ns,
    # which would make wall_ms() read one millisecond early.
    return int(Decimal(repr(seconds)) * 1_000_000_000)
