"""MongoDB event store (pymongo). Kept thin: MongoDB does the work.

Documents: `events` with `_id` = Int64 Snowflake, `ts` a BSON date (UTC, millisecond precision,
for the aggregation framework's date operators), `ts_s` the exact float seconds (used for the
API's filters and order, so an inclusive end of 12:00:00 excludes 12:00:00.0004), `user_id` as
in SQLite; `daily_stats` with `_id` = {day, event_type} plus the same two fields at top level
for filtering, and `total`.

daily_stats is built with the aggregation pipeline ($group by the day string of `ts` and
`event_type`). Without multi-document transactions (a standalone server has none) the insert and
the count are two writes, so the store keeps it exact this way:
- A batch whose every event was new: the pipeline groups exactly those ids and the totals are
  incremented ($inc).
- A batch with any duplicate (a replay after a crash that may have happened between the two
  writes, or a client retry): the pipeline recounts every day the batch touches from the events
  collection and the totals are replaced ($set). This is idempotent, so a crash anywhere is
  repaired by the replay that follows. It costs a scan of those days (index on ts), paid only on
  such batches.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bson
import orjson
from bson.errors import InvalidDocument
from bson.int64 import Int64
from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.errors import BulkWriteError

from loader.aggregate import (
    DAY_SECONDS,
    day_number,
    day_string,
    rollup_rows,
    split_range,
)
from loader.stores.base import Event, public_event, user_text

DUPLICATE_KEY = 11000


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


def _date(ts: float) -> _dt.datetime:
    """`ts` as a BSON-ready date truncated to the millisecond, kept on the UTC day that
    aggregate.day_number gives: rounding a time a hair before midnight must not move its event
    to the next day in daily_stats."""
    ms = math.floor(ts * 1000)
    day = day_number(ts)
    ms = min(max(ms, day * DAY_SECONDS * 1000), (day + 1) * DAY_SECONDS * 1000 - 1)
    return _EPOCH + _dt.timedelta(milliseconds=ms)


def _group_by_day(match: dict[str, Any]) -> list[dict[str, Any]]:
    """The seed's daily pipeline: events per (day, event_type)."""
    return [
        {"$match": match},
        {"$group": {
            "_id": {"day": {"$dateToString": {"format": "%Y-%m-%d", "date": "$ts"}},
                    "event_type": "$event_type"},
            "total": {"$sum": 1},
        }},
    ]


PARAMS_JSON = "params_json"
"""Where a document keeps params that BSON cannot hold, as JSON text (see _bson_safe)."""


