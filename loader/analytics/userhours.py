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

Exactness. Readers use whole hours from the summaries and the events of the partial hours at
the edges of a range, so every answer is exact for any [from, to]. Local days are exact for
time zones whose offset is a multiple of 15 minutes (every zone since 1972): a quarter never
straddles a local midnight.

Maintenance contract (the store's writer, inside the transaction that inserts the events):
    ensure_tables(con)      at open: create, and backfill from the events once
    apply_batch(con, rows)  after the insert, with the rows that were new
Per touched (hour, user): one small summary row is rewritten and the new events are inserted.
An event that arrives after the user's last one in its hour (live traffic) needs nothing else;
one that lands between older ones (a replay, or a client sending history) also reads that
user-hour's events to recount its pairs.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import groupby
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

    for key, new in groups.items():
        new.sort()
        old = stored.get(key)
        if old is None or new[0] > old.last:
            delta = pairs_of(new)
            if old is not None:
                delta[(old.last[2], new[0][2])] += 1
            record(key, delta, summarize(new) if old is None else appended(old, new))
            inserts.extend((*key, ts, id_, t) for ts, id_, t in new)
        else:
            late.extend((*key, ts, id_, t) for ts, id_, t in new)
    con.executemany(_INSERT_EVENTS, inserts)
    if late:
        late = _insert_late(con, late)
    if late:
        near = _neighbours(con, late)
        for key, group in groupby(late, key=_KEY):
            entries = [(ts, id_, t) for _, _, ts, id_, t in group]
            new_ids = {e[1] for e in entries}
            record(key, _late_pairs(entries, new_ids, near), inserted(stored[key], entries))
    con.executemany(f"INSERT OR REPLACE INTO user_hours (hour, user_id, {_SUMMARY_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", summaries)
    con.executemany("INSERT INTO hour_flows (hour, from_type, to_type, n) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (hour, from_type, to_type) DO UPDATE SET n = n + excluded.n",
                    [(h, a, b, n) for (h, a, b), n in flow_delta.items() if n])


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
        con.execute("INSERT OR REPLACE INTO analytics_meta (key, value) "
                    "VALUES ('user_hours', ?)", (SCHEMA_VERSION,))
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    return folded
