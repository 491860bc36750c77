"""SPEC §11 analytics in SQLite: SQL does the scanning and grouping, Python shapes answers.

Every function takes an open `sqlite3.Connection` (inside one read transaction, so all the
statements of an answer see the same data) and returns the JSON-able answer. `SQLiteAnalytics`
adapts them to an `loader.stores.sqlite.SQLiteStore`.

Cost model, for 1M events inside the range (bench/analytics.py has the measurements):

* rollup reads `daily_stats` only: a few hundred rows whatever the event count.
* peak-times counts each local hour of the range as one index range count on `events(ts)` (or
  `(event_type, ts)` with eventType): SQLite steps through index entries without touching the
  table or sorting, which is several times cheaper than a GROUP BY over an expression of ts
  (that one needs a temporary B-tree). One bucket per hour: beyond MAX_RANGE_COUNT_BUCKETS
  (about 2.3 years) the per-bucket seeks cost more than one grouped scan, which is used then.
* uniques, users, flows and funnel group by user. The schema has no index on user_id (it
  would slow the loader down, see loader/stores/sqlite.py), so they scan the ts range and read
  user_id from the table: cost linear in the events of the range, plus a sort for flows and
  funnel (the window function of flows sorts by (user_id, ts, id)).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from zoneinfo import ZoneInfo

from loader.analytics import common
from loader.analytics.params import FunnelQuery, Range

MAX_RANGE_COUNT_BUCKETS = 20_000


def _types_sql(types: tuple[str, ...] | None, args: list[Any]) -> str:
    if not types:
        return ""
    args.extend(types)
    return f" AND event_type IN ({', '.join('?' * len(types))})"


def _offset_sql(intervals: common.Intervals, args: list[Any]) -> str:
    """offset(ts) as SQL: a constant, or a CASE over the pieces of the time zone."""
    if len(intervals) == 1:
        args.append(intervals[0][1])
        return "?"
    parts = ["CASE"]
    for (_, off), (nxt, _) in zip(intervals, intervals[1:], strict=False):
        parts.append("WHEN ts < ? THEN ?")
        args.extend((nxt, off))
    parts.append("ELSE ? END")
    args.append(intervals[-1][1])
    return " ".join(parts)


# A floor that is exact for negative quotients too (CAST truncates toward zero); `q` is the
# column of a subquery so that its parameters are bound once.
_FLOOR_Q = "(CAST(q AS INTEGER) - (q < CAST(q AS INTEGER)))"


def _bound(x: float, args: list[Any]) -> str:
    """A bucket bound for the SQL text: whole numbers inline, others as parameters (SQLite's
    decimal-to-double conversion is not guaranteed to round-trip every float)."""
    if x.is_integer() and abs(x) < 2**53:
        return str(int(x))
    args.append(x)
    return "?"


def peak_times(con: sqlite3.Connection, rng: Range, types: tuple[str, ...] | None,
               tz: ZoneInfo) -> dict[str, Any]:
    intervals = common.offset_intervals(tz, rng.start, rng.end)
    if (rng.end - rng.start) / common.HOUR + len(intervals) > MAX_RANGE_COUNT_BUCKETS:
        return common.peak_answer(_peak_grouped(con, rng, types, intervals))
    buckets = common.hour_buckets(intervals, rng.end)
    args: list[Any] = []
    values = ", ".join(f"({i}, {_bound(lo, args)}, {_bound(hi, args)})"
                       for i, (lo, hi, _) in enumerate(buckets))
    sql = (f"WITH b(i, lo, hi) AS (VALUES {values}) "
           "SELECT i, (SELECT COUNT(*) FROM events WHERE ts >= b.lo AND ts < b.hi"
           f"{_types_sql(types, args)}) FROM b")
    counts = con.execute(sql, args).fetchall()
    return common.peak_answer((buckets[i][2], n) for i, n in counts if n)


def _peak_grouped(con: sqlite3.Connection, rng: Range, types: tuple[str, ...] | None,
                  intervals: common.Intervals) -> list[tuple[int, int]]:
    args: list[Any] = []
    off = _offset_sql(intervals, args)
    args.extend((rng.start, rng.end))
    types_sql = _types_sql(types, args)
    sql = (f"SELECT {_FLOOR_Q} AS lh, COUNT(*) FROM "
           f"(SELECT (ts + {off}) / 3600.0 AS q FROM events WHERE ts >= ? AND ts <= ?"
           f"{types_sql}) GROUP BY lh")
    return [(int(lh), int(n)) for lh, n in con.execute(sql, args)]


def uniques(con: sqlite3.Connection, rng: Range, tz: ZoneInfo) -> dict[str, Any]:
    intervals = common.offset_intervals(tz, rng.start, rng.end)
    args: list[Any] = []
    off = _offset_sql(intervals, args)
    args.extend((rng.start, rng.end))
    sql = (f"SELECT d, COUNT(DISTINCT user_id) FROM (SELECT {_FLOOR_Q} AS d, user_id FROM "
           f"(SELECT (ts + {off}) / 86400.0 AS q, user_id FROM events "
           "WHERE ts >= ? AND ts <= ? AND user_id IS NOT NULL)) GROUP BY d")
    per_day = {int(d): int(n) for d, n in con.execute(sql, args)}
    first = common.day_number(common.local_seconds(rng.start, intervals))
    last = common.day_number(common.local_seconds(rng.end, intervals))
    return common.uniques_answer(per_day, first, last)


def users(con: sqlite3.Connection, rng: Range, top: int) -> dict[str, Any]:
    rows = con.execute(
        "SELECT user_id, COUNT(*) FROM events WHERE ts >= ? AND ts <= ? "
        "AND user_id IS NOT NULL GROUP BY user_id", (rng.start, rng.end))
    return common.users_answer(rows, top)


def flows(con: sqlite3.Connection, rng: Range, start: str | None, top: int) -> dict[str, Any]:
    args: list[Any] = [rng.start, rng.end]
    start_sql = ""
    if start is not None:
        start_sql = " AND prev = ?"
        args.append(start)
    sql = ("SELECT prev, event_type, COUNT(*) FROM (SELECT event_type, "
           "LAG(event_type) OVER (PARTITION BY user_id ORDER BY ts, id) AS prev FROM events "
           "WHERE ts >= ? AND ts <= ? AND user_id IS NOT NULL) "
           f"WHERE prev IS NOT NULL{start_sql} GROUP BY prev, event_type")
    return common.flows_answer(con.execute(sql, args), top)


def funnel(con: sqlite3.Connection, q: FunnelQuery) -> dict[str, Any]:
    args: list[Any] = [q.range.start, q.range.end]
    types_sql = _types_sql(tuple(dict.fromkeys(q.steps)), args)
    rows = con.execute(
        "SELECT user_id, ts, id, event_type FROM events WHERE ts >= ? AND ts <= ? "
        f"AND user_id IS NOT NULL{types_sql} ORDER BY user_id, ts, id", args)
    return common.funnel_answer(q.steps, common.fold_funnel(rows, q.steps, q.window))


def _empty() -> sqlite3.Connection:
    """An empty events table: the answer of a store whose file does not exist yet."""
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, event_type TEXT, ts REAL, "
                "user_id TEXT)")
    return con


class SQLiteAnalytics:
    """The analytics of a `SQLiteStore` (readonly or not). Thread-safe as the store is: each
    executor thread reads through its own connection."""

    def __init__(self, store: Any) -> None:
        self._store = store

    @contextmanager
    def _con(self) -> Iterator[sqlite3.Connection]:
        snapshot = getattr(self._store, "snapshot", None) or self._store._snapshot
        with snapshot() as con:
            if con is not None:
                yield con
                return
        empty = _empty()
        try:
            yield empty
        finally:
            empty.close()

    def rollup(self, period: str, rng: Range, types: tuple[str, ...] | None) -> dict[str, Any]:
        rows = self._store.rollup(period, rng.start, rng.end, list(types) if types else None)
        return {"period": period, "rows": rows}

    def peak_times(self, rng: Range, types: tuple[str, ...] | None,
                   tz: ZoneInfo) -> dict[str, Any]:
        with self._con() as con:
            return peak_times(con, rng, types, tz)

    def uniques(self, rng: Range, tz: ZoneInfo) -> dict[str, Any]:
        with self._con() as con:
            return uniques(con, rng, tz)

    def users(self, rng: Range, top: int) -> dict[str, Any]:
        with self._con() as con:
            return users(con, rng, top)

    def flows(self, rng: Range, start: str | None, top: int) -> dict[str, Any]:
        with self._con() as con:
            return flows(con, rng, start, top)

    def funnel(self, q: FunnelQuery) -> dict[str, Any]:
        with self._con() as con:
            return funnel(con, q)

