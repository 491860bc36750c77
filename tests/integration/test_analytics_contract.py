"""SPEC §11 analytics: every store answers exactly what the brute-force reference answers.

The same events (the generator's realistic sessions around three DST changes, plus hand-made
edge cases) are loaded into each backend once per module: SQLite on a real file, MongoDB
through mongomock (and a real MongoDB when COLLECTOR_TEST_MONGO_URI is set). Each test then
compares an answer with `loader.analytics.brute` over the same list of events.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from collector.gen import EventModel
from loader.analytics import Analytics, brute, for_store, userhours
from loader.analytics.params import FunnelQuery, Range
from loader.analytics.sqlite import MAX_RANGE_COUNT_BUCKETS
from loader.stores.base import EventStore, user_text
from loader.stores.sqlite import SQLiteStore
from tests.fixtures.store import MONGO_URI_ENV, make_id


def utc(y: int, m: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return dt.datetime(y, m, d, h, mi, s, tzinfo=dt.UTC).timestamp()


SPRING = utc(2024, 3, 10, 7)  # America/New_York 02:00 EST -> 03:00 EDT
LORD_HOWE_END = utc(2024, 4, 6, 15)  # Australia/Lord_Howe 02:00 +11 -> 01:30 +10:30
AUTUMN = utc(2024, 11, 3, 6)  # America/New_York 02:00 EDT -> 01:00 EST
WINDOWS = [(SPRING - 3.5 * 86400, SPRING + 3.5 * 86400),
           (LORD_HOWE_END - 2 * 86400, LORD_HOWE_END + 2 * 86400),
           (AUTUMN - 3.5 * 86400, AUTUMN + 3.5 * 86400)]
ALL = Range(utc(2024, 3, 1), utc(2024, 11, 30))
"""Every event but the one near the epoch; two DST changes in New York."""
EDGE_T1 = utc(2024, 3, 8, 12)
WINDOW = 600.0


def edge_events() -> list[dict[str, Any]]:
    """Hand-made cases the generator would only hit by chance."""
    t = EDGE_T1
    evs: list[dict[str, Any]] = [
        # Funnel window edges: the second step exactly at T1 + window counts, 1 ms later not.
        {"event_type": "e_a", "ts": t, "params": {"user_id": "edge-1"}},
        {"event_type": "e_b", "ts": t + WINDOW, "params": {"user_id": "edge-1"}},
        {"event_type": "e_a", "ts": t, "params": {"user_id": "edge-2"}},
        {"event_type": "e_b", "ts": t + WINDOW + 0.001, "params": {"user_id": "edge-2"}},
        # Only the *first* e_a enters: a later e_a with an e_b right after does not restart.
        {"event_type": "e_a", "ts": t, "params": {"user_id": "edge-3"}},
        {"event_type": "e_a", "ts": t + 5000, "params": {"user_id": "edge-3"}},
        {"event_type": "e_b", "ts": t + 5001, "params": {"user_id": "edge-3"}},
        # Equal timestamps: (ts, id) order decides, so e_b minted after e_a follows it.
        {"event_type": "e_a", "ts": t + 7, "params": {"user_id": "edge-4"}},
        {"event_type": "e_b", "ts": t + 7, "params": {"user_id": "edge-4"}},
        # A step before the entry does not count, nor does a repeat of the same event.
        {"event_type": "e_b", "ts": t - 1, "params": {"user_id": "edge-5"}},
        {"event_type": "e_a", "ts": t, "params": {"user_id": "edge-5"}},
        # 7 and "7" are one user (loader.stores.base.user_text); other JSON types are text.
        {"event_type": "e_a", "ts": t + 1, "params": {"user_id": 7}},
        {"event_type": "e_b", "ts": t + 2, "params": {"user_id": "7"}},
        {"event_type": "e_a", "ts": t + 3, "params": {"user_id": 2.5}},
        {"event_type": "e_a", "ts": t + 4, "params": {"user_id": True}},
        # No user: counted by peak times, ignored by everything per user.
        {"event_type": "e_a", "ts": t + 5, "params": {}},
        {"event_type": "e_a", "ts": t + 6, "params": {"user_id": None}},
        # An empty id is nobody too, as in the real-time uniques (an audit found it counted).
        {"event_type": "e_a", "ts": t + 6.5, "params": {"user_id": ""}},
        # Fractional times on both sides of an inclusive bound used below.
        {"event_type": "e_c", "ts": t + 100.25, "params": {"user_id": "edge-6"}},
        {"event_type": "e_c", "ts": t + 100.5, "params": {"user_id": "edge-6"}},
        {"event_type": "e_c", "ts": t + 100.75, "params": {"user_id": "edge-6"}},
        # Near the epoch, in a zone behind UTC: local time before 1970 (negative floors).
        {"event_type": "early", "ts": 3600.5, "params": {"user_id": "old"}},
        # Local midnight in Kolkata (18:30 UTC) and the seconds around it.
        {"event_type": "e_k", "ts": utc(2024, 3, 7, 18, 29, 59), "params": {"user_id": "k"}},
        {"event_type": "e_k", "ts": utc(2024, 3, 7, 18, 30), "params": {"user_id": "k"}},
    ]
    return evs


def dataset() -> list[dict[str, Any]]:
    rng = random.Random(20240310)
    raw: list[dict[str, Any]] = []
    for start, end in WINDOWS:
        raw.extend(EventModel(rng, start, end, users=50).events(350))
    raw.extend(edge_events())
    out = []
    ms = 1_735_000_000_000
    for i, e in enumerate(raw):
        out.append({"id": str(make_id(ms + i // 4000, seq=i % 4000)),
                    "event_type": e["event_type"], "ts": e["ts"], "params": e["params"],
                    "received_at": ms / 1000})
    return out


EVENTS = dataset()


@dataclass
class Backend:
    name: str
    store: EventStore
    analytics: Analytics


def load_with_tables(store: SQLiteStore, events: list[dict[str, Any]]) -> None:
    """What the loader does: each batch inserted (and queued for the analytics tables), then
    the analytics pass folding it in. Batches arrive in random order so that rows are merged
    out of order, as after a replay of old segments."""
    con = store._writer
    assert con is not None
    userhours.ensure_tables(con)
    batches = [events[i:i + 300] for i in range(0, len(events), 300)]
    random.Random(5).shuffle(batches)
    for batch in batches:
        store.insert_batch(batch)
        assert store.summarize_pending() == 1
    assert userhours.pending_since(con) is None


def load_half_summarized(store: SQLiteStore, events: list[dict[str, Any]]) -> None:
    """The analytics pass behind the load: batches in random order, only the first half of
    them folded into the tables; the others wait in the queue, so that the hours from the
    earliest waiting event on must come from the events table (userhours, "Coverage")."""
    batches = [events[i:i + 300] for i in range(0, len(events), 300)]
    random.Random(7).shuffle(batches)
    half = len(batches) // 2
    for batch in batches[:half]:
        store.insert_batch(batch)
        assert store.summarize_pending() == 1
    for batch in batches[half:]:
        store.insert_batch(batch)
    assert store._writer is not None
    pending = userhours.pending_since(store._writer)
    # The cut lies inside the data: some hours from the tables, later ones from the events.
    assert pending is not None and min(e["ts"] for e in events) + 3 * 3600 < pending


@pytest.fixture(scope="module",
                params=["sqlite", "sqlite-tables", "sqlite-pending", "mongomock",
                        pytest.param("mongodb", marks=pytest.mark.mongo)])
def backend(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    kind = request.param
    client: Any = None
    if kind.startswith("sqlite"):
        store: Any = SQLiteStore(tmp_path_factory.mktemp("analytics") / "events.db")
        if kind in ("sqlite-tables", "sqlite-pending"):
            load = load_with_tables if kind == "sqlite-tables" else load_half_summarized
            load(store, EVENTS)
            yield Backend(kind, store, for_store(store))
            store.close()
            return
    else:
        from loader.stores.mongo import MongoStore

        if kind == "mongomock":
            import mongomock

            client = mongomock.MongoClient(tz_aware=True)
        else:
            uri = os.environ.get(MONGO_URI_ENV)
            if not uri:
                pytest.skip(f"real MongoDB tests need {MONGO_URI_ENV}=mongodb://host:port")
            from pymongo import MongoClient

            client = MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=5000)
        store = MongoStore(client, f"analytics_test_{uuid.uuid4().hex[:12]}")
    if kind == "mongomock":
        # mongomock enforces the partial unique index on event_id by scanning every document
        # on every insert (quadratic: minutes for these events). No event here has an
        # event_id and indexes do not change answers, so the test double goes without.
        store._events.drop_indexes()
    for i in range(0, len(EVENTS), 1000):
        store.insert_batch(EVENTS[i:i + 1000])
    try:
        yield Backend(kind, store, for_store(store))
    finally:
        store.close()
        if kind == "mongodb":
            client.drop_database(store._db.name)
            client.close()


RANGES = {
    "all": ALL,
    "spring": Range(*WINDOWS[0]),
    "autumn-odd-bounds": Range(WINDOWS[2][0] + 1234.567, WINDOWS[2][1] - 0.25),
    "lord-howe": Range(*WINDOWS[1]),
    "one-second": Range(EDGE_T1 + 100.25, EDGE_T1 + 100.75),
    "empty": Range(utc(2025, 1, 1), utc(2025, 1, 9)),
}


ZONED_CASES = [
    ("UTC", "all"),
    ("UTC", "one-second"),
    ("America/New_York", "all"),
    ("America/New_York", "spring"),
    ("America/New_York", "autumn-odd-bounds"),
    ("America/New_York", "empty"),
    ("Asia/Kolkata", "all"),
    ("Asia/Kathmandu", "spring"),
    ("Australia/Lord_Howe", "lord-howe"),
]
"""(zone, range): each zone over the DST changes that matter to it."""


@pytest.mark.parametrize("zone, rng_name", ZONED_CASES)
def test_peak_times(backend: Backend, zone: str, rng_name: str) -> None:
    rng, tz = RANGES[rng_name], ZoneInfo(zone)
    assert backend.analytics.peak_times(rng, None, tz) == brute.peak_times(
        EVENTS, rng.start, rng.end, tz)


@pytest.mark.parametrize("types", [("purchase",), ("search", "checkout"), ("nothing",)])
def test_peak_times_of_some_types(backend: Backend, types: tuple[str, ...]) -> None:
    tz = ZoneInfo("America/New_York")
    rng = RANGES["spring"]
    answer = backend.analytics.peak_times(rng, types, tz)
    assert answer == brute.peak_times(EVENTS, rng.start, rng.end, tz, types)


@pytest.mark.parametrize("zone", ["UTC", "Asia/Kolkata", "Etc/GMT+5"])
def test_peak_times_over_years_takes_the_grouped_path(backend: Backend, zone: str) -> None:
    # From the epoch: the event at 01:00:00.5 UTC on 1970-01-01 is on 1969-12-31 at GMT-5.
    rng = Range(0, utc(2024, 12, 31))
    assert (rng.end - rng.start) / 3600 > MAX_RANGE_COUNT_BUCKETS
    tz = ZoneInfo(zone)
    assert backend.analytics.peak_times(rng, None, tz) == brute.peak_times(
        EVENTS, rng.start, rng.end, tz)


def test_peak_times_answer_shape(backend: Backend) -> None:
    answer = backend.analytics.peak_times(RANGES["spring"], None, ZoneInfo("UTC"))
    assert len(answer["by_hour"]) == 24
    assert len(answer["by_weekday"]) == 7
    assert [len(r) for r in answer["matrix"]] == [24] * 7
    assert sum(answer["by_hour"]) == sum(answer["by_weekday"]) > 0


@pytest.mark.parametrize("zone, rng_name", ZONED_CASES)
def test_uniques(backend: Backend, zone: str, rng_name: str) -> None:
    rng, tz = RANGES[rng_name], ZoneInfo(zone)
    assert backend.analytics.uniques(rng, tz) == brute.uniques(EVENTS, rng.start, rng.end, tz)


def test_uniques_lists_every_day_with_zeros(backend: Backend) -> None:
    rng = Range(utc(2024, 3, 12), utc(2024, 3, 20))
    days = backend.analytics.uniques(rng, ZoneInfo("UTC"))["days"]
    assert [d["date"] for d in days] == [f"2024-03-{d}" for d in range(12, 21)]
    assert days[0]["users"] > 0
    assert days[-1]["users"] == 0


def test_uniques_split_at_local_midnight_in_kolkata(backend: Backend) -> None:
    rng = Range(utc(2024, 3, 7, 18, 29, 59), utc(2024, 3, 7, 18, 30))
    days = backend.analytics.uniques(rng, ZoneInfo("Asia/Kolkata"))["days"]
    assert days == [{"date": "2024-03-07", "users": 1}, {"date": "2024-03-08", "users": 1}]


@pytest.mark.parametrize("top, rng_name", [(1, "all"), (5, "all"), (1000, "all")]
                         + [(5, name) for name in RANGES if name != "all"])
def test_users(backend: Backend, top: int, rng_name: str) -> None:
    rng = RANGES[rng_name]
    assert backend.analytics.users(rng, top) == brute.users(EVENTS, rng.start, rng.end, top)


def test_users_sums_and_ties(backend: Backend) -> None:
    answer = backend.analytics.users(ALL, 1000)
    with_user = [e for e in EVENTS if user_text(e["params"].get("user_id")) is not None
                 and ALL.start <= e["ts"] <= ALL.end]
    assert sum(d["events"] * d["users"] for d in answer["distribution"]) == len(with_user)
    # Ties: integer ids by value, then the other ids as text.
    ranked = [(-u["events"], *((0, int(u["user_id"])) if u["user_id"].isdigit() else
                               (1, u["user_id"]))) for u in answer["users"]]
    assert ranked == sorted(ranked)
    ids = {u["user_id"] for u in answer["users"]}
    assert {"7", "2.5", "true"} <= ids
    assert next(u["events"] for u in answer["users"] if u["user_id"] == "7") >= 2


@pytest.mark.parametrize("start, rng_name", [
    (None, "all"), ("page_view", "all"), ("checkout", "all"), ("e_a", "all"), ("never", "all"),
    (None, "spring"), ("search", "autumn-odd-bounds"), (None, "empty")])
def test_flows(backend: Backend, start: str | None, rng_name: str) -> None:
    rng = RANGES[rng_name]
    assert backend.analytics.flows(rng, start, 50) == brute.flows(
        EVENTS, rng.start, rng.end, 50, start)


def test_flows_top_cuts_the_ranking(backend: Backend) -> None:
    full = backend.analytics.flows(ALL, None, 1000)["flows"]
    assert len(full) > 3
    assert backend.analytics.flows(ALL, None, 3)["flows"] == full[:3]
    counts = [f["count"] for f in full]
    assert counts == sorted(counts, reverse=True)


FUNNELS = [
    ("page_view", "search", "add_to_cart", "checkout", "purchase"),
    ("signup", "purchase"),
    ("page_view", "page_view", "page_view"),
    ("e_a", "e_b"),
    ("never", "page_view"),
    ("login",),
]


@pytest.mark.parametrize("steps, window, rng_name",
                         [(steps, w, "all") for steps in FUNNELS for w in (600.0, 86400.0)]
                         + [(FUNNELS[0], w, name) for w in (1.0, 3600.0)
                            for name in ("spring", "autumn-odd-bounds", "empty")])
def test_funnel(backend: Backend, steps: tuple[str, ...], window: float, rng_name: str) -> None:
    rng = RANGES[rng_name]
    answer = backend.analytics.funnel(FunnelQuery(steps, window, rng))
    assert answer == brute.funnel(EVENTS, steps, window, rng.start, rng.end)


def test_funnel_window_edges(backend: Backend) -> None:
    answer = backend.analytics.funnel(FunnelQuery(("e_a", "e_b"), WINDOW, ALL))
    entered = {"edge-1", "edge-2", "edge-3", "edge-4", "edge-5", "7", "2.5", "true"}
    # Reached e_b: edge-1 (exactly at the window's end), edge-4 (same ts, later id), "7".
    assert answer["steps"] == [
        {"event_type": "e_a", "users": len(entered), "conversion": 1.0},
        {"event_type": "e_b", "users": 3, "conversion": 3 / len(entered)},
    ]


def test_funnel_is_bounded_by_the_range(backend: Backend) -> None:
    # edge-1's e_b lies after `to`: the user enters but does not convert.
    rng = Range(EDGE_T1, EDGE_T1 + WINDOW - 1)
    steps = backend.analytics.funnel(FunnelQuery(("e_a", "e_b"), WINDOW, rng))["steps"]
    assert steps == brute.funnel(EVENTS, ("e_a", "e_b"), WINDOW, rng.start, rng.end)["steps"]
    assert steps[1]["users"] < steps[0]["users"]


@pytest.mark.parametrize("period", ["day", "week", "month", "year"])
def test_rollup(backend: Backend, period: str) -> None:
    rng = Range(utc(2024, 3, 6, 13), utc(2024, 11, 2))
    assert backend.analytics.rollup(period, rng, None) == brute.rollup(
        EVENTS, period, rng.start, rng.end)
    types = ("purchase", "signup")
    assert backend.analytics.rollup(period, rng, types) == brute.rollup(
        EVENTS, period, rng.start, rng.end, types)


@pytest.mark.parametrize("rng", [
    Range(EDGE_T1 + 100.5, EDGE_T1 + 100.5),  # one instant: one e_c
    Range(EDGE_T1 - 6 * 3600, EDGE_T1 + 6 * 3600),  # inside one day
    Range(utc(2024, 3, 7, 18), utc(2024, 3, 8, 6)),  # across a midnight, no whole day
    Range(utc(2024, 3, 7, 18, 30), utc(2024, 3, 9)),  # part of a day, a whole day, a midnight
    Range(utc(2024, 3, 8, 0, 0, 1), utc(2024, 11, 1, 23)),  # months of whole days, two edges
], ids=["instant", "in-one-day", "across-midnight", "part-whole-midnight", "months"])
def test_rollup_keeps_to_the_range(backend: Backend, rng: Range) -> None:
    # A rollup counts the events of the range, not of every day it touches (an audit found
    # 06:00-18:00 answering the whole day's total, where peak times kept to the range).
    for period in ("day", "week", "month"):
        assert backend.analytics.rollup(period, rng, None) == brute.rollup(
            EVENTS, period, rng.start, rng.end)
    assert backend.analytics.rollup("day", rng, ("e_c", "e_k")) == brute.rollup(
        EVENTS, "day", rng.start, rng.end, ("e_c", "e_k"))
    one = Range(EDGE_T1 + 100.5, EDGE_T1 + 100.5)
    assert backend.analytics.rollup("day", one, None)["rows"] == [
        {"start": "2024-03-08", "event_type": "e_c", "total": 1}]


def test_inclusive_bounds(backend: Backend) -> None:
    a = backend.analytics
    one = RANGES["one-second"]  # exactly the first and the last e_c
    assert a.users(one, 10)["users"] == [{"user_id": "edge-6", "events": 3}]
    assert sum(a.peak_times(one, ("e_c",), ZoneInfo("UTC"))["by_hour"]) == 3
    inner = Range(one.start + 0.001, one.end - 0.001)
    assert a.users(inner, 10)["users"] == [{"user_id": "edge-6", "events": 1}]
    assert a.flows(one, "e_c", 10)["flows"] == [{"from": "e_c", "to": "e_c", "count": 2}]


# --- empty stores -----------------------------------------------------------------------------


def empty_answers(a: Analytics) -> None:
    rng = Range(utc(2024, 3, 1), utc(2024, 3, 3, 12))
    tz = ZoneInfo("Asia/Kolkata")
    assert a.peak_times(rng, None, tz) == {"by_hour": [0] * 24, "by_weekday": [0] * 7,
                                           "matrix": [[0] * 24 for _ in range(7)]}
    assert a.uniques(rng, tz) == {"days": [{"date": f"2024-03-0{d}", "users": 0}
                                           for d in (1, 2, 3)]}
    assert a.users(rng, 20) == {"users": [], "distribution": []}
    assert a.flows(rng, None, 50) == {"flows": []}
    assert a.funnel(FunnelQuery(("a", "b"), 60.0, rng)) == {"steps": [
        {"event_type": "a", "users": 0, "conversion": 0.0},
        {"event_type": "b", "users": 0, "conversion": 0.0}]}
    assert a.rollup("week", rng, None) == {"period": "week", "rows": []}


def test_empty_sqlite_store(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    try:
        empty_answers(for_store(store))
    finally:
        store.close()


def test_sqlite_store_not_created_yet(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "missing.db", readonly=True)
    try:
        empty_answers(for_store(store))
    finally:
        store.close()
    assert not (tmp_path / "missing.db").exists()


def test_empty_mongomock_store() -> None:
    import mongomock

    from loader.stores.mongo import MongoStore

    empty_answers(for_store(MongoStore(mongomock.MongoClient(tz_aware=True), "empty")))


# --- the HTTP layer (in process) --------------------------------------------------------------


def _ctx(store: Any, tmp_path: Path, token: str | None = "secret") -> Any:
    """An AppContext with a fixed clock (2024-03-12 00:00 UTC); `_call` gives it a loop."""
    from collector.config import Config, with_overrides
    from collector.context import AppContext
    from collector.metrics import Metrics
    from tests.fakes import FakeClock

    cfg = with_overrides(Config(), data_dir=str(tmp_path))  # type: ignore[arg-type]
    return AppContext(config=cfg, clock=FakeClock(utc(2024, 3, 12)),
                      loop=None, metrics=Metrics(), store=store,  # type: ignore[arg-type]
                      read_token=token)


def _call(ctx: Any, method: str, target: str, body: bytes = b"",
          token: str | None = "secret") -> tuple[int, Any]:
    import asyncio

    import orjson

    from collector.http.analytics_routes import routes
    from collector.http.message import Request

    path, _, qs = target.partition("?")
    handler = next(r.handler for r in routes(ctx) if r.path == path and r.method == method)
    headers = ((b"authorization", f"Bearer {token}".encode()),) if token else ()
    request = Request(method, path, qs, headers, body)
    ctx.loop = asyncio.new_event_loop()
    try:
        response = ctx.loop.run_until_complete(handler(request))
    finally:
        ctx.loop.run_until_complete(ctx.loop.shutdown_default_executor())
        ctx.loop.close()
    return response.status, orjson.loads(response.body)


@pytest.fixture(scope="module")
def sqlite_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path_factory.mktemp("routes") / "events.db")
    store.insert_batch(EVENTS)
    yield store
    store.close()


def test_routes_answer_like_the_store(sqlite_backend: SQLiteStore, tmp_path: Path) -> None:
    ctx = _ctx(sqlite_backend, tmp_path)
    spring = RANGES["spring"]
    qs = f"from={spring.start}&to={spring.end}"
    status, answer = _call(ctx, "GET", f"/api/analytics/peak-times?{qs}&tz=America/New_York"
                                       "&eventType=search&eventType=purchase&_=123")
    assert status == 200
    assert answer == brute.peak_times(EVENTS, spring.start, spring.end,
                                      ZoneInfo("America/New_York"), ("search", "purchase"))
    status, answer = _call(ctx, "GET", f"/api/analytics/users?{qs}&top=3")
    assert (status, answer) == (200, brute.users(EVENTS, spring.start, spring.end, 3))
    status, answer = _call(ctx, "GET", f"/api/analytics/flows?{qs}&start=search")
    assert (status, answer) == (200, brute.flows(EVENTS, spring.start, spring.end, 50,
                                                 "search"))
    status, answer = _call(ctx, "GET", f"/api/analytics/uniques?{qs}&tz=Asia/Kolkata")
    assert (status, answer) == (200, brute.uniques(EVENTS, spring.start, spring.end,
                                                   ZoneInfo("Asia/Kolkata")))
    status, answer = _call(ctx, "GET", f"/api/analytics/rollup?{qs}&period=week")
    assert (status, answer) == (200, brute.rollup(EVENTS, "week", spring.start, spring.end))
    body = orjson_dumps({"steps": ["page_view", "purchase"], "window": 3600,
                         "from": spring.start, "to": spring.end})
    status, answer = _call(ctx, "POST", "/api/analytics/funnel", body)
    assert (status, answer) == (200, brute.funnel(EVENTS, ["page_view", "purchase"], 3600,
                                                  spring.start, spring.end))


def test_routes_default_to_the_last_seven_days(sqlite_backend: SQLiteStore,
                                               tmp_path: Path) -> None:
    ctx = _ctx(sqlite_backend, tmp_path)  # the clock says 2024-03-12 00:00 UTC
    status, answer = _call(ctx, "GET", "/api/analytics/uniques")
    assert status == 200
    assert [d["date"] for d in answer["days"]] == [f"2024-03-{d:02}" for d in range(5, 13)]
    now = utc(2024, 3, 12)
    assert answer == brute.uniques(EVENTS, now - 7 * 86400, now, ZoneInfo("UTC"))


@pytest.mark.parametrize("method, target, body, message", [
    ("GET", "/api/analytics/peak-times?tz=Nowhere/Land", b"", "not an IANA time zone"),
    ("GET", "/api/analytics/peak-times?event_type=x", b"", "unknown parameter event_type"),
    ("GET", "/api/analytics/users?top=0", b"", "between 1 and 1000"),
    ("GET", "/api/analytics/flows?from=10&to=5", b"", "after to"),
    ("GET", "/api/analytics/rollup?period=decade", b"", "not one of day"),
    ("GET", "/api/analytics/uniques?from=0&to=1700000000", b"", "more than 3660 days"),
    ("POST", "/api/analytics/funnel", b"{", "not valid JSON"),
    ("POST", "/api/analytics/funnel", b'{"steps": []}', "non-empty array"),
    ("POST", "/api/analytics/funnel", b"", "must be a JSON object"),
])
def test_routes_reject_bad_parameters(sqlite_backend: SQLiteStore, tmp_path: Path,
                                      method: str, target: str, body: bytes,
                                      message: str) -> None:
    status, answer = _call(_ctx(sqlite_backend, tmp_path), method, target, body)
    assert status == 400
    assert answer["error"] == "bad_param"
    assert message in answer["message"]


def test_routes_need_the_read_token(sqlite_backend: SQLiteStore, tmp_path: Path) -> None:
    ctx = _ctx(sqlite_backend, tmp_path)
    status, answer = _call(ctx, "GET", "/api/analytics/users", token=None)
    assert (status, answer["error"]) == (401, "unauthorized")
    status, answer = _call(ctx, "GET", "/api/analytics/users?top=0", token="wrong")
    assert (status, answer["error"]) == (403, "forbidden")
    # Open reads (auth.open_reads): no token configured, no header needed.
    status, _ = _call(_ctx(sqlite_backend, tmp_path, token=None), "GET",
                      "/api/analytics/users", token=None)
    assert status == 200


def test_routes_without_a_store_answer_503(tmp_path: Path) -> None:
    status, answer = _call(_ctx(None, tmp_path), "GET", "/api/analytics/users")
    assert (status, answer["error"]) == (503, "store_unavailable")


def orjson_dumps(obj: Any) -> bytes:
    import orjson

    return orjson.dumps(obj)


def test_tables_are_backfilled_from_a_store_that_had_none(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    try:
        store.insert_batch(EVENTS)
        assert store._writer is not None
        # A store written before the tables existed: the writer keeps them now, so drop them.
        for table in (*userhours.TABLES, "analytics_meta"):
            store._writer.execute(f"DROP TABLE {table}")
        assert not userhours.ready(store._writer)
        assert userhours.ensure_tables(store._writer) == sum(
            1 for e in EVENTS if user_text(e["params"].get("user_id")) is not None)
        assert userhours.ready(store._writer)
        assert userhours.ensure_tables(store._writer) == 0
        a = for_store(store)
        rng = RANGES["autumn-odd-bounds"]
        steps = FUNNELS[0]
        assert a.funnel(FunnelQuery(steps, 3600.0, rng)) == brute.funnel(
            EVENTS, steps, 3600.0, rng.start, rng.end)
        assert a.flows(ALL, None, 50) == brute.flows(EVENTS, ALL.start, ALL.end, 50)
    finally:
        store.close()


def test_applying_the_same_rows_twice_changes_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    try:
        load_with_tables(store, EVENTS)
        con = store._writer
        assert con is not None

        def snapshot() -> list[Any]:
            return [con.execute(f"SELECT * FROM {t} ORDER BY 1, 2, 3, 4").fetchall()
                    for t in ("user_hours", "user_hour_events", "hour_flows")]

        before = snapshot()
        assert len(before[1]) == sum(1 for e in EVENTS
                                     if user_text(e["params"].get("user_id")) is not None)
        con.execute("BEGIN IMMEDIATE")
        userhours.apply_batch(con, [(int(e["id"]), e["event_type"], e["ts"],
                                     user_text(e["params"].get("user_id"))) for e in EVENTS])
        con.execute("COMMIT")
        assert snapshot() == before
    finally:
        store.close()


def test_tables_of_an_older_version_are_rebuilt(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    try:
        con = store._writer
        assert con is not None
        store.insert_batch(EVENTS[:200])
        userhours.ensure_tables(con)
        con.execute("UPDATE analytics_meta SET value = '0'")
        assert not userhours.ready(con)
        assert userhours.ensure_tables(con) == sum(
            1 for e in EVENTS[:200] if user_text(e["params"].get("user_id")) is not None)
        assert userhours.ready(con)
    finally:
        store.close()


# --- incremental maintenance of the tables ----------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_EVENT = st.tuples(st.integers(0, 3 * 3600 - 1),  # ts within three hours
                   st.sampled_from(["u1", "u2", None]),
                   st.sampled_from(["a", "b", "c"]))


def _tables(con: Any) -> list[Any]:
    import orjson

    out = [con.execute(f"SELECT * FROM {t} WHERE {cond} ORDER BY 1, 2, 3, 4").fetchall()
           for t, cond in (("user_hours", "1"), ("user_hour_events", "1"),
                           ("hour_flows", "n != 0"))]
    # firsts is JSON: compare its content, not the order of its keys.
    out[0] = [(*r[:-1], orjson.loads(r[-1])) for r in out[0]]
    return out


@settings(max_examples=150, deadline=None)
@given(events=st.lists(_EVENT, min_size=1, max_size=40),
       cuts=st.lists(st.integers(0, 40), max_size=6), seed=st.integers(0, 1000))
def test_batches_in_any_order_build_the_same_tables(
        events: list[tuple[int, str | None, str]], cuts: list[int], seed: int) -> None:
    import sqlite3

    # Equal timestamps on purpose: (ts, id) order must decide.
    rows = [(i + 1, t, float(1_700_000_000 + ts // 7 * 7), u) for i, (ts, u, t) in
            enumerate(events)]
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    bounds = sorted({0, len(rows), *(c for c in cuts if c < len(rows))})
    built = []
    for batches in ([rows], [shuffled[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]):
        con = sqlite3.connect(":memory:", isolation_level=None)
        con.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, event_type TEXT, ts REAL, "
                    "user_id TEXT)")
        userhours.ensure_tables(con)
        for batch in batches:
            con.execute("BEGIN")
            userhours.apply_batch(con, batch)
            con.execute("COMMIT")
        # A replay of everything changes nothing.
        con.execute("BEGIN")
        userhours.apply_batch(con, rows)
        con.execute("COMMIT")
        built.append(_tables(con))
        con.close()
    assert built[0] == built[1]
    # hour_flows holds exactly the consecutive pairs inside each user-hour.
    expected: dict[tuple[int, str, str], int] = {}
    by_key: dict[tuple[int, str], list[tuple[float, int, str]]] = {}
    for id_, t, ts, u in rows:
        if u is not None:
            by_key.setdefault((int(ts // 3600), u), []).append((ts, id_, t))
    for (hour, _), seq in by_key.items():
        seq.sort()
        for x, y in zip(seq, seq[1:], strict=False):
            expected[(hour, x[2], y[2])] = expected.get((hour, x[2], y[2]), 0) + 1
    assert {(h, a, b): n for h, a, b, n in built[1][2]} == expected
