"""Real-time stats, the pure part: buckets, key names, windows and how answers are combined.

Nothing here touches Redis, sockets or the clock: the writer (`storage/counters.py`), the reader
(`http/stats_routes.py`) and the rebuild command (`stats_rebuild.py`) all pass "now" in, so the
three agree on every key and every bucket edge by construction.

Buckets
    A bucket of a granularity of `s` seconds starts at `floor(ts / s) * s`: buckets are aligned
    on the UNIX epoch, hence on UTC (hours and days start at UTC :00 and midnight). The bucket
    part of a key is the start formatted with the granularity's `format` through `time.gmtime`,
    so the host's time zone never leaks into a key. A format must tell apart the buckets that
    are kept at the same time (`%Y%m%d%H` for minutes would merge sixty buckets into one key);
    `validate_format` refuses such formats at startup.

Retention
    A bucket's key lives until `bucket end + retention`: its "deadline". Writers compute the TTL
    from the injected clock (`deadline - now`), and never write a bucket whose deadline has
    passed, so a late event cannot resurrect an expired key.

Keys and Redis Cluster hash tags
    Counters: `{<prefix>:<granularity>}:<bucket>`, one hash per bucket with a field per event
    type plus `TOTAL_FIELD`. Uniques: `{<prefix>:uniques}:bits:<YYYYMMDD>` (bitmap) and
    `{<prefix>:uniques}:hll:<YYYYMMDD>` (HyperLogLog). The hash tag is the part in braces, so all
    buckets of one granularity share one cluster slot: a stats request reads each granularity
    in one round trip to one node, and a temporary key of the rebuild can be RENAMEd onto its
    target. The price is that a granularity's keys cannot be spread over the nodes of a
    cluster: each granularity lives on one node (four granularities and the uniques use at
    most five). The data is small (a few thousand hashes per granularity), so the reads that
    stay on one node are worth more than the spread. The prefix is inside the tag so that two
    deployments sharing a cluster land on different slots.

The total field
    Event types are 1 to 256 characters with no control characters (SPEC §2), so a field name
    starting with NUL can never be an event type: `TOTAL_FIELD = "\\x00total"`.

Unique users
    The user is `params[stats.user_key]`. Integers in [0, BITMAP_ID_LIMIT), and their canonical
    decimal strings ("42", not "042" or "+42", so that 42 and "42" are one user as in the event
    store's text `user_id`), are bits of a per-day bitmap: exact. Every other value is a member
    of a per-day HyperLogLog (about 0.81% standard error): estimated. A user goes to exactly one
    of the two, so the day's users are `exact + estimated` with nothing counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from collector.config import Granularity, StatsConfig
from collector.errors import ConfigError

DAY = 86_400

TOTAL_FIELD = "\x00total"
"""Hash field holding the bucket's total; cannot clash with an event type (no control chars)."""

BITMAP_ID_LIMIT = 2**26
"""Integer user IDs below this go to the exact per-day bitmap, larger ones to the HyperLogLog.

A bitmap is as long as its largest offset: one event with user_id 4_000_000_000 would make Redis
allocate a 512 MiB string for the day. 2**26 caps a day's bitmap at 8 MiB while keeping every
user of a deployment with up to 67 million sequential IDs exact; IDs above it are still
counted, only estimated.
"""

UNIQUES_DAY_FORMAT = "%Y%m%d"


