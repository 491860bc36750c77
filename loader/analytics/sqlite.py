"""SPEC §11 analytics in SQLite: SQL does the scanning and grouping, Python shapes answers.

Every function takes an open `sqlite3.Connection` (inside one read transaction, so all the
statements of an answer see the same data) and returns the JSON-able answer. `SQLiteAnalytics`
adapts them to a `loader.stores.sqlite.SQLiteStore` and picks, per question, the cheapest
source that gives the exact answer.

Cost model, for 1M events inside the range (bench/analytics.py has the measurements):

* rollup reads `daily_stats` for the whole days of the range (a few hundred rows whatever the
  event count) and counts the parts of days at its edges per event type, each one index
  range count on `(event_type, ts)`.
* peak-times counts each local hour of the range as one index range count on `events(ts)` (or
  `(event_type, ts)` with eventType): SQLite steps through index entries without touching the
  table or sorting, which is several times cheaper than a GROUP BY over an expression of ts
  (that one needs a temporary B-tree). One bucket per hour: beyond MAX_RANGE_COUNT_BUCKETS
  (about 2.3 years) the per-bucket seeks cost more than one grouped scan, which is used then.
* uniques, users, flows and funnel group by user. With the analytics tables (userhours.py:
  one summary per user and UTC hour, kept by the loader) they read about (active users x
  hours) summary rows: tens of milliseconds. Without them (a store that does not keep them,
  or before their backfill) they scan the ts range of the events table, read user_id from
  each row (there is no user index, see loader/stores/sqlite.py) and sort: seconds at 1M.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from loader.analytics import common, userhours
from loader.analytics.params import FunnelQuery, Range

MAX_RANGE_COUNT_BUCKETS = 20_000
HOUR = 3600


def _types_sql(types: tuple[str, ...] | None, args: list[Any]) -> str:
    if not types:
        return ""
    args.extend(types)
    return f" AND event_type IN ({', '.join('?' * len(types))})"


def _offset_sql(intervals: common.Intervals, args: list[Any], column: str = "ts") -> str:
    """offset(column) as SQL: a constant, or a CASE over the pieces of the time zone."""
    if len(intervals) == 1:
        args.append(intervals[0][1])
        return "?"
    parts = ["CASE"]
    for (_, off), (nxt, _) in zip(intervals, intervals[1:], strict=False):
        parts.append(f"WHEN {column} < ? THEN ?")
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


# --- from the analytics tables (loader/analytics/userhours.py) -------------------------------
#
# A range is cut into whole UTC hours that the tables cover, answered from the summaries (and
# hour_flows), and the rest, answered from the events themselves cut to the range: the partial
# hours at the edges, and every hour from the first one the analytics pass has not finished
# (userhours.pending_since; with live traffic, the current hour). The two are then merged.


Row = tuple[str, int, str, str, Any, Any]
"""One user-hour: (user_id, hour, first_type, last_type, firsts, seq). A whole hour as read
from user_hours has `firsts` as JSON text and seq None (read only if needed); the part of a
raw hour inside the range has both as Python objects, rebuilt from its seq."""


@dataclass(slots=True)
class _Hours:
    """A range cut into covered whole hours [lo, hi] (possibly empty: lo > hi) and spans of
    raw hours [(first, last), ...] read from the events."""

    lo: int
    hi: int
    raw: list[tuple[int, int]]


def _hours(con: sqlite3.Connection, rng: Range) -> _Hours:
    # Hour h is whole when h * 3600 >= start and (h + 1) * 3600 <= end: its events have
    # ts < (h + 1) * 3600 <= end. It is covered when, besides, no event of it waits for the
    # analytics pass: every waiting event has ts >= pending_since.
    first, last = math.floor(rng.start / HOUR), math.floor(rng.end / HOUR)
    lo, hi = math.ceil(rng.start / HOUR), math.floor(rng.end / HOUR) - 1
    pending = userhours.pending_since(con)
    if pending is not None:
        hi = min(hi, math.floor(pending / HOUR) - 1)
    if lo > hi:
        return _Hours(lo, hi, [(first, last)])
    raw = [(first, lo - 1)] if first < lo else []
    if hi < last:
        raw.append((hi + 1, last))
    return _Hours(lo, hi, raw)


def _edge_rows(con: sqlite3.Connection, rng: Range, hours: _Hours
               ) -> list[tuple[Row, userhours.Summary]]:
    """The raw hours' user-hours cut to the range, with their summaries: from the events
    table through its ts index (the tables may not hold these events yet)."""
    seqs: dict[tuple[str, int], list[userhours.Entry]] = {}
    for a, b in hours.raw:
        for user, ts, id_, event_type in con.execute(
                "SELECT user_id, ts, id, event_type FROM events WHERE ts >= ? AND ts < ? "
                "AND ts <= ? AND user_id IS NOT NULL",
                (max(rng.start, a * HOUR), (b + 1) * HOUR, rng.end)):
            seqs.setdefault((user, math.floor(ts / HOUR)), []).append((ts, id_, event_type))
    out = []
    for (user, hour), seq in seqs.items():
        seq.sort()
        s = userhours.summarize(seq)
        out.append(((user, hour, s.first[2], s.last[2], s.firsts, seq), s))
    return out


def users_from_tables(con: sqlite3.Connection, rng: Range, top: int) -> dict[str, Any]:
    hours = _hours(con, rng)
    counts: Counter[str] = Counter()
    for user, n in con.execute("SELECT user_id, SUM(n) FROM user_hours WHERE hour BETWEEN ? "
                               "AND ? GROUP BY user_id", (hours.lo, hours.hi)):
        counts[user] += int(n)
    for row, summary in _edge_rows(con, rng, hours):
        counts[row[0]] += summary.n
    return common.users_answer(counts.items(), top)


# The first and last active quarter of a row, from its bitmask.
_FIRST_Q = ("CASE WHEN quarters & 1 THEN 0 WHEN quarters & 2 THEN 1 WHEN quarters & 4 THEN 2 "
            "ELSE 3 END")
_LAST_Q = ("CASE WHEN quarters & 8 THEN 3 WHEN quarters & 4 THEN 2 WHEN quarters & 2 THEN 1 "
           "ELSE 0 END")


def uniques_from_tables(con: sqlite3.Connection, rng: Range, tz: ZoneInfo) -> dict[str, Any]:
    """A whole hour holds at most one local midnight (offsets are whole quarters), so a user
    active in it was active on the local days of its first and its last active quarter, and
    on no other day."""
    intervals = common.offset_intervals(tz, rng.start, rng.end)
    hours = _hours(con, rng)
    args: list[Any] = []
    off = _offset_sql(intervals, args, column="t")
    args.extend((hours.lo, hours.hi, hours.lo, hours.hi))
    sql = (f"SELECT DISTINCT {_FLOOR_Q}, user_id FROM (SELECT (t + {off}) / 86400.0 AS q, "
           "user_id FROM ("
           f"SELECT hour * 3600 + 900 * ({_FIRST_Q}) AS t, user_id FROM user_hours "
           "WHERE hour BETWEEN ? AND ? UNION ALL "
           f"SELECT hour * 3600 + 900 * ({_LAST_Q}) AS t, user_id FROM user_hours "
           "WHERE hour BETWEEN ? AND ?))")
    seen: set[tuple[int, str]] = {(int(d), u) for d, u in con.execute(sql, args)}
    for (user, _, _, _, _, seq), _ in _edge_rows(con, rng, hours):
        for ts, _, _ in seq:
            seen.add((common.day_number(common.local_seconds(ts, intervals)), user))
    per_day = Counter(d for d, _ in seen)
    first = common.day_number(common.local_seconds(rng.start, intervals))
    last = common.day_number(common.local_seconds(rng.end, intervals))
    return common.uniques_answer(per_day, first, last)


def _rows_in_range(con: sqlite3.Connection, rng: Range, hours: _Hours, firsts: bool
                   ) -> tuple[list[Row], list[tuple[Row, userhours.Summary]]]:
    """Every user-hour of the range in (user, hour) order, and the edge ones apart."""
    edges = _edge_rows(con, rng, hours)
    column = "firsts" if firsts else "NULL"
    rows: list[Row] = con.execute(
        f"SELECT user_id, hour, first_type, last_type, {column}, NULL FROM user_hours "
        "WHERE hour BETWEEN ? AND ?", (hours.lo, hours.hi)).fetchall()
    rows.extend(r for r, _ in edges)
    # Plain tuple order: (user, hour) is unique, so the comparison never looks further.
    rows.sort()
    return rows, edges


def flows_from_tables(con: sqlite3.Connection, rng: Range, start: str | None,
                      top: int) -> dict[str, Any]:
    """Pairs inside a user-hour come from hour_flows (whole hours) or the edge rows' seq;
    pairs across hours join a row's last event to the user's next row's first event."""
    hours = _hours(con, rng)
    pairs: Counter[tuple[str, str]] = Counter()
    args: list[Any] = [hours.lo, hours.hi]
    start_sql = ""
    if start is not None:
        start_sql = " AND from_type = ?"
        args.append(start)
    for a, b, n in con.execute("SELECT from_type, to_type, SUM(n) FROM hour_flows WHERE hour "
                               f"BETWEEN ? AND ?{start_sql} GROUP BY from_type, to_type", args):
        pairs[(a, b)] += int(n)
    rows, edges = _rows_in_range(con, rng, hours, firsts=False)
    for row, _ in edges:
        for (a, b), n in userhours.pairs_of(row[5]).items():
            if start is None or a == start:
                pairs[(a, b)] += n
    # Consecutive rows of one user: a generator over zip keeps the loop in C mostly.
    pairs.update((a[3], b[2]) for a, b in zip(rows, islice(rows, 1, None), strict=False)
                 if a[0] == b[0] and (start is None or a[3] == start))
    return common.flows_answer(((a, b, n) for (a, b), n in pairs.items() if n > 0), top)


