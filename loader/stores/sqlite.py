"""SQLite event store: one file in the data directory, WAL mode.

Writer. One connection, used by the loader's thread only. Each `insert_batch` is one IMMEDIATE
transaction: `executemany(INSERT OR IGNORE)` of the batch, then an UPSERT of the batch's
(day, event_type) counts into daily_stats, then COMMIT, so the counts and the rows can never
disagree. To count only the rows actually inserted without a lookup per row, the fast path
compares the connection's change counter with the batch size: equal means every row was new
(the normal case). Otherwise (a replay after a crash, a client retry with a known event_id) the
transaction is rolled back and redone row by row, reading each statement's rowcount; that costs
a few microseconds per row and only on such batches.

Durability. `synchronous=FULL`: the WAL is fsynced at each commit (one fsync per batch of
thousands of events). NORMAL would be faster but may lose the last commits on a power loss
while the loader's checkpoint, written after them, survives: those events would never be
loaded. With FULL, a commit is on disk before the checkpoint that follows it.

Readers. The collector's handlers run queries in executor threads. A readonly store opens one
connection per thread (`threading.local`, `mode=ro`), created on first use and closed by
`close()`; WAL lets them read a consistent snapshot while the loader writes. Each query runs in
one read transaction so the total and the page agree. A readonly store whose file does not exist
yet (the loader has not started) answers as an empty store.

Indexes. ts and (event_type, ts), and event_id unique through a partial index. The index on
event_type that SPEC §7 asks for is (event_type, ts): its leading column serves every
`event_type = ?` lookup, and a separate one-column index cost 15-40% of the loading rate
(bench/loader.py, CPU time) for no query it would serve better. event_id is unique through a
partial index (WHERE event_id IS NOT NULL): the same rule as a UNIQUE column (NULLs never
collide), but events without an event_id, the common case, cost no index entry. There is
deliberately no index on user_id: its keys arrive in random order, so every batch dirties about
one index page per row, and each commit writes all of those pages to the WAL (measured: loading
fell from ~50k to ~13k events/s at 600k rows, and keeps falling as the index grows). Per-user
analytics scan a ts range (the ts index) and group in SQL instead.

Totals. COUNT(*) over millions of rows costs a full index scan, so `query_events` counts whole
UTC days inside the range from daily_stats (exact: same transaction as the inserts) and only the
partial days at the edges from the events.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from loader.aggregate import DAY_SECONDS, day_bounds, day_string, full_days, rollup_rows
from loader.analytics import userhours
from loader.stores.base import Event, public_event, user_text

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY,
  event_type TEXT NOT NULL,
  ts REAL NOT NULL,
  params TEXT NOT NULL,
  received_at REAL NOT NULL,
  event_id TEXT,
  sent_at REAL,
  user_id TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS events_event_id ON events(event_id)
  WHERE event_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
CREATE INDEX IF NOT EXISTS events_event_type_ts ON events(event_type, ts);
CREATE TABLE IF NOT EXISTS daily_stats (
  day TEXT NOT NULL,
  event_type TEXT NOT NULL,
  total INTEGER NOT NULL,
  PRIMARY KEY (day, event_type)
);
"""

_INSERT = ("INSERT OR IGNORE INTO events (id, event_type, ts, params, received_at, event_id, "
           "sent_at, user_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_UPSERT_DAILY = ("INSERT INTO daily_stats (day, event_type, total) VALUES (?, ?, ?) "
                 "ON CONFLICT (day, event_type) DO UPDATE SET total = total + excluded.total")
_COLUMNS = "id, event_type, ts, params, received_at, event_id, sent_at"

Row = tuple[Any, ...]
"""(id, event_type, ts, params JSON, received_at, event_id, sent_at, user_id)"""