def bucket_start(ts: float, seconds: int) -> int:
    """Start (UNIX seconds) of the `seconds`-wide bucket holding `ts`; floor, so UTC-aligned."""
    return int(ts // seconds) * seconds


def format_bucket(start: int, fmt: str) -> str:
    """The bucket part of a key: `start` formatted in UTC, whatever the host's time zone."""
    return time.strftime(fmt, time.gmtime(start))


def deadline(start: int, g: Granularity) -> int:
    """UNIX time after which the bucket starting at `start` is past its retention."""
    return start + g.seconds + g.retention


def validate_format(g: Granularity) -> None:
    """Refuse a format that gives two buckets alive at the same time the same key.

    Two buckets coexist when their starts are less than `seconds + retention` apart. The check
    is sampled rather than proved: at a few instants (month, year and leap-day edges included)
    it compares a bucket's key with the keys of the buckets one step, one minute, hour, day,
    week, month (28 to 31 days) and year (365, 366 days) later, whichever coexist with it. A
    format that lacks the field changing at one of those periods fails on one of them: `%Y%m%d%H`
    for minutes, or `%H` for hours kept 49 h. `%H` for hours kept 2 h passes: its keys repeat
    daily, but each one has expired long before.

    Raises:
        ConfigError: naming the granularity and the two buckets that clash.
    """
    samples = (951_782_400, 1_456_606_932, 1_704_067_199, 1_709_164_800, 4_102_444_799)
    periods = (1, 60, 3600, DAY, 7 * DAY, 28 * DAY, 29 * DAY, 30 * DAY, 31 * DAY, 365 * DAY,
               366 * DAY)
    lifetime = g.seconds + g.retention
    offsets = sorted({g.seconds, *(p for p in periods if p % g.seconds == 0 and p < lifetime)})
    for ts in samples:
        a = bucket_start(ts, g.seconds)
        for off in offsets:
            for b in (a - off, a + off):
                if b >= 0 and format_bucket(a, g.format) == format_bucket(b, g.format):
                    raise ConfigError(
                        f"stats.granularities.{g.name}.format {g.format!r} gives buckets "
                        f"{a} and {b}, both kept at once, the same key "
                        f"{format_bucket(a, g.format)!r}; add the fields that tell them apart"
                    )


def validate_granularities(granularities: Sequence[Granularity], key_prefix: str) -> None:
    """Startup checks of the stats configuration; raises ConfigError with the key to fix."""
    if not granularities:
        raise ConfigError("stats.granularities: at least one granularity is needed")
    names = [g.name for g in granularities]
    if len(set(names)) != len(names):
        raise ConfigError(f"stats.granularities: duplicate names in {names}")
    if "{" in key_prefix or "}" in key_prefix:
        raise ConfigError(
            "redis.key_prefix must not contain '{' or '}': the prefix is part of the "
            "Redis Cluster hash tag of every stats key"
        )
    for g in granularities:
        validate_format(g)


def uniques_retention(stats: StatsConfig) -> int:
    """How long a day of uniques is kept: the retention of a one-day granularity if there is
    one, else the longest retention configured (at least the stats window)."""
    for g in stats.granularities:
        if g.seconds == DAY:
            return g.retention
    return max([stats.window_seconds, *(g.retention for g in stats.granularities)])


@dataclass(frozen=True, slots=True)
class KeySpace:
    """Key names of the stats; see the module docstring for the layout and the hash tags."""

    prefix: str

    def counter_key(self, g: Granularity, start: int) -> str:
        return f"{{{self.prefix}:{g.name}}}:{format_bucket(start, g.format)}"

    def bits_key(self, day_start: int) -> str:
        return f"{{{self.prefix}:uniques}}:bits:{format_bucket(day_start, UNIQUES_DAY_FORMAT)}"

    def hll_key(self, day_start: int) -> str:
        return f"{{{self.prefix}:uniques}}:hll:{format_bucket(day_start, UNIQUES_DAY_FORMAT)}"

    def receipt_key(self, writer: str) -> str:
        """Where a worker's counters record their last applied flush (collector/storage/
        counters.py, "Exactly once")."""
        return f"{{{self.prefix}:receipts}}:{writer}"

    def tag(self, name: str) -> str:
        """The hash tag of a granularity (or "uniques"): keys sharing it share a slot."""
        return f"{self.prefix}:{name}"


def live_targets(
    sec: int, granularities: Sequence[Granularity], keys: KeySpace, now: float
) -> list[tuple[str, int]]:
    """(key, deadline) of every bucket, one per granularity, that an event at whole second
    `sec` counts in, leaving out buckets already past their retention at `now`.

    Every granularity is a whole number of seconds, so the bucket of `int(ts)` is the bucket
    of `ts`: callers may aggregate events by whole second first and expand later.
    """
    out = []
    for g in granularities:
        start = sec - sec % g.seconds
        end = start + g.seconds + g.retention
        if end > now:
            out.append((keys.counter_key(g, start), end))
    return out


def user_member(value: Any) -> int | str | None:
    """Classify a user ID: an int is a bit of the exact bitmap, a str a member of the
    HyperLogLog, None means the event has no user (absent, null or empty string)."""
    if value is None:
        return None
    if type(value) is int:
        return value if 0 <= value < BITMAP_ID_LIMIT else str(value)
    if isinstance(value, str):
        if not value:
            return None
        if _canonical_digits(value):
            n = int(value)
            if n < BITMAP_ID_LIMIT:
                return n
        return value
    # bool, float, list, object: their JSON text, so equal values are one user.
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _canonical_digits(s: str) -> bool:
    """True for the decimal text of a non-negative int: ASCII digits, no leading zero."""
    return len(s) <= 20 and s.isascii() and s.isdigit() and (s == "0" or s[0] != "0")


# --- windows of the read side --------------------------------------------------------------


def window_span(window: int, g: Granularity) -> int:
    """Seconds of history a granularity answers for: the window, capped at its retention.

    48 hours of one-second buckets would be 172,800 points, and the second granularity keeps
    only 2 hours by default: older buckets no longer exist, so returning them as zeros would
    lie. The series of a granularity covers min(window, retention).
    """
    return min(window, g.retention)


def window_buckets(now: float, window: int, g: Granularity) -> range:
    """Starts of every bucket of `g` intersecting [now - span, now], oldest first.

    With the defaults: 2881 minute buckets, 49 hour buckets, 3 day buckets (the window touches
    three UTC days unless `now` is exactly midnight) and 7201 second buckets (span capped at 2 h).
    """
    t = int(now)
    first = max(0, bucket_start(t - window_span(window, g), g.seconds))
    last = bucket_start(t, g.seconds)
    return range(first, last + 1, g.seconds)


def reference_granularity(granularities: Sequence[Granularity], window: int) -> Granularity:
    """The granularity whose series defines `from` and `total` of an answer.

    The finest one whose retention covers the whole window (exact to its bucket size); if none
    does, the one covering the most history (ties to the finer).
    """
    covering = [g for g in granularities if g.retention >= window]
    if covering:
        return min(covering, key=lambda g: g.seconds)
    return max(granularities, key=lambda g: (window_span(window, g), -g.seconds))


def tile(
    start: int,
    end: int,
    granularities: Sequence[Granularity],
    base: Granularity,
    now: float,
) -> list[tuple[Granularity, int]]:
    """Cover [start, end) exactly with as few live buckets as possible.

    Used to sum event types over the window without reading 2881 minute hashes: the whole days
    and hours inside the window come from day and hour buckets, only the ragged edges from
    minute buckets. `start` and `end` must be multiples of `base.seconds`; only granularities
    whose width is a multiple of the base's can tile (others cannot line up with its edges and
    are ignored), and a coarse bucket past its retention is replaced by finer ones.

    Returns:
        (granularity, bucket start) pairs, disjoint, whose union is [start, end).
    """
    if start % base.seconds or end % base.seconds:
        raise ValueError("tile: start and end must be multiples of the base granularity")
    by_width: dict[int, Granularity] = {}
    for g in granularities:
        if g.seconds % base.seconds == 0 and g.seconds not in by_width:
            by_width[g.seconds] = g
    by_width[base.seconds] = base
    ladder = [by_width[w] for w in sorted(by_width, reverse=True)]
    out: list[tuple[Granularity, int]] = []
    _tile(start, end, ladder, now, out)
    return out


def _tile(a: int, b: int, ladder: list[Granularity], now: float,
          out: list[tuple[Granularity, int]]) -> None:
    if a >= b:
        return
    g, finer = ladder[0], ladder[1:]
    if not finer:  # the base: always used, even past retention (it then reads as zero)
        out.extend((g, s) for s in range(a, b, g.seconds))
        return
    first = -(-a // g.seconds) * g.seconds
    last = b // g.seconds * g.seconds
    if first >= last:
        _tile(a, b, finer, now, out)
        return
    _tile(a, first, finer, now, out)
    for s in range(first, last, g.seconds):
        if deadline(s, g) > now:
            out.append((g, s))
        else:
            _tile(s, s + g.seconds, finer, now, out)
    _tile(last, b, finer, now, out)


def days_of(start: int, end: int) -> range:
    """Starts of the UTC days intersecting [start, end]."""
    return range(bucket_start(start, DAY), bucket_start(end, DAY) + 1, DAY)


# --- combining answers ---------------------------------------------------------------------


def as_count(value: Any) -> int:
    """A count read from Redis (None when the field or key is absent) as an int."""
    return 0 if value is None else int(value)


def sum_hashes(hashes: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Field-wise sum of bucket hashes (HGETALL answers), TOTAL_FIELD included."""
    out: dict[str, int] = {}
    for h in hashes:
        for field, value in h.items():
            out[field] = out.get(field, 0) + int(value)
    return out


def types_list(summed: Mapping[str, int]) -> list[dict[str, Any]]:
    """Event types with their counts, most frequent first, ties by name; zeros left out."""
    rows = [(t, n) for t, n in summed.items() if t != TOTAL_FIELD and n > 0]
    rows.sort(key=lambda r: (-r[1], r[0]))
    return [{"event_type": t, "count": n} for t, n in rows]


def uniques_row(day_start: int, exact: int, estimated: int) -> dict[str, Any]:
    """One day of unique users; exact (bitmap) and estimated (HyperLogLog) sets are disjoint."""
    return {
        "date": format_bucket(day_start, "%Y-%m-%d"),
        "users": exact + estimated,
        "exact": exact,
        "estimated": estimated,
    }


# --- the rebuild window --------------------------------------------------------------------


def rebuild_span(since: float, until: float,
                 granularities: Sequence[Granularity]) -> tuple[int, int]:
    """[lo, hi): the events to read so that every bucket touching [since, until] can be
    replaced exactly.

    A bucket is a sum over all of its events: replacing one that straddles `since` with the
    events from `since` on would lose the ones before. So the span widens to the start of the
    bucket holding `since` and the end of the bucket holding `until`, for every granularity
    and for the UTC day (the uniques are per day). With the usual nested granularities (each
    width divides the next, and the day) this is [midnight before since, midnight after
    until), and every bucket touching [since, until] lies inside it.
    """
    widths = [DAY, *(g.seconds for g in granularities)]
    lo = min(bucket_start(since, w) for w in widths)
    hi = max(bucket_start(until, w) + w for w in widths)
    return lo, hi


def replaced_buckets(
    lo: int, hi: int, granularities: Sequence[Granularity], now: float
) -> tuple[list[tuple[Granularity, int]], int]:
    """Buckets a rebuild of [lo, hi) replaces: those lying wholly inside it and not past their
    retention (a rebuild must not resurrect expired keys).

    Returns:
        (granularity, start) pairs, and how many buckets intersecting [lo, hi) were left
        alone because they straddle an edge: only possible when a granularity's width does
        not divide the day's (lo and hi are then not on its bucket edges).
    """
    out: list[tuple[Granularity, int]] = []
    straddling = 0
    for g in granularities:
        w = g.seconds
        first = bucket_start(lo, w)
        last = bucket_start(hi - 1, w)
        # Skip the expired prefix arithmetically: a 400-day rebuild must not walk 34 million
        # expired second buckets one by one.
        oldest_alive = bucket_start(now - w - g.retention, w) + w
        for s in {first, last}:
            if (s < lo or s + w > hi) and deadline(s, g) > now:
                straddling += 1
        if first < lo:
            first += w
        if last + w > hi:
            last -= w
        out.extend((g, s) for s in range(max(first, oldest_alive), last + 1, w))
    return out, straddling
