"""SQLite event store: one file in the data directory, WAL mode.

Writer. One connection, used by the loader's thread only. Each batch (`insert_parsed`, or
`insert_batch` for events already parsed) is one IMMEDIATE transaction: the batch's rows
(INSERT OR IGNORE), an UPSERT of its (day, event_type) counts into daily_stats, one
analytics_queue row naming the events it inserted (an id range per stream, or the list of their
ids when some rows of the batch were stored already: userhours, "Queue rows"), the loader's
positions when it passes them, then COMMIT: the rows, the counts, the queue and the position
after them can never disagree.
The per-user-hour analytics tables (loader/analytics/userhours.py) are folded from that queue
by a separate pass (`summarize_pending`, run by the loader daemon behind the load) in
transactions of their own; readers stay exact meanwhile (userhours, "Coverage"). To count only
the rows actually inserted without a lookup per row, the fast path
compares the connection's change counter with the batch size: equal means every row was new
(the normal case). Otherwise (a replay, a client retry with a known event_id) the transaction is
rolled back and redone row by row, reading each statement's rowcount; that costs a few
microseconds per row and only on such batches.

Loading speed (bench/loader.py). The loader's target is 100,000 events/s on one core, and the
per-event cost was measured in instructions (callgrind) to choose:
- Rows go in ROWS_PER_STATEMENT at a time (a multi-row VALUES): the statement's setup and
  teardown in SQLite (opening four B-tree cursors, halting the VM) is paid once per statement
  instead of once per row.
- Absent optional values are bound as sentinels that SQL turns into NULL (`CASE ?n WHEN 0 THEN
  NULL ELSE ?n END` for event_id, always a string; `WHEN 0.5` for user_id, a string or an
  integer; `WHEN ''` for sent_at, always a number), never as None: Python's sqlite3 binds
  only int, float, str and bytearray directly and sends every other object, None included,
  through its adapter lookup, which fails with an AttributeError for `__conform__` that it
  builds and discards: about 3,000 instructions per None, a sixth of the whole insert. CASE
  rather than NULLIF: a function call in the VALUES makes SQLite keep a statement journal for
  every multi-row INSERT (a function may fail halfway), a copy of each page the statement
  touches, spilled to a temporary file; it cost 2 µs of system time per event.
- An integer user id (in the int64 range) is bound as it is, not as str(user): the user_id
  column's TEXT affinity stores it as the same decimal text, and binding an int instead of a
  new string saved about 1,500 instructions per event (Python's str() of the int, and the
  copy SQLite makes of every bound string). Users outside that range go through user_text.
- A plain event's Snowflake id is bound as an int, parsed from the decimal strings of the
  whole batch by one orjson call (_plain_ids, ~500 instructions per id; int() of each costs
  ~1,500): SQLite's conversion of a bound string under the INTEGER PRIMARY KEY's affinity,
  and the copy of it, cost ~1,000 instructions per event more than an int, and the analytics
  queue's id ranges need the ints anyway. Other events' ids are bound as they come (a string
  that is not an integer in the int64 range would fail the statement with "datatype
  mismatch"; daemon.is_event checks ids first).
- The plain events of a batch are inserted in id order (insert_parsed).
- The lines of a batch are parsed by one orjson call (daemon.parse_json).

Measured and not kept (callgrind instructions, and CPU time interleaved batch by batch):
- Letting SQLite parse (`INSERT ... SELECT value->>'id', ... FROM json_each(?)` over the batch
  as one JSON array): 25-40% slower per event than parsing with orjson and binding rows.
- Slicing the params text out of the line instead of orjson.dumps: the bytes.find / rfind /
  slice / decode maps cost about 1.3 µs per event, dumps + decode 0.2-0.3 µs.
- _split as column-wise C loops (map, set, min/max over the batch): 0.5% fewer instructions
  but 0.1 µs per event slower, each column pass walking the batch's objects out of cache.
- Ids made ints by map(int): ~1,500 instructions per id, more than binding them as ints saves.
  10 or 20 rows per statement instead of 50: 1,000 and 300 more.
- The analytics queue as a JSON list of the batch's ids (~20 bytes per event): its 100 KB per
  batch went through the WAL and the checkpoint, and the load with it ran 5-12% slower than
  without a queue (CPU time, interleaved runs; ~400 instructions per event). Its id ranges
  (userhours.id_ranges, ~600 instructions per event) left no difference that runs could tell.
- 16 KiB pages: 0.25 µs per event less system time in commits (fewer WAL writes), no clear
  change in user time, and only for new files (measured again with the id ranges: the same).
- Not possible from Python: a connection without SQLite's mutexes (~900 instructions per
  event, taken by every bind and allocation); sqlite3.connect has no SQLITE_OPEN_NOMUTEX.

Durability. `synchronous=NORMAL`: a commit is not fsynced, so a power loss may take back the
last commits; the WAL is fsynced at each checkpoint. That is safe because the loader's position
lives in this database (table loader_position), written in the transaction of the batch it
follows: whatever a power loss takes back, it takes the position back with the rows, and the
lines are loaded again. A crash of the process loses nothing that was committed. `sync()` is
the barrier for what may not be taken back: the loader calls it before retention deletes
segments whose events it loaded. Checkpoints run every 10,000 WAL pages (40 MiB) instead of
SQLite's 1,000: the pages a batch appends to (the tail of the table, of the ts index and of each
event type in the (event_type, ts) index) are rewritten by every batch, and a checkpoint copies
each page once however many times the WAL holds it (measured: 13% of the loading CPU time).

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
analytics read the per-user-hour tables instead, or scan a ts range (the ts index).

Totals. COUNT(*) over millions of rows costs a full index scan, so `query_events` counts whole
UTC days inside the range from daily_stats (exact: same transaction as the inserts) and only the
partial days at the edges from the events.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from itertools import repeat
from operator import floordiv, itemgetter
from pathlib import Path
from typing import Any

import orjson

from loader.aggregate import (
    DAY_SECONDS,
    MAX_TS,
    day_string,
    full_days,
    rollup_rows,
    split_range,
)
from loader.analytics import userhours
from loader.checkpoint import Committed, IsEvent, Position, StreamKey
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
CREATE TABLE IF NOT EXISTS loader_position (
  datacenter INTEGER NOT NULL,
  worker INTEGER NOT NULL,
  segment INTEGER NOT NULL,
  byte_offset INTEGER NOT NULL,
  PRIMARY KEY (datacenter, worker)
);
"""

