"""Analytics tables of the SQLite store: one summary row per (UTC hour, user), kept by the loader.

Why. uniques, users, flows and funnels group events by user. The events table has no user
index (loader/stores/sqlite.py explains why: random keys make every batch dirty one index page
per row), so answering them from the events costs a scan of the range plus a sort: seconds at
a million events (bench/analytics.py). These tables answer them from about (active users x
hours) rows instead, and their keys start with the hour, so the loader's writes stay as local
as those of the ts index.

What. `user_hours` holds, per (hour, user) with at least one event:
    n           events of the user in that hour
    quarters    bitmask of the 15-minute quarters of the hour with an event (bit q: quarter q)
    first_type, last_type   types of the first and the last of those events in (ts, id) order
    firsts      JSON {event_type: [ts, id]}: first event of each type in the hour
and `user_hour_events` the events themselves, per (hour, user):
    seq         JSON [[ts, id, event_type], ...] in (ts, id) order
`hour_flows` holds, per (hour, from_type, to_type), the consecutive pairs of one user's events
that lie inside one user-hour row. A pair that crosses hours is the last event of one row and
the first of the user's next row: readers pair rows themselves (loader/analytics/sqlite.py).
`analytics_meta` has ('user_hours', '1') once the tables cover every event of the store.

Exactness. Readers use whole hours from these tables and filter `seq` for the partial hours at
the edges of a range, so every answer is exact for any [from, to]. Local days are exact for
time zones whose offset is a multiple of 15 minutes (every zone since 1972): a quarter never
straddles a local midnight.

Maintenance contract (the store's writer, inside the transaction that inserts the events):
    ensure_tables(con)      at open: create, and backfill from the events once
    apply_batch(con, rows)  after the insert, with exactly the rows that were new
Each touched (hour, user) row is read, merged and rewritten (a few per user and batch for live
traffic; up to one per event for a replay of scattered history). Known limit: a user with
thousands of events in one hour makes that row large and each rewrite costs O(its events).
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

HOUR = 3600
QUARTER = 900
BACKFILL_CHUNK = 20_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS user_hours (
  hour INTEGER NOT NULL,
  user_id TEXT NOT NULL,
  n INTEGER NOT NULL,
  quarters INTEGER NOT NULL,
  first_type TEXT NOT NULL,
  last_type TEXT NOT NULL,
  firsts TEXT NOT NULL,
  PRIMARY KEY (hour, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS user_hour_events (
  hour INTEGER NOT NULL,
  user_id TEXT NOT NULL,
  seq TEXT NOT NULL,
  PRIMARY KEY (hour, user_id)
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
"""`seq` lives in its own table: the readers scan user_hours for whole ranges, and rows that
carried every event inline would make those scans read the events over again."""

Entry = list[Any]
"""[ts, id, event_type] of one event in `seq`."""


@dataclass(slots=True)
class Summary:
    """What a user-hour row stores besides `seq`, for a sorted, non-empty seq."""

    n: int
    quarters: int
    first_type: str
    last_type: str
    firsts: dict[str, list[Any]]
    pairs: Counter[tuple[str, str]]


def pairs_of(seq: list[Entry]) -> Counter[tuple[str, str]]:
    """Consecutive (type, next type) pairs of a sorted seq."""
    types = [e[2] for e in seq]
    return Counter(zip(types, types[1:], strict=False))


def summarize(seq: list[Entry]) -> Summary:
    """The row of a sorted, non-empty seq. Written with comprehensions rather than one loop:
    this runs for every touched row of every batch the loader writes."""
    quarters = 0
    for q in {math.floor(e[0] / QUARTER) % 4 for e in seq}:
        quarters |= 1 << q
    # Reversed, so the first occurrence of each type is the one left in the dict.
    firsts = {t: [ts, id_] for ts, id_, t in reversed(seq)}
    return Summary(len(seq), quarters, seq[0][2], seq[-1][2], firsts, pairs_of(seq))


def merge(old: list[Entry], new: list[Entry]) -> list[Entry]:
    """`old` and `new` (both sorted) in (ts, id) order, an id present in both kept once.
    Entries compare as lists: by ts, then by id, which is unique, so never by type."""
    if not old or new[0] > old[-1]:
        return old + new  # appended: live traffic, the common case
    known = {e[1] for e in old}
    merged = old + [e for e in new if e[1] not in known]
    merged.sort()
    return merged


def apply_batch(con: sqlite3.Connection,
                rows: Iterable[tuple[int, str, float, str | None]]) -> None:
    """Fold newly inserted events into the tables. `rows` are (id, event_type, ts, user_id);
    events without a user are skipped. Runs inside the caller's transaction. Idempotent: an
    event whose id a row already holds is ignored, so a replayed batch changes nothing."""
    groups: dict[tuple[int, str], list[Entry]] = defaultdict(list)
    for id_, event_type, ts, user in rows:
        if user is not None:
            groups[(math.floor(ts / HOUR), user)].append([ts, int(id_), event_type])
    if not groups:
        return
    flow_delta: Counter[tuple[int, str, str]] = Counter()
    upserts = []
    seqs = []
    select = "SELECT seq FROM user_hour_events WHERE hour = ? AND user_id = ?"
    for (hour, user), new in groups.items():
        new.sort()
        found = con.execute(select, (hour, user)).fetchone()
        old: list[Entry] = orjson.loads(found[0]) if found else []
        if old and new[0] > old[-1]:
            merged = old + new
            delta = pairs_of(new)
            delta[(old[-1][2], new[0][2])] += 1
        else:
            merged = merge(old, new)
            if len(merged) == len(old):
                continue
            delta = pairs_of(merged)
            delta.subtract(pairs_of(old))
        for (a, b), n in delta.items():
            flow_delta[(hour, a, b)] += n
        s = summarize(merged)
        upserts.append((hour, user, s.n, s.quarters, s.first_type, s.last_type,
                        orjson.dumps(s.firsts).decode()))
        seqs.append((hour, user, orjson.dumps(merged).decode()))
    con.executemany("INSERT OR REPLACE INTO user_hours (hour, user_id, n, quarters, "
                    "first_type, last_type, firsts) VALUES (?, ?, ?, ?, ?, ?, ?)", upserts)
    con.executemany("INSERT OR REPLACE INTO user_hour_events (hour, user_id, seq) "
                    "VALUES (?, ?, ?)", seqs)
    con.executemany("INSERT INTO hour_flows (hour, from_type, to_type, n) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (hour, from_type, to_type) DO UPDATE SET n = n + excluded.n",
                    [(h, a, b, n) for (h, a, b), n in flow_delta.items() if n])


def ready(con: sqlite3.Connection) -> bool:
    """True when the tables exist and cover every event (readers fall back to the events
    table otherwise)."""
    try:
        row = con.execute("SELECT value FROM analytics_meta WHERE key = 'user_hours'").fetchone()
    except sqlite3.OperationalError:  # no such table: a store from before the tables
        return False
    return row is not None


def ensure_tables(con: sqlite3.Connection) -> int:
    """Create the tables and, the first time, fill them from the events already stored.

    Call on the writer's connection outside any transaction; the backfill is one IMMEDIATE
    transaction (readers keep reading the events table meanwhile). Returns the number of
    events folded in (0 when the tables were already complete).
    """
    con.executescript(SCHEMA)
    if ready(con):
        return 0
    con.execute("BEGIN IMMEDIATE")
    try:
        for table in ("user_hours", "user_hour_events", "hour_flows"):
            con.execute(f"DELETE FROM {table}")
        # In ts order, so that each chunk touches few rows; the ts index gives that order.
        cur = con.execute("SELECT id, event_type, ts, user_id FROM events "
                          "WHERE user_id IS NOT NULL ORDER BY ts")
        folded = 0
        while chunk := cur.fetchmany(BACKFILL_CHUNK):
            apply_batch(con, chunk)
            folded += len(chunk)
        con.execute("INSERT INTO analytics_meta (key, value) VALUES ('user_hours', '1')")
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    return folded
