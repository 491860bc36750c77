"""What both stores share: local time arithmetic, the funnel and flow folds, answer shapes.

Local time without per-event time zone calls
    A time zone is, over any range, a piecewise-constant UTC offset. `offset_intervals` finds
    the pieces once per query (a few zoneinfo calls), and the stores then compute local time
    inside the database as `ts + offset(ts)`, with offset(ts) a CASE/$switch over the pieces.
    From local seconds L: the local day is floor(L / 86400), the local hour of the epoch
    floor(L / 3600), its hour of day that modulo 24, and its weekday (day + 3) mod 7 with
    Monday = 0 (1970-01-01 was a Thursday). This is exact for every zone, including the
    half-hour and 45-minute ones (Asia/Kolkata, Asia/Kathmandu) and across DST changes.
    Known limit: the pieces are found by sampling the offset every 6 hours and bisecting to
    the second where it changes, so two changes less than 6 hours apart would be seen as one;
    no zone in the tz database has done that since 1970.

Order
    An event's order is (ts, id) (SPEC §11). The folds below take rows already sorted by
    (user, ts, id): sorting is the database's job.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import groupby
from operator import itemgetter
from typing import Any
from zoneinfo import ZoneInfo

DAY = 86400
HOUR = 3600
SAMPLE_STEP = 6 * HOUR
_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()

Intervals = list[tuple[float, int]]
"""[(t0, offset0), (t1, offset1), ...]: offset_i (seconds east of UTC) holds from t_i until
t_{i+1} (exclusive); the last one until the end of the range. t0 is the range start."""


def utc_offset(tz: ZoneInfo, ts: float) -> int:
    off = _dt.datetime.fromtimestamp(ts, tz).utcoffset()
    return int(off.total_seconds()) if off is not None else 0


def offset_intervals(tz: ZoneInfo, start: float, end: float) -> Intervals:
    """The constant-offset pieces of `tz` over [start, end] (see the module docstring)."""
    current = utc_offset(tz, start)
    out: Intervals = [(start, current)]
    if tz.key == "UTC":
        return out
    t = start
    while t < end:
        nxt = min(t + SAMPLE_STEP, end)
        if utc_offset(tz, nxt) != current:
            # Offsets change on whole seconds: bisect for the first second with a new one.
            # Both ends whole (the change is at a second <= nxt, and the next one is months
            # away): with a fractional `hi`, floor((lo + hi) / 2) could equal `lo` for ever.
            lo, hi = math.floor(t), math.ceil(nxt)
            while hi - lo > 1:
                mid = math.floor((lo + hi) / 2)
                if utc_offset(tz, mid) == current:
                    lo = mid
                else:
                    hi = mid
            change = lo + 1
            current = utc_offset(tz, change)
            out.append((float(change), current))
        t = nxt
    return out


def local_seconds(ts: float, intervals: Intervals) -> float:
    """`ts` shifted to local wall-clock seconds (same arithmetic as the stores' SQL)."""
    off = intervals[0][1]
    for t, o in intervals[1:]:
        if ts < t:
            break
        off = o
    return ts + off


def day_number(local: float) -> int:
    return math.floor(local / DAY)


def day_string(day: int) -> str:
    return _dt.date.fromordinal(day + _EPOCH_ORDINAL).isoformat()


def weekday_hour(local_hour: int) -> tuple[int, int]:
    """(weekday Monday=0, hour of day) of a local hour counted from the epoch."""
    return (local_hour // 24 + 3) % 7, local_hour % 24


def hour_buckets(intervals: Intervals, end: float) -> list[tuple[float, float, int]]:
    """Half-open UTC intervals [lo, hi) covering [start, end] (end included), each inside one
    local hour: (lo, hi, local hour of the epoch). A DST change splits an hour; a repeated
    local hour (autumn) yields two buckets with the same label."""
    stop = math.nextafter(end, math.inf)
    out: list[tuple[float, float, int]] = []
    for i, (a, o) in enumerate(intervals):
        b = intervals[i + 1][0] if i + 1 < len(intervals) else stop
        lo = a
        while lo < b:
            lh = math.floor((lo + o) / HOUR)
            hi = min(float((lh + 1) * HOUR - o), b)
            out.append((lo, hi, lh))
            lo = hi
    return out


# --- answers ----------------------------------------------------------------------------------


def peak_answer(by_local_hour: Iterable[tuple[int, int]]) -> dict[str, Any]:
    """{"by_hour", "by_weekday", "matrix"} from (local hour of the epoch, count) pairs."""
    matrix = [[0] * 24 for _ in range(7)]
    for lh, n in by_local_hour:
        w, h = weekday_hour(lh)
        matrix[w][h] += n
    return {
        "by_hour": [sum(matrix[w][h] for w in range(7)) for h in range(24)],
        "by_weekday": [sum(row) for row in matrix],
        "matrix": matrix,
    }


def uniques_answer(per_day: Mapping[int, int], first_day: int, last_day: int) -> dict[str, Any]:
    """Every local day of the range, zeros included, oldest first."""
    return {"days": [{"date": day_string(d), "users": int(per_day.get(d, 0))}
                     for d in range(first_day, last_day + 1)]}


_INTEGER = re.compile(r"0|-?[1-9][0-9]*", re.ASCII)


_INVERTED = str.maketrans("0123456789", "9876543210")


def user_order(user: str) -> tuple[int, int, str]:
    """How ties between users are ordered: integer ids (stored as their decimal text) in
    numeric order, 2 before 10, then every other id as text by code point (an audit found
    "10" before "2": a `top` that cuts through a tie must cut where a reader expects).

    Compared by length and digits, never by int(): a user id may be any string, and int()
    refuses one of more than 4300 digits (a review: one such event made the endpoint fail).
    Negative ids: the longer is the smaller, and of equal length the digits compare reversed.
    """
    if _INTEGER.fullmatch(user):
        if user[0] == "-":
            return (0, -len(user), user.translate(_INVERTED))
        return (1, len(user), user)
    return (2, 0, user)


def users_answer(per_user: Iterable[tuple[str, int]], top: int) -> dict[str, Any]:
    """Most active first, ties by user_id (user_order); the distribution lists each
    events-per-user count k that occurs, ascending."""
    rows = sorted(((u, int(n)) for u, n in per_user), key=lambda r: (-r[1], user_order(r[0])))
    dist = Counter(n for _, n in rows)
    return {
        "users": [{"user_id": u, "events": n} for u, n in rows[:top]],
        "distribution": [{"events": k, "users": m} for k, m in sorted(dist.items())],
    }


def flows_answer(pairs: Iterable[tuple[str, str, int]], top: int) -> dict[str, Any]:
    """Most frequent first, ties by (from, to)."""
    rows = sorted(((a, b, int(n)) for a, b, n in pairs), key=lambda r: (-r[2], r[0], r[1]))
    return {"flows": [{"from": a, "to": b, "count": n} for a, b, n in rows[:top]]}


def fold_flows(rows: Iterable[tuple[str, str]], start: str | None) -> Counter[tuple[str, str]]:
    """Pairs of consecutive events from (user_id, event_type) rows sorted by (user, ts, id)."""
    pairs: Counter[tuple[str, str]] = Counter()
    prev_user: str | None = None
    prev_type = ""
    for user, event_type in rows:
        if user == prev_user and (start is None or prev_type == start):
            pairs[(prev_type, event_type)] += 1
        prev_user, prev_type = user, event_type
    return pairs


def fold_funnel(rows: Iterable[tuple[str, float, int, str]], steps: tuple[str, ...],
                window: float) -> list[int]:
    """Users reaching each step, from (user_id, ts, id, event_type) rows sorted by
    (user, ts, id); rows of other types may be present and are skipped.

    Per user, one greedy pass: the first steps[0] enters (its ts starts the window), then each
    step is matched by the first event of its type after the previous match. Taking the
    earliest match is optimal because every later step only needs *some* event after it and
    before the fixed deadline (first ts + window, inclusive).
    """
    counts = [0] * len(steps)
    n = len(steps)
    for _, events in groupby(rows, key=itemgetter(0)):
        k = 0
        deadline = math.inf
        for _, ts, _, event_type in events:
            if event_type != steps[k]:
                continue
            if k == 0:
                deadline = ts + window
            elif ts > deadline:
                break
            counts[k] += 1
            k += 1
            if k == n:
                break
    return counts


def funnel_answer(steps: tuple[str, ...], counts: list[int]) -> dict[str, Any]:
    """conversion(k) = users(k) / users(k-1); the first step converts at 1.0 when anyone
    entered; a step after an empty one converts at 0.0 (no division by zero in clients)."""
    out = []
    for k, (step, users) in enumerate(zip(steps, counts, strict=True)):
        base = counts[k - 1] if k else users
        out.append({"event_type": step, "users": users,
                    "conversion": users / base if base else 0.0})
    return {"steps": out}
