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
KEYS_PER_LOOKUP = 400
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


def merge(old: list[Entry], new: list[Entry]) -> list[Entry]:
    """`old` and `new` (both sorted) in (ts, id) order, an id present in both kept once.
    Entries compare as tuples: by ts, then by id, which is unique, so never by type."""
    known = {e[1] for e in old}
    merged = old + [e for e in new if e[1] not in known]
    merged.sort()
    return merged


_KEY = itemgetter(0, 1)
_ENTRY = itemgetter(2, 3, 4)
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


def events_of(con: sqlite3.Connection, keys: list[tuple[int, str]]
              ) -> dict[tuple[int, str], list[Entry]]:
    """The stored events of each (hour, user) of `keys`, in order; one statement per
    KEYS_PER_LOOKUP keys (a row-value IN list, each pair a primary-key range)."""
    out: dict[tuple[int, str], list[Entry]] = {k: [] for k in keys}
    for i in range(0, len(keys), KEYS_PER_LOOKUP):
        chunk = keys[i:i + KEYS_PER_LOOKUP]
        sql = ("SELECT hour, user_id, ts, id, event_type FROM user_hour_events "
               f"WHERE (hour, user_id) IN (VALUES {', '.join(['(?, ?)'] * len(chunk))}) "
               "ORDER BY hour, user_id, ts, id")
        rows = con.execute(sql, [x for k in chunk for x in k]).fetchall()
        # C-level grouping and slicing: this reads every event of each late user-hour.
        for key, group in groupby(rows, key=_KEY):
            out[key] = list(map(_ENTRY, group))
    return out


def apply_batch(con: sqlite3.Connection,
                rows: Iterable[tuple[int, str, float, str | None]]) -> None:
    """Fold newly inserted events into the tables. `rows` are (id, event_type, ts, user_id);
    events without a user are skipped. Runs inside the caller's transaction. Idempotent: an
    event already in user_hour_events is ignored, so a replayed batch changes nothing."""
    groups: dict[tuple[int, str], list[Entry]] = defaultdict(list)
    for id_, event_type, ts, user in rows:
        if user is not None:
            groups[(math.floor(ts / HOUR), user)].append((ts, int(id_), event_type))
    if not groups:
        return
    stored = _summaries(con, groups)
    flow_delta: Counter[tuple[int, str, str]] = Counter()
    summaries = []
    inserts = []

    def record(hour: int, user: str, delta: Counter[tuple[str, str]], summary: Summary,
               new: list[Entry]) -> None:
        for (a, b), n in delta.items():
            flow_delta[(hour, a, b)] += n
        summaries.append((hour, user, *summary.values()))
        inserts.extend((hour, user, ts, id_, t) for ts, id_, t in new)

    late = []
    for key, new in groups.items():
        new.sort()
        old = stored.get(key)
        if old is None or new[0] > old.last:
            # First events of this user-hour, or all after its last one: nothing to reread.
            delta = pairs_of(new)
            if old is not None:
                delta[(old.last[2], new[0][2])] += 1
            record(*key, delta, summarize(new) if old is None else appended(old, new), new)
        else:
            late.append(key)
    for key, before in events_of(con, late).items():
        known = {e[1] for e in before}
        new = [e for e in groups[key] if e[1] not in known]
        if new:
            merged = merge(before, new)
            delta = pairs_of(merged)
            delta.subtract(pairs_of(before))
            record(*key, delta, summarize(merged), new)
    con.executemany("INSERT OR IGNORE INTO user_hour_events (hour, user_id, ts, id, event_type) "
                    "VALUES (?, ?, ?, ?, ?)", inserts)
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
