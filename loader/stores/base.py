"""The event store interface, shared row conventions, and `open_store`.

The loader writes through `insert_batch`; the collector's query and analytics handlers read
through the other methods. Every store keeps these contracts (tests/integration/
test_store_contract.py runs the same tests against each):

- Idempotent on the Snowflake ID: inserting an event whose id is present inserts nothing, so a
  replay after a crash loads every event exactly once.
- One event per client `event_id`: the first one loaded wins, later ones are ignored (a client
  retry is not counted twice).
- `daily_stats` equals a GROUP BY (UTC day, event_type) of the events; the batch that inserts
  events also counts them, and only the rows actually inserted.
- `query_events` order: `ts` descending, then Snowflake id descending (the later-minted event
  first among equal timestamps), so "newest first" holds for ties too and pages are stable.
- Dates in and out are UNIX seconds; `start` and `end` are inclusive. A whole number is
  returned as an int (ts 1456606932 comes back as written, not as 1456606932.0).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from pymongo.errors import PyMongoError

if TYPE_CHECKING:
    from collector.config import Config

Event = dict[str, Any]


class EventStore(Protocol):
    def insert_batch(self, events: list[Event]) -> int:
        """Insert parsed segment events (id as a decimal string or int); returns how many were
        new. Updates daily_stats for exactly those, in the same transaction where the backend
        has one."""
        ...

    def query_events(self, *, page: int, limit: int, start: float | None, end: float | None,
                     event_types: list[str] | None) -> tuple[int, list[Event]]:
        """(total matching, the page of events), newest ts first, ties by id descending."""
        ...

    def daily_stats(self, start_day: str | None, end_day: str | None,
                    event_types: list[str] | None) -> list[tuple[str, str, int]]:
        """(day, event_type, total) rows, days inclusive, ordered by day then type."""
        ...

    def rollup(self, period: str, start: float | None, end: float | None,
               event_types: list[str] | None) -> list[dict[str, Any]]:
        """Totals per day|week|month|year of the events in the inclusive range (UTC days; weeks
        start on Monday): rows {"start": "YYYY-MM-DD", "event_type", "total"}. Whole days come
        from daily_stats; the parts of days at the range's edges are counted from the events."""
        ...

    def count(self) -> int:
        ...

    def close(self) -> None:
        ...


def user_text(value: Any) -> str | None:
    """`params[user_key]` as stored in the user_id column: strings as they are, integers in
    decimal, anything else as its JSON text; None when absent, null or the empty string. Integer
    42 and string "42" are deliberately the same user, and "" is nobody, as in the real-time
    uniques (an audit found "" counted by the analytics but not by the uniques)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return orjson.dumps(value).decode()


def whole(x: float | int | None) -> float | int | None:
    """A number as the API returns it: whole floats become ints."""
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return x


def public_event(id_: int, event_type: str, ts: float, params: Any, received_at: float,
                 event_id: str | None, sent_at: float | None) -> Event:
    """The event shape of SPEC §3 "Reading events" (ids as decimal strings)."""
    ev: Event = {"id": str(id_), "event_type": event_type, "ts": whole(ts), "params": params,
                 "received_at": whole(received_at)}
    if event_id is not None:
        ev["event_id"] = event_id
    if sent_at is not None:
        ev["sent_at"] = whole(sent_at)
    return ev


def open_store(cfg: Config, *, readonly: bool = False) -> EventStore:
    """The configured store. Readonly stores are for the collector's handlers: they never
    create or change anything and may be used from several threads."""
    if cfg.store.backend == "sqlite":
        from loader.stores.sqlite import SQLiteStore

        return SQLiteStore(cfg.sqlite_file, user_key=cfg.stats.user_key, readonly=readonly)
    if cfg.store.backend == "mongodb":
        from loader.stores.mongo import MongoStore

        return MongoStore.from_uri(cfg.store.mongodb_uri, cfg.store.mongodb_database,
                                   user_key=cfg.stats.user_key, readonly=readonly)
    raise ValueError(f"unknown store backend {cfg.store.backend!r}; use 'sqlite' or 'mongodb'")


STORE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, PyMongoError)
"""What a failing store raises (a locked or corrupt SQLite file, an unreachable MongoDB): the
read endpoints answer 503 for these; anything else is a bug."""