def _bson_safe(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc`, with its params as JSON text if BSON cannot encode them.

    The collector accepts any JSON object as params; BSON has no integer past 64 bits signed
    (2**63 to 2**64-1 reach the loader as ints) and no NUL in a key. Such a document would
    fail its whole batch for ever, wedging the stream. The event is stored with `params`
    empty and the exact params in PARAMS_JSON, which reads give back (`_params`); its user
    is in `user_id` already, for the analytics.
    """
    try:
        bson.encode(doc)
    except (OverflowError, InvalidDocument):
        return {**doc, "params": {}, PARAMS_JSON: orjson.dumps(doc["params"]).decode()}
    return doc


def _params(doc: dict[str, Any]) -> Any:
    text = doc.get(PARAMS_JSON)
    return doc["params"] if text is None else orjson.loads(text)


SERVER_SELECTION_MS = 5000
"""How long an operation waits for a usable server, unless the URI says otherwise."""


class MongoStore:
    def __init__(self, client: Any, database: str, *, user_key: str = "user_id",
                 readonly: bool = False, owns_client: bool = False) -> None:
        self._client = client
        self._owns_client = owns_client
        self._db = client[database]
        self._events = self._db["events"]
        self._daily = self._db["daily_stats"]
        self._user_key = user_key
        self.readonly = readonly
        if not readonly:
            self._ensure_indexes()

    @classmethod
    def from_uri(cls, uri: str, database: str, *, user_key: str = "user_id",
                 readonly: bool = False) -> MongoStore:
        # Majority and journaled: the loader records its position once insert_batch returns,
        # so an insert must not be acknowledged before it survives a crash or a failover.
        # A server selection timeout in the URI is kept (a keyword would override it).
        # (The query string's names: pymongo's parse_uri would resolve a mongodb+srv host.)
        given = {name.lower() for name in parse_qs(urlsplit(uri).query)}
        timeout: dict[str, Any] = {} if "serverselectiontimeoutms" in given else {
            "serverSelectionTimeoutMS": SERVER_SELECTION_MS}
        client: MongoClient[dict[str, Any]] = MongoClient(
            uri, tz_aware=True, w="majority", journal=True, **timeout)
        return cls(client, database, user_key=user_key, readonly=readonly, owns_client=True)

    def _ensure_indexes(self) -> None:
        ev = self._events
        ev.create_index([("event_type", ASCENDING)])
        ev.create_index([("ts", ASCENDING)])
        ev.create_index([("event_type", ASCENDING), ("ts", ASCENDING)])
        # The API filters and sorts on the exact seconds; these serve its two query shapes.
        ev.create_index([("ts_s", DESCENDING), ("_id", DESCENDING)])
        ev.create_index([("event_type", ASCENDING), ("ts_s", DESCENDING), ("_id", DESCENDING)])
        ev.create_index([("user_id", ASCENDING), ("ts", ASCENDING)])
        ev.create_index([("event_id", ASCENDING)], unique=True,
                        partialFilterExpression={"event_id": {"$exists": True}})
        self._daily.create_index([("day", ASCENDING), ("event_type", ASCENDING)])

    # -- writing -----------------------------------------------------------------------------
    def _doc(self, e: Event) -> dict[str, Any]:
        ts = e["ts"]
        params = e.get("params") or {}
        doc: dict[str, Any] = {"_id": Int64(int(e["id"])), "event_type": e["event_type"],
                               "ts": _date(ts), "ts_s": float(ts), "params": params,
                               "received_at": ts if e.get("received_at") is None
                               else e["received_at"]}  # (null: as SQLite, ts)
        for key in ("event_id", "sent_at"):
            if e.get(key) is not None:
                doc[key] = e[key]
        user = user_text(params.get(self._user_key)) if isinstance(params, dict) else None
        if user is not None:
            doc["user_id"] = user
        return doc

    def insert_batch(self, events: list[Event]) -> int:
        if self.readonly:
            raise RuntimeError("cannot insert: the store is read-only")
        if not events:
            return 0
        # Each document encoded once more first (_bson_safe): pymongo raises on one BSON
        # cannot hold while it builds its messages, after sending the ones before it.
        docs = [_bson_safe(self._doc(e)) for e in events]
        rejected: set[int] = set()
        try:
            self._events.insert_many(docs, ordered=False)
        except BulkWriteError as e:
            errors = e.details.get("writeErrors", [])
            # Only duplicates (a replay, a client's retry) are expected; a write concern
            # error (no majority in time, a step-down) may see the inserts rolled back.
            if e.details.get("writeConcernErrors") or any(
                    w.get("code") != DUPLICATE_KEY for w in errors):
                raise
            rejected = {int(w["index"]) for w in errors}
        if rejected and self._events.count_documents(
                {"_id": {"$in": [docs[i]["_id"] for i in rejected]}}, limit=1):
            # A replay: an earlier attempt inserted some of these and may have stopped before
            # counting them, so their days are counted again from the collection.
            self._recount_days({day_number(d["ts_s"]) for d in docs})
        else:
            # Only new events, or client retries refused for their event_id (never inserted,
            # so never counted): the inserted ones are added. A recount here would scan whole
            # days for every batch holding one retry.
            self._add_counts([d["_id"] for i, d in enumerate(docs) if i not in rejected])
        return len(docs) - len(rejected)

    def _add_counts(self, ids: list[Int64]) -> None:
        groups = self._events.aggregate(_group_by_day({"_id": {"$in": ids}}))
        self._write_daily(groups, "$inc")

    def _recount_days(self, days: set[int]) -> None:
        for day in sorted(days):
            lo = _EPOCH + _dt.timedelta(days=day)
            hi = lo + _dt.timedelta(days=1)
            groups = self._events.aggregate(_group_by_day({"ts": {"$gte": lo, "$lt": hi}}))
            self._write_daily(groups, "$set")

    def _write_daily(self, groups: Any, op: str) -> None:
        # One update per (day, type): a batch touches a handful, so a bulk write buys little.
        for g in groups:
            self._daily.update_one(
                {"_id": g["_id"]},
                {op: {"total": g["total"]},
                 "$setOnInsert": {"day": g["_id"]["day"], "event_type": g["_id"]["event_type"]}},
                upsert=True)

    # -- reading -----------------------------------------------------------------------------
    def query_events(self, *, page: int, limit: int, start: float | None, end: float | None,
                     event_types: list[str] | None) -> tuple[int, list[Event]]:
        if page < 1 or limit < 1:
            raise ValueError("page and limit start at 1")
        flt: dict[str, Any] = {}
        rng: dict[str, float] = {}
        if start is not None:
            rng["$gte"] = float(start)
        if end is not None:
            rng["$lte"] = float(end)
        if rng:
            flt["ts_s"] = rng
        if event_types:
            flt["event_type"] = {"$in": list(event_types)}
        total = self._events.count_documents(flt)
        cur = (self._events.find(flt).sort([("ts_s", DESCENDING), ("_id", DESCENDING)])
               .skip((page - 1) * limit).limit(limit))
        return total, [public_event(int(d["_id"]), d["event_type"], d["ts_s"], _params(d),
                                    d["received_at"], d.get("event_id"), d.get("sent_at"))
                       for d in cur]

    def daily_stats(self, start_day: str | None, end_day: str | None,
                    event_types: list[str] | None) -> list[tuple[str, str, int]]:
        flt: dict[str, Any] = {}
        rng: dict[str, str] = {}
        if start_day is not None:
            rng["$gte"] = start_day
        if end_day is not None:
            rng["$lte"] = end_day
        if rng:
            flt["day"] = rng
        if event_types:
            flt["event_type"] = {"$in": list(event_types)}
        rows = [(d["day"], d["event_type"], int(d["total"])) for d in self._daily.find(flt)]
        return sorted(r for r in rows if r[2] > 0)

    def rollup(self, period: str, start: float | None, end: float | None,
               event_types: list[str] | None) -> list[dict[str, Any]]:
        """Exact for the range: whole days from daily_stats, the parts of days at its edges
        counted from the events (as the SQLite store does)."""
        days, pieces = split_range(start, end)
        rows: list[tuple[str, str, int]] = []
        if days is not None:
            first, last = days
            rows += self.daily_stats(None if first is None else day_string(first),
                                     None if last is None else day_string(last), event_types)
        for piece in pieces:
            flt: dict[str, Any] = {"ts_s": {"$gte": float(piece.lo),
                                            "$lte" if piece.closed else "$lt": float(piece.hi)}}
            if event_types:
                flt["event_type"] = {"$in": list(event_types)}
            day = day_string(piece.day)
            rows += [(day, g["_id"], int(g["n"])) for g in self._events.aggregate(
                [{"$match": flt}, {"$group": {"_id": "$event_type", "n": {"$sum": 1}}}])]
        return rollup_rows(rows, period)

    def count(self) -> int:
        return int(self._events.count_documents({}))

    def close(self) -> None:
        if self._owns_client:
            self._client.close()