def funnel_from_tables(con: sqlite3.Connection, q: FunnelQuery) -> dict[str, Any]:
    """The greedy walk of common.fold_funnel, one user-hour at a time: the first event of a
    type after the previous match is the row's `firsts` entry, except in the row of the
    previous match itself, where the row's seq is read (only then)."""
    hours = _hours(con, q.range)
    rows, _ = _rows_in_range(con, q.range, hours, firsts=True)
    counts = [0] * len(q.steps)
    i = 0
    while i < len(rows):
        j = i
        user = rows[i][0]
        while j < len(rows) and rows[j][0] == user:
            j += 1
        for k in range(_walk(con, rows[i:j], q.steps, q.window)):
            counts[k] += 1
        i = j
    return common.funnel_answer(q.steps, counts)


class _UserHours:
    """One user's rows, their `firsts` parsed on first use."""

    __slots__ = ("_con", "rows", "_firsts")

    def __init__(self, con: sqlite3.Connection, rows: list[Row]) -> None:
        self._con = con
        self.rows = rows
        self._firsts: dict[int, dict[str, list[Any]]] = {}

    def first_of(self, i: int, event_type: str) -> list[Any] | None:
        firsts = self._firsts.get(i)
        if firsts is None:
            raw = self.rows[i][4]
            firsts = self._firsts[i] = orjson.loads(raw) if isinstance(raw, str) else raw
        return firsts.get(event_type)

    def next_after(self, i: int, event_type: str, after: list[Any]) -> list[Any] | None:
        """The first event of `event_type` after `after` in row i, or None."""
        user, hour, _, _, _, seq = self.rows[i]
        if seq is not None:  # an edge row, already cut to the range
            for ts, id_, t in seq:
                if t == event_type and (ts, id_) > (after[0], after[1]):
                    return [ts, id_]
            return None
        found = self._con.execute(
            "SELECT ts, id FROM user_hour_events WHERE hour = ? AND user_id = ? "
            "AND (ts, id) > (?, ?) AND event_type = ? ORDER BY ts, id LIMIT 1",
            (hour, user, after[0], after[1], event_type)).fetchone()
        return None if found is None else [found[0], found[1]]


