"""Analytics tables of the SQLite store: one summary row per (UTC hour, user), kept by the loader.

Why. uniques, users, flows and funnels group events by user. The events table has no user
index (loader/stores/sqlite.py explains why: random keys make every batch dirty one index page
per row), so answering them from the events costs a scan of the range plus a sort: seconds at
a million events (bench/analytics.py). These tables answer them from about (active users x
hours) rows instead, and every key starts with the hour, so the loader's writes stay about as
local as those of the ts index.

What.
    user_hours(hour, user_id)   per user with events in that UTC hour:
        n                       how many
        quarters                bitmask of the 15-minute quarters with one (bit q: quarter q)
        first_ts, first_id, first_type / last_ts, last_id, last_type
                                the first and the last of them in (ts, id) order
        firsts                  JSON {event_type: [ts, id]}: the first of each type
    user_hour_events(hour, user_id, ts, id)   event_type: the events themselves, in order
    hour_flows(hour, from_type, to_type)      n: pairs of consecutive events of one user that
                                lie inside one user-hour (a pair across hours joins a row's last
                                event to the user's next row's first: readers pair those)
    analytics_meta              ('user_hours', SCHEMA_VERSION) once the tables cover the store
    analytics_queue(seq)        min_ts, ids, ranges: loaded batches waiting for the analytics
                                pass ("Queue rows" below)

Exactness. Readers use whole hours from the summaries and the events of the partial hours at
the edges of a range, so every answer is exact for any [from, to]. Local days are exact for
time zones whose offset is a multiple of 15 minutes (every zone since 1972): a quarter never
straddles a local midnight.

Maintenance contract. The tables trail the event load instead of riding in its transaction:
folding an event in costs several times what inserting it does (one summary row rewritten per
(hour, user), the event inserted again into user_hour_events), and loading at 100,000 events/s
on one core (issue 4) left no room for that. So:
    ensure_tables(con)      at open: create, and backfill from the events once
    enqueue(con, ids, ...)  in each load transaction: one analytics_queue row naming the events
                            the batch inserted (a few id ranges, "Queue rows") and the smallest
                            ts among them
    apply_pending(con)      the analytics pass (the loader runs it when idle, and at least every
                            few seconds of a long backlog): folds queued batches into the tables
                            and deletes them from the queue, in one transaction
The queue row commits with the events it names, and leaves the queue with the summaries that
fold them in, so a crash anywhere leaves every event either summarized or queued, never both
and never neither. Coverage for readers: an hour is summarized when no queued event lies in
it; every queued event has ts >= pending_since(con), so readers answer whole hours before that
from the tables and everything from there on from the events table (loader/analytics/
sqlite.py), which is exact whatever the pass's lag, and costs the reader a scan of the hours
the pass has not reached (live traffic: the current hour).

Queue rows. A batch whose events were all new (the store's common case) is queued as id
ranges, one per stream: `ranges` is the JSON [[lo, hi], ...] of the smallest and the largest id
the batch inserted with each (datacenter, worker) bits, `(id >> 12) & 1023` (SPEC §4), and
`ids` is ''. A range names every event of lo's stream with lo <= id <= hi, read back by the
pass with one range scan of the events table's primary key: ~40 bytes per stream and batch
instead of the ~20 bytes per event of a list of ids, which the load wrote into the WAL and the
checkpoint copied again (5-12% of the load's CPU time, bench/loader.py). A batch of which some
rows were already stored (a replay, a client retry of an event_id) lists the ids it inserted
instead (enqueue_ids: `ids` a JSON array, `ranges` NULL; rows written before ranges existed
look the same): its ranges would span the rows it skipped, which the pass would read again.

Why ranges are exact. Nothing is missed: every id a batch inserted lies in its stream's
range, events are never deleted, and the pass reads each range when it runs, after the
batch's commit. Nothing is counted twice, even where a range names more events than its
batch inserted: the pass folds the union of what its queue rows name (one entry per id), and
apply_batch skips an event that user_hour_events already holds (folded by an earlier pass
through another row), so each event is counted once whichever rows name it. Normally a range
names nothing more: a stream's lines come from one worker's files, in increasing id order,
and each batch continues its streams where the last one stopped, so the ranges of one stream
are disjoint and lie above every id of that stream loaded before. Only ids loaded out of
their stream's order (minted by a worker restarted with its clock stepped back) or given to
insert_batch by a caller can fall inside an older range of their stream, and then the rule
above keeps the count exact. Ranges are per stream because ids of different streams
interleave in value (workers mint in the same milliseconds): a range over all of a batch's
ids would name the other streams' events of the same moments, and one of a stream that loads
slower than another would be named again by every batch of the faster one. An event folded
early, through another batch's range, leaves readers exact too: its own row stays queued
until a pass consumes it, so its hour is still read from the events table (pending_since).
Versions before ranges fail on a range row (json_each of '') instead of skipping its events:
their pass is retried and their readers stay exact, answering from the events table.

apply_batch(con, rows) folds events into the tables. Per touched (hour, user): one small
summary row is rewritten and the new events are inserted. An event that arrives after the
user's last one in its hour (live traffic) needs nothing else; one that lands between older
ones (a replay, or a client sending history) also reads that user-hour's events to recount
its pairs.
"""

