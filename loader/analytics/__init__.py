"""Analytics of SPEC §11 over the event store: peak times, uniques, users, flows, funnels.

`for_store(store)` returns the implementation for the store's backend; every implementation
answers the same questions with the same JSON shapes (tests/integration/
test_analytics_contract.py checks both against `brute`, a brute-force reference):

    rollup(period, rng, types)     {"period", "rows": [{"start", "event_type", "total"}]}
    peak_times(rng, types, tz)     {"by_hour": [24], "by_weekday": [7], "matrix": [7][24]}
    uniques(rng, tz)               {"days": [{"date", "users"}]}
    users(rng, top)                {"users": [{"user_id", "events"}], "distribution": [...]}
    flows(rng, start, top)         {"flows": [{"from", "to", "count"}]}
    funnel(FunnelQuery)            {"steps": [{"event_type", "users", "conversion"}]}

`rng` is a params.Range (inclusive UNIX seconds), `tz` a ZoneInfo. The calls block (SQL,
pymongo): the HTTP layer runs them in an executor.
"""

from __future__ import annotations

from typing import Any, Protocol
from zoneinfo import ZoneInfo

from loader.analytics.params import FunnelQuery, Range


class Analytics(Protocol):
    def rollup(self, period: str, rng: Range,
               types: tuple[str, ...] | None) -> dict[str, Any]: ...

    def peak_times(self, rng: Range, types: tuple[str, ...] | None,
                   tz: ZoneInfo) -> dict[str, Any]: ...

    def uniques(self, rng: Range, tz: ZoneInfo) -> dict[str, Any]: ...

    def users(self, rng: Range, top: int) -> dict[str, Any]: ...

    def flows(self, rng: Range, start: str | None, top: int) -> dict[str, Any]: ...

    def funnel(self, q: FunnelQuery) -> dict[str, Any]: ...


def for_store(store: Any) -> Analytics:
    """The analytics implementation for a store from `loader.stores.open_store`."""
    from loader.stores.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        from loader.analytics.sqlite import SQLiteAnalytics

        return SQLiteAnalytics(store)
    from loader.stores.mongo import MongoStore

    if isinstance(store, MongoStore):
        from loader.analytics.mongo import MongoAnalytics

        return MongoAnalytics(store)
    raise TypeError(f"no analytics for a {type(store).__name__}")