ROWS_PER_STATEMENT = 50
"""Rows per INSERT (multi-row VALUES). Measured with callgrind on the bench's events: one row
per statement costs ~6,000 more instructions per event than 50; 200 is no better than 50."""

_MAX_ID = "9223372036854775807"
_INT64 = 1 << 63
_MIN_INT64 = -_INT64
_PLAIN_WIDTH = 6
_FULL_WIDTH = 8
_NO_USER = 0.5
"""The user_id bound for an event without a user: never equal to a user, which is bound as a
string or an integer, so `CASE WHEN 0.5` turns exactly it into NULL (module docstring)."""
_PLAIN_ROW = ("({0}, {1}, {2}, {3}, {4}, NULL, NULL, "
              "CASE {5} WHEN 0.5 THEN NULL ELSE {5} END)")
_FULL_ROW = ("({0}, {1}, {2}, {3}, {4}, CASE {5} WHEN 0 THEN NULL ELSE {5} END, "
             "CASE {6} WHEN '' THEN NULL ELSE {6} END, CASE {7} WHEN 0.5 THEN NULL ELSE {7} END)")
_INTO = ("INSERT OR IGNORE INTO events (id, event_type, ts, params, received_at, event_id, "
         "sent_at, user_id) VALUES ")
_UPSERT_DAILY = ("INSERT INTO daily_stats (day, event_type, total) VALUES (?, ?, ?) "
                 "ON CONFLICT (day, event_type) DO UPDATE SET total = total + excluded.total")
_UPSERT_POSITION = ("INSERT INTO loader_position (datacenter, worker, segment, byte_offset) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (datacenter, worker) DO UPDATE SET "
                    "segment = excluded.segment, byte_offset = excluded.byte_offset")
