"""Time as an injected dependency.

Everything that needs "now" (IDs, receive times, segment roll decisions, stats buckets) takes a
`Clock`, so tests can control time with a fake clock instead of sleeping.
"""

from __future__ import annotations

import time
from time import monotonic as _monotonic
from time import time as _time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock UNIX time in seconds (may step backwards when NTP corrects it)."""
        ...

    def wall_ms(self) -> int:
        """Wall-clock UNIX time in whole milliseconds."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards (for ages and timeouts)."""
        ...


class SystemClock:
    """The real clock.

    `time` and `monotonic` are the C functions themselves, not methods calling them: every
    request reads the clock, and a method costs a Python frame each time.
    """

    __slots__ = ()

    time = staticmethod(_time)
    monotonic = staticmethod(_monotonic)

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000
