"""SPEC §11 analytics in MongoDB: aggregation pipelines, kept thin.

Pipelines filter on `ts_s` (the exact float seconds; `ts` is a BSON date rounded to the
millisecond, too coarse for inclusive bounds) and group in the server. Local time is
`ts_s + offset`, the offset a `$switch` over the constant-offset pieces of the time zone
(loader.analytics.common), so the answers are the same as SQLite's to the second, for any
zone. `$dateToParts`/`$hour` with a `timezone` would be the idiomatic way on a real server,
but mongomock (the test double) has neither; the `$switch` runs on both.

Flows and the funnel need each user's events in (ts, id) order. `$setWindowFields` (MongoDB
5.0+) could pair them in the server, but mongomock does not implement it, so the pipeline sorts
(`allowDiskUse`, as a sort of millions of documents exceeds the 100 MB in-memory limit) and
projects only (user_id, event_type[, ts_s, _id]); the pairing and the funnel walk are the same
Python folds SQLite's funnel uses. Stages used: $match, $project, $group, $sort with $floor,
$divide, $add, $switch, $lt, $sum: all run on mongomock 4.3 and MongoDB 4.4+.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from loader.analytics import common
from loader.analytics.params import FunnelQuery, Range


def _offset_expr(intervals: common.Intervals) -> Any:
    if len(intervals) == 1:
        return intervals[0][1]
    branches = [{"case": {"$lt": ["$ts_s", nxt]}, "then": off}
                for (_, off), (nxt, _) in zip(intervals, intervals[1:], strict=False)]
    return {"$switch": {"branches": branches, "default": intervals[-1][1]}}


def _local_floor(intervals: common.Intervals, unit: int) -> dict[str, Any]:
    return {"$floor": {"$divide": [{"$add": ["$ts_s", _offset_expr(intervals)]}, unit]}}


def _match(rng: Range, types: tuple[str, ...] | None = None, *,
           with_user: bool = False) -> dict[str, Any]:
    m: dict[str, Any] = {"ts_s": {"$gte": float(rng.start), "$lte": float(rng.end)}}
    if types:
        m["event_type"] = {"$in": list(types)}
    if with_user:
        m["user_id"] = {"$exists": True}
    return {"$match": m}


def peak_times(events: Any, rng: Range, types: tuple[str, ...] | None,
               tz: ZoneInfo) -> dict[str, Any]:
    intervals = common.offset_intervals(tz, rng.start, rng.end)
    pipeline = [_match(rng, types),
                {"$group": {"_id": _local_floor(intervals, common.HOUR), "n": {"$sum": 1}}}]
    return common.peak_answer((int(d["_id"]), int(d["n"])) for d in events.aggregate(pipeline))


def uniques(events: Any, rng: Range, tz: ZoneInfo) -> dict[str, Any]:
    intervals = common.offset_intervals(tz, rng.start, rng.end)
    pipeline = [
        _match(rng, with_user=True),
        {"$group": {"_id": {"d": _local_floor(intervals, common.DAY), "u": "$user_id"}}},
        {"$group": {"_id": "$_id.d", "n": {"$sum": 1}}},
    ]
    per_day = {int(d["_id"]): int(d["n"]) for d in events.aggregate(pipeline)}
    first = common.day_number(common.local_seconds(rng.start, intervals))
    last = common.day_number(common.local_seconds(rng.end, intervals))
    return common.uniques_answer(per_day, first, last)


def users(events: Any, rng: Range, top: int) -> dict[str, Any]:
    pipeline = [_match(rng, with_user=True),
                {"$group": {"_id": "$user_id", "n": {"$sum": 1}}}]
    return common.users_answer(((d["_id"], d["n"]) for d in events.aggregate(pipeline)), top)


def _ordered(events: Any, rng: Range, types: tuple[str, ...] | None,
             fields: dict[str, int]) -> Any:
    pipeline = [_match(rng, types, with_user=True),
                {"$sort": {"user_id": 1, "ts_s": 1, "_id": 1}},
                {"$project": fields}]
    return events.aggregate(pipeline, allowDiskUse=True)


def flows(events: Any, rng: Range, start: str | None, top: int) -> dict[str, Any]:
    docs = _ordered(events, rng, None, {"user_id": 1, "event_type": 1})
    pairs = common.fold_flows(((d["user_id"], d["event_type"]) for d in docs), start)
    return common.flows_answer(((a, b, n) for (a, b), n in pairs.items()), top)


def funnel(events: Any, q: FunnelQuery) -> dict[str, Any]:
    docs = _ordered(events, q.range, tuple(dict.fromkeys(q.steps)),
                    {"user_id": 1, "ts_s": 1, "event_type": 1})
    rows = ((d["user_id"], d["ts_s"], int(d["_id"]), d["event_type"]) for d in docs)
    return common.funnel_answer(q.steps, common.fold_funnel(rows, q.steps, q.window))


class MongoAnalytics:
    """The analytics of a `MongoStore`."""

    def __init__(self, store: Any) -> None:
        self._store = store
        # pymongo collections refuse truth tests, hence no `or`.
        events = getattr(store, "events", None)
        self._events = store._events if events is None else events

    def rollup(self, period: str, rng: Range, types: tuple[str, ...] | None) -> dict[str, Any]:
        rows = self._store.rollup(period, rng.start, rng.end, list(types) if types else None)
        return {"period": period, "rows": rows}

    def peak_times(self, rng: Range, types: tuple[str, ...] | None,
                   tz: ZoneInfo) -> dict[str, Any]:
        return peak_times(self._events, rng, types, tz)

    def uniques(self, rng: Range, tz: ZoneInfo) -> dict[str, Any]:
        return uniques(self._events, rng, tz)

    def users(self, rng: Range, top: int) -> dict[str, Any]:
        return users(self._events, rng, top)

    def flows(self, rng: Range, start: str | None, top: int) -> dict[str, Any]:
        return flows(self._events, rng, start, top)

    def funnel(self, q: FunnelQuery) -> dict[str, Any]:
        return funnel(self._events, q)
