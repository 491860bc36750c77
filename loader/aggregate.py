"""Daily aggregation and the rollups derived from it (pure functions, no store access).

`daily_stats` holds one total per (UTC day, event type). The stores keep it current inside the
batch that inserts the events, so it always equals a GROUP BY over the events table; the weekly,
monthly and yearly totals are folds of the daily rows, never a scan of the events. Days are UTC
and written "YYYY-MM-DD", so string order is date order (years 1000-9999).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from typing import NamedTuple

DAY_SECONDS = 86_400
PERIODS = ("day", "week", "month", "year")
MAX_TS = 253_402_300_800
"""10000-01-01T00:00:00Z: an event's ts must be in [0, MAX_TS) for its day to have a
"YYYY-MM-DD" string (SPEC §2 also says ts >= 0)."""

_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()


def day_number(ts: float) -> int:
    """Days since 1970-01-01 of a UNIX time (UTC).

    Floor division, not floor(ts / 86400): Python computes `//` on floats from the exact
    remainder, while the quotient ts / 86400 may round up to the next whole day for a time a
    hair before midnight.
    """
    return int(ts // DAY_SECONDS)


def day_string(day: int) -> str:
    """"YYYY-MM-DD" of a day number."""
    return _dt.date.fromordinal(day + _EPOCH_ORDINAL).isoformat()


def day_of(ts: float) -> str:
    """The UTC day of a UNIX time, as "YYYY-MM-DD"."""
    return day_string(day_number(ts))


def day_start(day: str) -> float:
    """UNIX time of 00:00:00 UTC of a "YYYY-MM-DD" day."""
    return float((_dt.date.fromisoformat(day).toordinal() - _EPOCH_ORDINAL) * DAY_SECONDS)


def period_start(day: str, period: str) -> str:
    """First day of the period containing `day`: itself, its Monday, the 1st of its month or
    January 1st of its year.

    Raises:
        ValueError: unknown period.
    """
    d = _dt.date.fromisoformat(day)
    if period == "day":
        return day
    if period == "week":
        return (d - _dt.timedelta(days=d.weekday())).isoformat()
    if period == "month":
        return d.replace(day=1).isoformat()
    if period == "year":
        return d.replace(month=1, day=1).isoformat()
    raise ValueError(f"unknown period {period!r}; use one of {', '.join(PERIODS)}")


def rollup_rows(daily: Iterable[tuple[str, str, int]], period: str) -> list[dict[str, object]]:
    """Fold (day, event_type, total) rows into periods.

    Returns rows {"start": first day of the period, "event_type", "total"} ordered by start,
    then event type. Raises ValueError for an unknown period.
    """
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}; use one of {', '.join(PERIODS)}")
    sums: dict[tuple[str, str], int] = {}
    starts: dict[str, str] = {}
    for day, event_type, total in daily:
        start = starts.get(day)
        if start is None:
            start = starts[day] = period_start(day, period)
        key = (start, event_type)
        sums[key] = sums.get(key, 0) + int(total)
    return [{"start": s, "event_type": t, "total": n} for (s, t), n in sorted(sums.items())]


class Piece(NamedTuple):
    """Part of one UTC day inside a range: ts in [lo, hi), or [lo, hi] when `closed`."""

    day: int
    lo: float
    hi: float
    closed: bool


def split_range(start: float | None, end: float | None
                ) -> tuple[tuple[int | None, int | None] | None, list[Piece]]:
    """An inclusive range of UNIX seconds as the whole UTC days inside it (`full_days`) and the
    parts of days at its edges, each within one day.

    So that a total per day can be exact for any range: the whole days from `daily_stats`,
    the edges counted from the events. Rollups used to count every day the range touched,
    so a range of 06:00-18:00 counted the events of the whole day, while every other
    analytics answer (peak times, users, ...) kept to the range.
    """
    days = full_days(start, end)
    if days is None:
        # Both bounds are set and no whole day fits: one day's part, or the end of one day
        # and the start of the next.
        assert start is not None and end is not None
        day = day_number(start)
        midnight = float((day + 1) * DAY_SECONDS)
        if end < midnight:
            return None, [Piece(day, start, end, True)]
        return None, [Piece(day, start, midnight, False), Piece(day + 1, midnight, end, True)]
    first, last = days
    pieces = []
    if first is not None and start is not None and start < first * DAY_SECONDS:
        pieces.append(Piece(first - 1, start, float(first * DAY_SECONDS), False))
    if last is not None and end is not None and (last + 1) * DAY_SECONDS <= end:
        pieces.append(Piece(last + 1, float((last + 1) * DAY_SECONDS), end, True))
    return days, pieces


def full_days(start: float | None, end: float | None) -> tuple[int | None, int | None] | None:
    """The day numbers [first, last] whose every instant lies in the inclusive range.

    Used to answer a count from `daily_stats` for whole days and from the events only for the
    partial days at the edges. None as a bound means unbounded on that side; the function
    returns None when no whole day fits. A day d is whole when d*86400 >= start and
    (d+1)*86400 <= end: its events have ts < (d+1)*86400 <= end. An `end` such as
    "23:59:59" therefore does not cover its day (an event at 23:59:59.5 is outside it).
    """
    first = None if start is None else -int(-start // DAY_SECONDS)  # exact ceiling
    last = None if end is None else int(end // DAY_SECONDS) - 1
    if first is not None and last is not None and first > last:
        return None
    return first, last