_COLUMNS = "id, event_type, ts, params, received_at, event_id, sent_at"
_FIRST = itemgetter(0)


PlainRow = tuple[str, str, float, str, float, Any]
"""(id, event_type, ts, params JSON, received_at, user) of a plain event; user is the user id
as a string, an int64 (stored as its decimal text), or _NO_USER."""
FullRow = tuple[Any, ...]
"""(id, event_type, ts, params JSON, received_at, event_id or 0, sent_at or '', user as in
PlainRow) of any other event."""
Counts = Counter[tuple[float, str]]
"""Events per (UTC day number, event type); the day may be a float (ts // 86400 of a float)."""


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
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA busy_timeout=10000")
            con.execute(f"PRAGMA cache_size=-{cache_mb * 1024}")
            con.execute("PRAGMA wal_autocheckpoint=10000")
            con.executescript(SCHEMA)
            # Per-user-hour summaries that make the per-user analytics (uniques, users, flows,
            # funnel) fast over millions of events; folded in behind the load.
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

    def _writer_or_raise(self, op: str) -> sqlite3.Connection:
        con = self._writer
        if con is None:
            raise RuntimeError(f"cannot {op}: the store is read-only or closed")
        return con

    # -- writing -----------------------------------------------------------------------------
    def _split(self, objects: list[Any], is_event: IsEvent | None, *, plain_ok: bool = True
               ) -> tuple[list[PlainRow], list[FullRow], int]:
        """Row values of the events among `objects`: (plain rows, other rows, not events).

        A plain event is the line the collector writes for an event without event_id or
        sent_at: exactly id (a 19-digit string), event_type, ts, params (an object) and
        received_at. It takes the first branch of this loop, which runs once per event and is
        a third of the loader's time: a few type checks, no function call but the params'
        JSON text, and a row of six values (bound to a statement that writes NULL for the two
        absent columns). Its id's digits and its ts's range are checked for the whole batch at
        once (_plain_ids); when that fails, the caller asks again with `plain_ok=False`.

        Every other object goes through `is_event` (None: trusted, as insert_batch's events
        are) and becomes a row of eight values.
        """
        key = self._user_key
        dumps = orjson.dumps
        plain: list[PlainRow] = []
        add_plain = plain.append
        full: list[FullRow] = []
        bad = 0
        for e in objects:
            if plain_ok and type(e) is dict and len(e) == 5:
                try:
                    i = e["id"]
                    event_type = e["event_type"]
                    ts = e["ts"]
                    params = e["params"]
                    received_at = e["received_at"]
                except KeyError:
                    pass
                else:
                    if (type(i) is str and len(i) == 19 and type(event_type) is str
                            and type(params) is dict
                            and (type(ts) is float or _is_int64(ts))
                            and (type(received_at) is float or _is_int64(received_at))):
                        user = params.get(key)
                        if type(user) is not str and not (
                                type(user) is int and _MIN_INT64 <= user < _INT64):
                            user = _NO_USER if user is None else user_text(user)
                        elif user == "":  # (nobody: user_text)
                            user = _NO_USER
                        add_plain((i, event_type, ts, dumps(params).decode(), received_at, user))
                        continue
            if is_event is not None and not is_event(e):
                bad += 1
                continue
            full.append(self._full_row(e))
        return plain, full, bad

    def _full_row(self, e: Event) -> FullRow:
        params = e.get("params")
        if type(params) is dict:
            user = user_text(params.get(self._user_key))
            text = orjson.dumps(params).decode()
        else:
            text, user = ("{}" if params is None else orjson.dumps(params).decode()), None
        ts = e["ts"]
        received_at = e.get("received_at")
        event_id = e.get("event_id")
        sent_at = e.get("sent_at")
        # An explicit null counts as absent: bound as NULL into a NOT NULL column, INSERT OR
        # IGNORE would drop the whole row without a word.
        return (e["id"], e["event_type"], ts, text, ts if received_at is None else received_at,
                0 if event_id is None else event_id, "" if sent_at is None else sent_at,
                _NO_USER if user is None else user)

    def insert_batch(self, events: list[Event], *,
                     positions: Mapping[StreamKey, Position] | None = None) -> int:
        """Insert parsed segment events; returns how many were new (see EventStore).

        Args:
            events: events with `id` (decimal string of an int64, or int), `event_type`, `ts`
                and optionally `params`, `received_at`, `event_id`, `sent_at`.
            positions: the loader's positions after these events, saved in the same
                transaction (see load_positions); None leaves them as they are.
        """
        return self.insert_parsed(events, is_event=None, positions=positions).inserted

    def insert_parsed(self, objects: list[Any], *, is_event: IsEvent | None,
                      positions: Mapping[StreamKey, Position] | None = None) -> Committed:
        """Insert the events among parsed segment lines, in one transaction with their
        daily_stats counts and (when given) the loader's positions after them.

        Args:
            objects: the parsed lines.
            is_event: which objects are events (the others are counted as bad and skipped);
                None when every object is known to be one.
            positions: see insert_batch.

        Plain events are inserted in id order: with several streams in a batch, that makes
        their rows and index entries appends instead of inserts between the rows of the
        stream loaded before (about 7% of the instructions on the bench's two streams). Only
        the order among equal event_ids could matter, and plain events have none.
        """
        con = self._writer_or_raise("insert")
        plain, full, bad = self._split(objects, is_event)
        plain.sort(key=_FIRST)
        flat = _flatten(plain)
        checked = _plain_ids(flat) if flat else ([], MAX_TS, 0.0)
        if checked is None:
            plain, full, bad = self._split(objects, is_event, plain_ok=False)
            flat, checked = [], ([], MAX_TS, 0.0)
        plain_ids, first_ts, last_ts = checked
        flat[0::_PLAIN_WIDTH] = plain_ids  # bound as integers (module docstring)
        ids: list[Any] = plain_ids + [row[0] for row in full]
        if not ids and positions is None:
            return Committed(ids, 0, bad)
        con.execute("BEGIN IMMEDIATE")
        try:
            before = con.total_changes
            _insert(con, _PLAIN_ROW, _PLAIN_WIDTH, flat)
            _insert(con, _FULL_ROW, _FULL_WIDTH, _flatten(full))
            inserted = len(ids)
            # The analytics tables follow in their own pass (userhours, "Maintenance").
            if con.total_changes - before == inserted:
                counts = _counts(flat, full, first_ts, last_ts)
                min_ts = min(first_ts, min(row[2] for row in full)) if full else first_ts
                # Every row new: id ranges name exactly them.
                queued: list[Any] = (plain_ids + _as_ints(ids[len(plain_ids):]) if full
                                     else plain_ids)
                enqueue = userhours.enqueue
            else:
                con.execute("ROLLBACK")
                con.execute("BEGIN IMMEDIATE")
                rows = [(*r[:5], 0, "", r[5]) for r in plain] + full
                rows = self._insert_one_by_one(con, rows)
                inserted = len(rows)
                counts = Counter((r[2] // DAY_SECONDS, r[1]) for r in rows)
                queued = [r[0] for r in rows]
                min_ts = min([r[2] for r in rows], default=0.0)
                enqueue = userhours.enqueue_ids  # ranges would span the rows skipped
            if counts:
                con.executemany(_UPSERT_DAILY, [(self._day_string(int(d)), t, n)
                                                for (d, t), n in counts.items()])
            if queued:
                enqueue(con, queued, min_ts)
            if positions is not None:
                _write_positions(con, positions)
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return Committed(ids, inserted, bad)

    def summarize_pending(self, max_batches: int = userhours.QUEUE_BATCHES_PER_PASS) -> int:
        """One transaction of the analytics pass (userhours.apply_pending): how many queued
        batches it folded into the analytics tables; 0 when they were caught up."""
        return userhours.apply_pending(self._writer_or_raise("summarize"), max_batches)

    def _day_string(self, day: int) -> str:
        s = self._days.get(day)
        if s is None:
            if len(self._days) > 4096:  # a replay of old segments walks through many days
                self._days.clear()
            s = self._days[day] = day_string(day)
        return s

    @staticmethod
    def _insert_one_by_one(con: sqlite3.Connection, rows: list[FullRow]) -> list[FullRow]:
        """Insert row by row; the rows that were new (not a known id or event_id)."""
        cur = con.cursor()
        insert = _insert_sql(_FULL_ROW, _FULL_WIDTH, 1)
        kept = []
        for row in rows:
            cur.execute(insert, row)
            if cur.rowcount == 1:
                kept.append(row)
        return kept

    # -- the loader's position ---------------------------------------------------------------
    def load_positions(self) -> dict[StreamKey, Position]:
        """The positions saved with the last committed batch; empty for a new store."""
        con = self._writer_or_raise("load positions")
        rows = con.execute("SELECT datacenter, worker, segment, byte_offset "
                           "FROM loader_position").fetchall()
        return {(dc, worker): Position(segment, offset) for dc, worker, segment, offset in rows}

    def save_positions(self, positions: Mapping[StreamKey, Position]) -> None:
        """Save positions that move without loading anything (past finished segments)."""
        self.insert_batch([], positions=positions)

    def sync(self) -> None:
        """Make every commit so far survive a power loss.

        Commits are not fsynced (synchronous=NORMAL, see the module docstring); the committed
        state of a WAL database is the main file plus the WAL, so fsyncing both makes it
        durable. Costs two fsyncs: for the rare moments (retention) when the loader is about
        to delete the only other copy of what it loaded.
        """
        self._writer_or_raise("sync")
        for path in (self.path, Path(f"{self.path}-wal")):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # no WAL: everything is in the main file
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

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

    @staticmethod
    def _daily_rows(con: sqlite3.Connection, start_day: str | None, end_day: str | None,
                    event_types: list[str] | None) -> list[tuple[str, str, int]]:
        where, args = _day_where(start_day, end_day, event_types)
        rows = con.execute(f"SELECT day, event_type, total FROM daily_stats{where} "
                           "ORDER BY day, event_type", args).fetchall()
        return [(d, t, int(n)) for d, t, n in rows]

    def daily_stats(self, start_day: str | None, end_day: str | None,
                    event_types: list[str] | None) -> list[tuple[str, str, int]]:
        with self._snapshot() as con:
            return [] if con is None else self._daily_rows(con, start_day, end_day, event_types)

    def rollup(self, period: str, start: float | None, end: float | None,
               event_types: list[str] | None) -> list[dict[str, Any]]:
        """Exact for the range: whole days from daily_stats, the parts of days at its edges
        counted from the events (the ts index), in one read transaction."""
        days, pieces = split_range(start, end)
        with self._snapshot() as con:
            if con is None:
                return []
            rows: list[tuple[str, str, int]] = []
            if days is not None:
                first, last = days
                rows += self._daily_rows(con, None if first is None else day_string(first),
                                         None if last is None else day_string(last),
                                         event_types)
            for piece in pieces:
                # Per event type of the day (daily_stats lists them), a count of a range of
                # the (event_type, ts) index: no table row is read, unlike a GROUP BY over
                # the ts range.
                day = day_string(piece.day)
                where, args = _day_where(day, day, event_types)
                types = [t for (t,) in con.execute(
                    f"SELECT event_type FROM daily_stats{where} AND total > 0", args)]
                for t in types:
                    n = _count_events(con, piece.lo, piece.hi, [t], end_open=not piece.closed)
                    if n:
                        rows.append((day, t, n))
        return rollup_rows(rows, period)

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


def _is_int64(x: Any) -> bool:
    return type(x) is int and _MIN_INT64 <= x < _INT64


def _plain_ids(flat: list[Any]) -> tuple[list[int], float, float] | None:
    """The plain rows' ids (flat values, sorted by id) as ints, and their smallest and largest
    ts, after the checks of _split's first branch done for the whole batch at once, in C:
    every id (19 characters) is ASCII digits of an int64, every ts in [0, MAX_TS) (its day has
    a string); None when one fails. str.isdigit would accept other scripts' digits (and walks
    a Unicode table per character); bytes.isdigit does neither.

    The ids are joined by commas and parsed by one orjson call (~500 instructions per id;
    int() of each costs ~1,500): binding ints instead of the decimal strings saves ~1,000
    per event in the insert, and the analytics queue's ranges need them as ints anyway. The
    ts bounds serve the checks, daily_stats (_counts) and the queue's min_ts: each min or max
    walks the batch (~150 instructions per event)."""
    ids = flat[0::_PLAIN_WIDTH]
    try:
        digits = "".join(ids).encode("ascii")
    except UnicodeEncodeError:
        return None
    tss = flat[2::_PLAIN_WIDTH]
    first_ts, last_ts = min(tss), max(tss)
    # The rows are sorted by id, and 19-digit strings sort as their numbers: the last is the
    # largest.
    if not (digits.isdigit() and ids[-1] <= _MAX_ID and first_ts >= 0 and last_ts < MAX_TS):
        return None
    try:
        parsed: list[int] = orjson.loads(f"[{','.join(ids)}]")
    except orjson.JSONDecodeError:  # leading zeros ("0123..."): digits, but not JSON numbers
        parsed = [int(i) for i in ids]
    return parsed, first_ts, last_ts


def _flatten(rows: list[Any]) -> list[Any]:
    """The values of `rows` (tuples) in one list. A loop of list.extend, each copying a
    whole tuple, costs ~400 instructions per row of six; list(chain.from_iterable(rows)),
    one iterator step per value, ~650."""
    flat: list[Any] = []
    extend = flat.extend
    for row in rows:
        extend(row)
    return flat


def _as_ints(ids: list[Any]) -> list[int]:
    """Ids (decimal strings of int64s, or ints) as ints: one orjson call when they are all
    canonical decimal strings."""
    try:
        parsed: list[int] = orjson.loads(f"[{','.join(ids)}]")
    except (TypeError, orjson.JSONDecodeError):  # ints among them, or leading zeros
        return [int(i) for i in ids]
    return parsed


def _counts(flat: list[Any], full: list[FullRow], first_ts: float, last_ts: float) -> Counts:
    """Events per (day number, event type) of the rows: the plain ones (flat values, their ts
    within [first_ts, last_ts]) by columns, in C; when they all fall on one UTC day (live
    traffic) only their types are counted."""
    types = flat[1::_PLAIN_WIDTH]
    counts: Counts = Counter()
    if types:
        day = first_ts // DAY_SECONDS
        if day == last_ts // DAY_SECONDS:
            counts.update({(day, t): n for t, n in Counter(types).items()})
        else:
            counts.update(zip(map(floordiv, flat[2::_PLAIN_WIDTH], repeat(DAY_SECONDS)), types,
                              strict=True))
    counts.update((row[2] // DAY_SECONDS, row[1]) for row in full)
    return counts


@functools.cache
def _insert_sql(row: str, width: int, rows: int) -> str:
    """INSERT OR IGNORE of `rows` rows of the template `row`, its parameters numbered."""
    return _INTO + ", ".join(row.format(*(f"?{r * width + c + 1}" for c in range(width)))
                             for r in range(rows))




def _insert(con: sqlite3.Connection, row: str, width: int, flat: list[Any]) -> None:
    """INSERT OR IGNORE flat row values (`width` per row): whole statements of
    ROWS_PER_STATEMENT rows, then the remainder one row per statement."""
    if not flat:
        return
    step = width * ROWS_PER_STATEMENT
    whole = len(flat) - len(flat) % step
    if whole:
        con.executemany(_insert_sql(row, width, ROWS_PER_STATEMENT),
                        [flat[i:i + step] for i in range(0, whole, step)])
    if whole < len(flat):
        con.executemany(_insert_sql(row, width, 1),
                        [flat[i:i + width] for i in range(whole, len(flat), width)])


def _write_positions(con: sqlite3.Connection, positions: Mapping[StreamKey, Position]) -> None:
    con.executemany(_UPSERT_POSITION, [(dc, worker, p.segment, p.offset)
                                       for (dc, worker), p in positions.items()])