class SQLiteStore:
    """See the module docstring. `readonly` stores may be shared by threads; writable ones
    belong to one thread (the loader's)."""

    def __init__(self, path: Path, *, user_key: str = "user_id", readonly: bool = False,
                 cache_mb: int = 64) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._user_key = user_key
        self._days: dict[int, str] = {}
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._writer: sqlite3.Connection | None = None
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA busy_timeout=10000")
            con.execute(f"PRAGMA cache_size=-{cache_mb * 1024}")
            con.executescript(SCHEMA)
            # Per-user-hour summaries that make the per-user analytics (uniques, users, flows,
            # funnel) fast over millions of events; kept in the same transaction as the rows.
            userhours.ensure_tables(con)
            self._writer = con

    # -- connections -------------------------------------------------------------------------
    def _reader(self) -> sqlite3.Connection | None:
        """This thread's connection for queries; None while the database does not exist."""
        if self._closed:
            raise RuntimeError("cannot query: the store is closed")
        if self._writer is not None:
            return self._writer
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            if not self.path.exists():
                return None
            con = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                  isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA busy_timeout=10000")
            self._local.con = con
            with self._readers_lock:
                self._readers.append(con)
        return con

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection | None]:
        """One read transaction: every statement inside sees the same committed state."""
        con = self._reader()
        if con is None:
            yield None
            return
        con.execute("BEGIN")
        try:
            yield con
        finally:
            con.execute("COMMIT")

    # -- writing -----------------------------------------------------------------------------
    def _rows(self, events: list[Event]) -> tuple[list[Row], dict[tuple[int, str], int]]:
        """Rows to insert and their counts per (day number, event type), in one pass: this
        loop runs once per event, so it avoids function calls where it can."""
        key = self._user_key
        dumps = orjson.dumps
        rows: list[Row] = []
        append = rows.append
        counts: dict[tuple[int, str], int] = {}
        for e in events:
            params = e.get("params")
            if type(params) is dict:
                user = params.get(key)
                if user is not None and type(user) is not str:
                    user = str(user) if type(user) is int else user_text(user)
            else:
                params, user = ({} if params is None else params), None
            ts = e["ts"]
            event_type = e["event_type"]
            append((int(e["id"]), event_type, ts, dumps(params).decode(),
                    e.get("received_at", ts), e.get("event_id"), e.get("sent_at"), user))
            k = (int(ts // DAY_SECONDS), event_type)
            counts[k] = counts.get(k, 0) + 1
        return rows, counts

    def insert_batch(self, events: list[Event]) -> int:
        con = self._writer
        if con is None:
            raise RuntimeError("cannot insert: the store is read-only")
        if not events:
            return 0
        rows, counts = self._rows(events)
        con.execute("BEGIN IMMEDIATE")
        try:
            before = con.total_changes
            con.executemany(_INSERT, rows)
            if con.total_changes - before != len(rows):
                con.execute("ROLLBACK")
                con.execute("BEGIN IMMEDIATE")
                rows = self._insert_one_by_one(con, rows)
                counts = {}
                for row in rows:
                    k = (int(row[2] // DAY_SECONDS), row[1])
                    counts[k] = counts.get(k, 0) + 1
            con.executemany(_UPSERT_DAILY, [(self._day_string(d), t, n)
                                            for (d, t), n in counts.items()])
            userhours.apply_batch(con, [(r[0], r[1], r[2], r[7]) for r in rows])
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return len(rows)

    def _day_string(self, day: int) -> str:
        s = self._days.get(day)
        if s is None:
            if len(self._days) > 4096:  # a replay of old segments walks through many days
                self._days.clear()
            s = self._days[day] = day_string(day)
        return s

    @staticmethod
    def _insert_one_by_one(con: sqlite3.Connection, rows: list[Row]) -> list[Row]:
        """Insert row by row; the rows that were new (not a known id or event_id)."""
        cur = con.cursor()
        kept = []
        for row in rows:
            cur.execute(_INSERT, row)
            if cur.rowcount == 1:
                kept.append(row)
        return kept

    # -- reading -----------------------------------------------------------------------------
    def query_events(self, *, page: int, limit: int, start: float | None, end: float | None,
                     event_types: list[str] | None) -> tuple[int, list[Event]]:
        if page < 1 or limit < 1:
            raise ValueError("page and limit start at 1")
        where, args = _where(start, end, event_types)
        with self._snapshot() as con:
            if con is None:
                return 0, []
            total = self._count(con, start, end, event_types)
            cur = con.execute(
                f"SELECT {_COLUMNS} FROM events{where} ORDER BY ts DESC, id DESC "
                "LIMIT ? OFFSET ?", [*args, limit, (page - 1) * limit])
            rows = cur.fetchall()
        loads = orjson.loads
        return total, [public_event(r[0], r[1], r[2], loads(r[3]), r[4], r[5], r[6])
                       for r in rows]

    def _count(self, con: sqlite3.Connection, start: float | None, end: float | None,
               event_types: list[str] | None) -> int:
        """Events in [start, end] of the given types: whole days from daily_stats, the partial
        days at the edges from the events (see aggregate.full_days)."""
        days = full_days(start, end)
        if days is None:
            return _count_events(con, start, end, event_types)
        first, last = days
        total = self._sum_daily(con, None if first is None else day_string(first),
                                None if last is None else day_string(last), event_types)
        if first is not None and start is not None and start < first * DAY_SECONDS:
            total += _count_events(con, start, first * DAY_SECONDS, event_types, end_open=True)
        if last is not None and end is not None and (last + 1) * DAY_SECONDS <= end:
            total += _count_events(con, (last + 1) * DAY_SECONDS, end, event_types)
        return total

    @staticmethod
    def _sum_daily(con: sqlite3.Connection, start_day: str | None, end_day: str | None,
                   event_types: list[str] | None) -> int:
        where, args = _day_where(start_day, end_day, event_types)
        (n,) = con.execute(f"SELECT COALESCE(SUM(total), 0) FROM daily_stats{where}",
                           args).fetchone()
        return int(n)

    def daily_stats(self, start_day: str | None, end_day: str | None,
                    event_types: list[str] | None) -> list[tuple[str, str, int]]:
        where, args = _day_where(start_day, end_day, event_types)
        with self._snapshot() as con:
            if con is None:
                return []
            rows = con.execute(
                f"SELECT day, event_type, total FROM daily_stats{where} "
                "ORDER BY day, event_type", args).fetchall()
        return [(d, t, int(n)) for d, t, n in rows]

    def rollup(self, period: str, start: float | None, end: float | None,
               event_types: list[str] | None) -> list[dict[str, Any]]:
        first, last = day_bounds(start, end)
        return rollup_rows(self.daily_stats(first, last, event_types), period)

    def count(self) -> int:
        with self._snapshot() as con:
            if con is None:
                return 0
            (n,) = con.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(n)

    def close(self) -> None:
        self._closed = True
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for con in readers:
            con.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _types_clause(event_types: list[str] | None, args: list[Any]) -> str | None:
    if not event_types:
        return None
    args.extend(event_types)
    if len(event_types) == 1:
        return "event_type = ?"
    return f"event_type IN ({', '.join('?' * len(event_types))})"


def _where(start: float | None, end: float | None, event_types: list[str] | None,
           *, end_open: bool = False) -> tuple[str, list[Any]]:
    args: list[Any] = []
    parts = []
    types = _types_clause(event_types, args)
    if types:
        parts.append(types)
    if start is not None:
        parts.append("ts >= ?")
        args.append(start)
    if end is not None:
        parts.append("ts < ?" if end_open else "ts <= ?")
        args.append(end)
    return (" WHERE " + " AND ".join(parts) if parts else ""), args


def _day_where(start_day: str | None, end_day: str | None,
               event_types: list[str] | None) -> tuple[str, list[Any]]:
    args: list[Any] = []
    parts = []
    types = _types_clause(event_types, args)
    if types:
        parts.append(types)
    if start_day is not None:
        parts.append("day >= ?")
        args.append(start_day)
    if end_day is not None:
        parts.append("day <= ?")
        args.append(end_day)
    return (" WHERE " + " AND ".join(parts) if parts else ""), args


def _count_events(con: sqlite3.Connection, start: float | None, end: float | None,
                  event_types: list[str] | None, *, end_open: bool = False) -> int:
    where, args = _where(start, end, event_types, end_open=end_open)
    (n,) = con.execute(f"SELECT COUNT(*) FROM events{where}", args).fetchone()
    return int(n)