def _walk(con: sqlite3.Connection, rows: list[Row], steps: tuple[str, ...],
          window: float) -> int:
    """Steps reached by one user whose user-hours are `rows` (hour order)."""
    uh = _UserHours(con, rows)
    at = -1
    current: list[Any] = []
    for i in range(len(rows)):
        found = uh.first_of(i, steps[0])
        if found is not None:
            at, current = i, found
            break
    if at < 0:
        return 0
    deadline = current[0] + window
    for k in range(1, len(steps)):
        match: list[Any] | None = None
        for i in range(at, len(rows)):
            if rows[i][1] * HOUR > deadline:
                break
            cand = uh.first_of(i, steps[k])
            if cand is not None and (cand[0], cand[1]) <= (current[0], current[1]):
                cand = uh.next_after(i, steps[k], current)
            if cand is None:
                continue
            if cand[0] <= deadline:
                match, at = cand, i
            break
        if match is None:
            return k
        current = match
    return len(steps)

def _empty() -> sqlite3.Connection:
    """An empty events table: the answer of a store whose file does not exist yet."""
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, event_type TEXT, ts REAL, "
                "user_id TEXT)")
    return con


class SQLiteAnalytics:
    """The analytics of a `SQLiteStore` (readonly or not). Thread-safe as the store is: each
    executor thread reads through its own connection. Per-user questions are answered from
    the analytics tables (loader/analytics/userhours.py) when the store keeps them, from the
    events table otherwise; both give the same answers."""

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
            if userhours.ready(con):
                return uniques_from_tables(con, rng, tz)
            return uniques(con, rng, tz)

    def users(self, rng: Range, top: int) -> dict[str, Any]:
        with self._con() as con:
            if userhours.ready(con):
                return users_from_tables(con, rng, top)
            return users(con, rng, top)

    def flows(self, rng: Range, start: str | None, top: int) -> dict[str, Any]:
        with self._con() as con:
            if userhours.ready(con):
                return flows_from_tables(con, rng, start, top)
            return flows(con, rng, start, top)

    def funnel(self, q: FunnelQuery) -> dict[str, Any]:
        with self._con() as con:
            if userhours.ready(con):
                return funnel_from_tables(con, q)
            return funnel(con, q)