from __future__ import annotations

import functools
import math
import sqlite3
import struct
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain, groupby
from operator import itemgetter
from typing import Any

import orjson

HOUR = 3600
QUARTER = 900
BACKFILL_CHUNK = 20_000

SCHEMA_VERSION = "2"
TABLES = ("user_hours", "user_hour_events", "hour_flows")
SCHEMA = """
CREATE TABLE IF NOT EXISTS user_hours (
  hour INTEGER NOT NULL,
  user_id TEXT NOT NULL,
  n INTEGER NOT NULL,
  quarters INTEGER NOT NULL,
  first_ts REAL NOT NULL,
  first_id INTEGER NOT NULL,
  first_type TEXT NOT NULL,
  last_ts REAL NOT NULL,
  last_id INTEGER NOT NULL,
  last_type TEXT NOT NULL,
  firsts TEXT NOT NULL,
  PRIMARY KEY (hour, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_hour_events (
  hour INTEGER NOT NULL,
  user_id TEXT NOT NULL,
  ts REAL NOT NULL,
  id INTEGER NOT NULL,
  event_type TEXT NOT NULL,
  PRIMARY KEY (hour, user_id, ts, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS hour_flows (
  hour INTEGER NOT NULL,
  from_type TEXT NOT NULL,
  to_type TEXT NOT NULL,
  n INTEGER NOT NULL,
  PRIMARY KEY (hour, from_type, to_type)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS analytics_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
QUEUE_SCHEMA = """
CREATE TABLE IF NOT EXISTS analytics_queue (
  seq INTEGER PRIMARY KEY,
  min_ts REAL NOT NULL,
  ids TEXT NOT NULL,
  ranges TEXT
)"""
"""Batches loaded but not yet folded into the tables: `ranges` a JSON array of per-stream id
ranges [lo, hi] and `ids` '', or `ids` a JSON array of the event ids a batch inserted and
`ranges` NULL (module docstring, "Queue rows"); `min_ts` the smallest ts among the events the
batch inserted (readers' coverage, see pending_since). A queue from before ranges gets the
column at open (ensure_tables)."""
STREAM_MASK = 0x3FF
"""(datacenter, worker) bits of a Snowflake, after a shift by 12: the id's stream."""
QUEUE_BATCHES_PER_PASS = 40
"""Queued batches folded per apply_pending transaction (with the default loader.batch_size,
200,000 events): big enough that the per-statement costs vanish, small enough that one
transaction does not hold the write lock for long."""
ENTRIES_PER_LOOKUP = 200
HOURS_PER_LOOKUP = 500
"""Summary rows are read for up to this many hours per statement (SQLite's default limit of
bound parameters is 32766; this keeps statements short)."""

Entry = tuple[float, int, str]
"""(ts, id, event_type) of one event of a user-hour."""


@dataclass(slots=True)
class Summary:
    """A user_hours row (without its key), for a sorted, non-empty seq."""

    n: int
    quarters: int
    first: Entry
    last: Entry
    firsts: dict[str, list[Any]]

    def values(self) -> tuple[Any, ...]:
        return (self.n, self.quarters, self.first[0], self.first[1], self.first[2],
                self.last[0], self.last[1], self.last[2], orjson.dumps(self.firsts).decode())


def pairs_of(seq: list[Entry]) -> Counter[tuple[str, str]]:
    """Consecutive (type, next type) pairs of a sorted seq."""
    types = [e[2] for e in seq]
    return Counter(zip(types, types[1:], strict=False))


def summarize(seq: list[Entry]) -> Summary:
    """The summary of a sorted, non-empty seq. Comprehensions rather than one loop: this runs
    for every touched row of every batch the loader writes."""
    quarters = 0
    for q in {math.floor(e[0] / QUARTER) % 4 for e in seq}:
        quarters |= 1 << q
    # Reversed, so the first occurrence of each type is the one left in the dict.
    firsts = {t: [ts, id_] for ts, id_, t in reversed(seq)}
    return Summary(len(seq), quarters, seq[0], seq[-1], firsts)


def appended(old: Summary, new: list[Entry]) -> Summary:
    """The summary of old's events followed by `new`, all after them."""
    s = summarize(new)
    firsts = dict(old.firsts)
    for t, first in s.firsts.items():
        firsts.setdefault(t, first)
    return Summary(old.n + s.n, old.quarters | s.quarters, old.first, s.last, firsts)


def inserted(old: Summary, new: list[Entry]) -> Summary:
    """The summary of old's events with `new` (sorted, not known to old) among them."""
    s = summarize(new)
    firsts = dict(old.firsts)
    for t, (ts, id_) in s.firsts.items():
        known = firsts.get(t)
        if known is None or (ts, id_) < (known[0], known[1]):
            firsts[t] = [ts, id_]
    return Summary(old.n + s.n, old.quarters | s.quarters, min(old.first, s.first),
                   max(old.last, s.last), firsts)


_KEY = itemgetter(0, 1)
_SUMMARY_COLUMNS = ("n, quarters, first_ts, first_id, first_type, last_ts, last_id, last_type, "
                    "firsts")


def _summaries(con: sqlite3.Connection, keys: Iterable[tuple[int, str]]
               ) -> dict[tuple[int, str], Summary]:
    """The stored summaries of `keys`, read hour by hour (a few statements per batch instead
    of one per key: live traffic touches one or two hours)."""
    wanted = set(keys)
    hours = sorted({h for h, _ in wanted})
    out: dict[tuple[int, str], Summary] = {}
    for i in range(0, len(hours), HOURS_PER_LOOKUP):
        chunk = hours[i:i + HOURS_PER_LOOKUP]
        sql = (f"SELECT hour, user_id, {_SUMMARY_COLUMNS} FROM user_hours "
               f"WHERE hour IN ({', '.join('?' * len(chunk))})")
        for hour, user, n, q, fts, fid, ft, lts, lid, lt, firsts in con.execute(sql, chunk):
            if (hour, user) in wanted:
                out[(hour, user)] = Summary(n, q, (fts, fid, ft), (lts, lid, lt),
                                            orjson.loads(firsts))
    return out


Late = tuple[int, str, float, int, str]
"""(hour, user, ts, id, event_type) of an event landing before its user-hour's last one."""


def _known_ids(con: sqlite3.Connection, late: list[Late]) -> set[int]:
    """Ids of `late` already stored (a replay): one primary-key probe each, in SQL."""
    known: set[int] = set()
    for i in range(0, len(late), ENTRIES_PER_LOOKUP):
        chunk = late[i:i + ENTRIES_PER_LOOKUP]
        # A join, not `(hour, user_id, ts, id) IN (VALUES ...)`: SQLite 3.40 plans that IN
        # as a scan of the whole table.
        sql = (f"WITH n(hour, user_id, ts, id) AS "
               f"(VALUES {', '.join(['(?, ?, ?, ?)'] * len(chunk))}) "
               "SELECT e.id FROM n JOIN user_hour_events e ON e.hour = n.hour "
               "AND e.user_id = n.user_id AND e.ts = n.ts AND e.id = n.id")
        known.update(r[0] for r in con.execute(sql, [x for e in chunk for x in e[:4]]))
    return known


_NEIGHBOUR = ("(SELECT json_array(e.id, e.event_type) FROM user_hour_events e "
              "WHERE e.hour = n.hour AND e.user_id = n.user_id AND (e.ts, e.id) {op} (n.ts, n.id) "
              "ORDER BY e.ts {order}, e.id {order} LIMIT 1)")
_NEIGHBOURS_SQL = ", ".join(_NEIGHBOUR.format(op=op, order=order)
                            for op, order in (("<", "DESC"), (">", "ASC")))


def _neighbours(con: sqlite3.Connection, late: list[Late]
                ) -> dict[int, tuple[int | None, str | None, int | None, str | None]]:
    """For each late event, already inserted: the ids and types of the events just before
    and just after it in its user-hour. Correlated subqueries, so each neighbour is one
    index seek inside SQLite rather than a statement from Python."""
    out: dict[int, tuple[int | None, str | None, int | None, str | None]] = {}
    loads = orjson.loads
    for i in range(0, len(late), ENTRIES_PER_LOOKUP):
        chunk = late[i:i + ENTRIES_PER_LOOKUP]
        sql = (f"WITH n(hour, user_id, ts, id) AS "
               f"(VALUES {', '.join(['(?, ?, ?, ?)'] * len(chunk))}) "
               f"SELECT n.id, {_NEIGHBOURS_SQL} FROM n")
        for id_, pred, succ in con.execute(sql, [x for e in chunk for x in e[:4]]):
            pid, ptype = loads(pred) if pred is not None else (None, None)
            sid, stype = loads(succ) if succ is not None else (None, None)
            out[id_] = (pid, ptype, sid, stype)
    return out


def _late_pairs(entries: list[Entry], new_ids: set[int],
                near: dict[int, tuple[int | None, str | None, int | None, str | None]]
                ) -> Counter[tuple[str, str]]:
    """How the user-hour's pairs change when the sorted `entries` land among its events.

    Every pair that ends or starts at a new event is new; it is counted once, from its first
    event (`e -> successor`), plus `predecessor -> e` when the predecessor is old. Each run of
    consecutive new events splits one old pair (its old predecessor -> its old successor),
    which no longer exists.
    """
    delta: Counter[tuple[str, str]] = Counter()
    run_pred: str | None = None
    for _, id_, t in entries:
        pid, ptype, sid, stype = near[id_]
        starts_run = pid is None or pid not in new_ids
        if starts_run:
            run_pred = ptype
            if ptype is not None:
                delta[(ptype, t)] += 1
        if stype is not None:
            delta[(t, stype)] += 1
            if sid not in new_ids and run_pred is not None:
                delta[(run_pred, stype)] -= 1
        if sid is None or sid not in new_ids:
            run_pred = None
    return delta


_INSERT_EVENTS = ("INSERT INTO user_hour_events (hour, user_id, ts, id, event_type) "
                  "VALUES (?, ?, ?, ?, ?)")


def _insert_late(con: sqlite3.Connection, late: list[Late]) -> list[Late]:
    """Insert the late events; those that were not stored yet. The common case (all new) is
    told by the change counter, as the store does for its own inserts; a replay rolls back to
    a savepoint and probes each id first."""
    con.execute("SAVEPOINT late_events")
    before = con.total_changes
    con.executemany(_INSERT_EVENTS.replace("INSERT", "INSERT OR IGNORE", 1), late)
    if con.total_changes - before != len(late):
        con.execute("ROLLBACK TO late_events")
        known = _known_ids(con, late)
        late = [e for e in late if e[3] not in known]
        con.executemany(_INSERT_EVENTS, late)
    con.execute("RELEASE late_events")
    return late


ROWS_PER_STATEMENT = 50
"""Rows per INSERT of the pass (a multi-row VALUES), as the store does for the events: a
statement's setup and teardown are paid once per 50 rows instead of once per row."""


@functools.cache
def _multi_row(sql: str, rows: int) -> str:
    """`sql` (one `VALUES (?, ...)` at its end) with `rows` rows of placeholders."""
    head, _, one = sql.rpartition("VALUES ")
    return head + "VALUES " + ", ".join([one] * rows)


def _insert_rows(con: sqlite3.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """executemany of `sql` over `rows`, ROWS_PER_STATEMENT rows per statement."""
    whole = len(rows) - len(rows) % ROWS_PER_STATEMENT
    if whole:
        con.executemany(_multi_row(sql, ROWS_PER_STATEMENT),
                        [list(chain.from_iterable(rows[i:i + ROWS_PER_STATEMENT]))
                         for i in range(0, whole, ROWS_PER_STATEMENT)])
    if whole < len(rows):
        con.executemany(sql, rows[whole:])


def apply_batch(con: sqlite3.Connection,
                rows: Iterable[tuple[int, str, float, str | None]]) -> None:
    """Fold newly inserted events into the tables. `rows` are (id, event_type, ts, user_id);
    events without a user are skipped. Runs inside the caller's transaction. Idempotent: an
    event already in user_hour_events is ignored, so a replayed batch changes nothing.

    No user-hour's events are read back: events after the last one of their user-hour
    (live traffic) extend its summary; the others (late) are inserted first and then asked
    for their neighbours, which is all that changes in the pairs.
    """
    groups: dict[tuple[int, str], list[Entry]] = defaultdict(list)
    for id_, event_type, ts, user in rows:
        if user is not None:
            groups[(math.floor(ts / HOUR), user)].append((ts, int(id_), event_type))
    if not groups:
        return
    stored = _summaries(con, groups)
    flow_delta: Counter[tuple[int, str, str]] = Counter()
    summaries: list[tuple[Any, ...]] = []
    inserts: list[Late] = []
    late: list[Late] = []

    def record(key: tuple[int, str], delta: Counter[tuple[str, str]], summary: Summary) -> None:
        for (a, b), n in delta.items():
            if n:
                flow_delta[(key[0], a, b)] += n
        summaries.append((*key, *summary.values()))

    dumps = orjson.dumps
    floor = math.floor
    for key, new in groups.items():
        old = stored.get(key)
        if old is None and len(new) == 1:
            # The most common row by far when users are many and their visits short: one
            # event, no pair, a summary written out directly (a third of the pass's time).
            ts, id_, t = new[0]
            summaries.append((*key, 1, 1 << floor(ts / QUARTER) % 4, ts, id_, t, ts, id_, t,
                              dumps({t: [ts, id_]}).decode()))
            inserts.append((*key, ts, id_, t))
            continue
        new.sort()
        if old is None or new[0] > old.last:
            delta = pairs_of(new)
            if old is not None:
                delta[(old.last[2], new[0][2])] += 1
            record(key, delta, summarize(new) if old is None else appended(old, new))
            inserts.extend((*key, ts, id_, t) for ts, id_, t in new)
        else:
            late.extend((*key, ts, id_, t) for ts, id_, t in new)
    _insert_rows(con, _INSERT_EVENTS, inserts)
    if late:
        late = _insert_late(con, late)
    if late:
        near = _neighbours(con, late)
        for key, group in groupby(late, key=_KEY):
            entries = [(ts, id_, t) for _, _, ts, id_, t in group]
            new_ids = {e[1] for e in entries}
            record(key, _late_pairs(entries, new_ids, near), inserted(stored[key], entries))
    _insert_rows(con, f"INSERT OR REPLACE INTO user_hours (hour, user_id, {_SUMMARY_COLUMNS}) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", summaries)
    con.executemany("INSERT INTO hour_flows (hour, from_type, to_type, n) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (hour, from_type, to_type) DO UPDATE SET n = n + excluded.n",
                    [(h, a, b, n) for (h, a, b), n in flow_delta.items() if n])


def enqueue(con: sqlite3.Connection, ids: list[int], min_ts: float) -> None:
    """Queue the events a load batch inserted, every one of its rows new, for the analytics
    pass: one analytics_queue row of their id ranges, one per stream (id_ranges; module
    docstring, "Queue rows"). Inside the batch's transaction. `ids` are ints; events without
    a user are queued too (the pass skips them), which saves a per-event test here, on the
    loader's hot path, and only widens the readers' uncovered range a little."""
    if not ids:
        return
    con.execute("INSERT INTO analytics_queue (min_ts, ids, ranges) VALUES (?, '', ?)",
                (min_ts, orjson.dumps(id_ranges(ids)).decode()))


def enqueue_ids(con: sqlite3.Connection, ids: list[Any], min_ts: float) -> None:
    """Queue the events a load batch inserted as the list of their ids: for a batch of which
    some rows were already stored (a replay, a known event_id), whose ranges would span them.

    The ids are joined as they are (one C call); only a batch with int ids, or with digit
    strings that are not JSON numbers (leading zeros: "007" loads as 7), is normalized."""
    if not ids:
        return
    try:
        text = ",".join(ids)
    except TypeError:
        text = ""
    if not text or text.startswith("0") or ",0" in text:
        text = ",".join([str(int(i)) for i in ids])
    con.execute("INSERT INTO analytics_queue (min_ts, ids) VALUES (?, ?)", (min_ts, f"[{text}]"))


_STREAM_LOW = bytes(b >> 4 for b in range(256))
"""Byte 1 of a little-endian int64 (id bits 8-15) -> stream bits 0-3 (id bits 12-15)."""
_STREAM_HIGH = bytes(b & 0x3F for b in range(256))
"""Byte 2 (id bits 16-23) -> stream bits 4-9 (id bits 16-21)."""


def id_ranges(ids: list[int]) -> list[list[int]]:
    """[lo, hi] per stream of `ids` (int64s): the smallest and the largest id with each
    (datacenter, worker) bits, `(id >> 12) & 1023`, in stream order.

    This runs for every batch the loader writes, so the ids' streams are found without a
    Python operation per id: a sorted copy (one comparison per id: the store's plain events
    come sorted) packed by struct as little-endian int64s, whose bytes 1 and 2 hold the stream
    bits. When all ids agree on the upper six stream bits (one datacenter, workers 0-15 or
    16-31: the usual case) the lower four tell the streams apart, one byte per id, and each
    stream's first and last position in the sorted ids are a find and an rfind (memchr).
    Otherwise a loop groups them. (Negative ids, which only insert_batch could be given, pack
    as two's complement: the bits SQLite's `(id >> 12) & 1023` takes too.)
    """
    if not ids:
        return []
    ints = sorted(ids)
    n = len(ints)
    raw = struct.pack(f"<{n}q", *ints)
    high = raw[2::8].translate(_STREAM_HIGH)
    if high.count(high[0]) == n:
        low = raw[1::8].translate(_STREAM_LOW)
        return [[ints[low.find(v)], ints[low.rfind(v)]] for v in range(16) if v in low]
    ranges: dict[int, list[int]] = {}
    for i in ints:
        r = ranges.setdefault((i >> 12) & STREAM_MASK, [i, i])
        r[1] = i
    return [ranges[k] for k in sorted(ranges)]


def pending_since(con: sqlite3.Connection) -> float | None:
    """The smallest ts of the events loaded but not yet summarized, None when there are none.
    Hours before it are fully summarized (module docstring, "Coverage")."""
    try:
        row = con.execute("SELECT min(min_ts) FROM analytics_queue").fetchone()
    except sqlite3.OperationalError:  # no such table: a store written before the queue
        return None
    return None if row[0] is None else float(row[0])


def apply_pending(con: sqlite3.Connection, max_batches: int = QUEUE_BATCHES_PER_PASS) -> int:
    """The analytics pass: fold up to `max_batches` queued batches into the tables and delete
    them from the queue, in one IMMEDIATE transaction (call outside any). Returns how many
    queue rows it consumed (0: nothing was pending).

    The events are read back from the events table: a range as one scan of the primary key
    between its bounds, keeping its stream's rows; a list of ids joined in SQL (json_each:
    one rowid seek per event). Pages the load has just written, in both cases. The rows are
    gathered by id, so an event that two queue rows name is folded once; one that an earlier
    pass folded is skipped by apply_batch (module docstring, "Why ranges are exact"). An
    event the table no longer holds cannot occur (events are never deleted).
    """
    con.execute("BEGIN IMMEDIATE")
    try:
        queued = con.execute("SELECT seq, ids, ranges FROM analytics_queue ORDER BY seq "
                             "LIMIT ?", (max_batches,)).fetchall()
        if not queued:
            con.execute("COMMIT")
            return 0
        rows: dict[int, tuple[int, str, float, str]] = {}
        for _, ids, ranges in queued:
            if ranges is not None:
                for lo, hi in orjson.loads(ranges):
                    rows.update((r[0], r) for r in con.execute(
                        "SELECT id, event_type, ts, user_id FROM events WHERE id BETWEEN ? "
                        "AND ? AND (id >> 12) & ? = ? AND user_id IS NOT NULL",
                        (lo, hi, STREAM_MASK, (lo >> 12) & STREAM_MASK)))
            if ids:
                rows.update((r[0], r) for r in con.execute(
                    "SELECT e.id, e.event_type, e.ts, e.user_id FROM json_each(?) AS j "
                    "JOIN events AS e ON e.id = j.value WHERE e.user_id IS NOT NULL", (ids,)))
        apply_batch(con, rows.values())
        con.execute("DELETE FROM analytics_queue WHERE seq <= ?", (queued[-1][0],))
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    return len(queued)


def ready(con: sqlite3.Connection) -> bool:
    """True when the tables exist in this version and cover every event (readers fall back to
    the events table otherwise)."""
    try:
        row = con.execute("SELECT value FROM analytics_meta WHERE key = 'user_hours'").fetchone()
    except sqlite3.OperationalError:  # no such table: a store from before the tables
        return False
    return row is not None and row[0] == SCHEMA_VERSION


def ensure_tables(con: sqlite3.Connection) -> int:
    """Create the tables and, the first time (or after a schema change), fill them from the
    events already stored.

    Call on the writer's connection outside any transaction; the backfill is one IMMEDIATE
    transaction (readers keep answering from the events table meanwhile). Returns the number
    of events folded in (0 when the tables were already complete).
    """
    con.execute(QUEUE_SCHEMA)
    if "ranges" not in {c[1] for c in con.execute("PRAGMA table_info(analytics_queue)")}:
        # A queue from before ranges: its rows are lists of ids, which the pass still reads.
        con.execute("ALTER TABLE analytics_queue ADD COLUMN ranges TEXT")
    if ready(con):
        return 0
    con.execute("BEGIN IMMEDIATE")
    try:
        for table in TABLES:
            con.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                con.execute(statement)
        # In ts order, so that each chunk touches few rows; the ts index gives that order.
        cur = con.execute("SELECT id, event_type, ts, user_id FROM events "
                          "WHERE user_id IS NOT NULL ORDER BY ts")
        folded = 0
        while chunk := cur.fetchmany(BACKFILL_CHUNK):
            apply_batch(con, chunk)
            folded += len(chunk)
        # The backfill read every event, the queued ones included.
        con.execute("DELETE FROM analytics_queue")
        con.execute("INSERT OR REPLACE INTO analytics_meta (key, value) "
                    "VALUES ('user_hours', ?)", (SCHEMA_VERSION,))
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    return folded
