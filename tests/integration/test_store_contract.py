"""The EventStore contract, run against every backend (SQLite for real, MongoDB through
mongomock, and a real MongoDB when COLLECTOR_TEST_MONGO_URI is set)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from loader.stores.base import EventStore
from tests.fixtures.store import make_id

DAY = 86_400
MONDAY = 1_704_067_200  # 2024-01-01T00:00:00Z, a Monday


def ev(n: int, event_type: str = "click", ts: float = MONDAY, **extra: Any) -> dict[str, Any]:
    """Event number `n` (ids increase with n) as parsed from a segment line."""
    e: dict[str, Any] = {"id": str(make_id(1_700_000_000_000 + n)), "event_type": event_type,
                         "ts": ts, "params": {"user_id": n % 7, "n": n},
                         "received_at": ts + 0.25}
    e.update(extra)
    return e


def page_ids(store: EventStore, **kw: Any) -> tuple[int, list[str]]:
    args: dict[str, Any] = {"page": 1, "limit": 100, "start": None, "end": None,
                            "event_types": None}
    args.update(kw)
    total, events = store.query_events(**args)
    return total, [e["id"] for e in events]


def test_insert_returns_new_rows_and_replay_inserts_nothing(store: EventStore) -> None:
    batch = [ev(i) for i in range(50)]
    assert store.insert_batch(batch) == 50
    assert store.insert_batch(batch) == 0
    assert store.insert_batch(batch[40:] + [ev(50)]) == 1
    assert store.count() == 51
    assert store.daily_stats(None, None, None) == [("2024-01-01", "click", 51)]


def test_event_id_keeps_the_first_event_only(store: EventStore) -> None:
    first = ev(1, event_id="retry-1")
    retry = ev(2, event_id="retry-1")
    other = ev(3, event_id="other")
    plain = [ev(4), ev(5)]  # events without event_id never collide with each other
    assert store.insert_batch([first, other, *plain]) == 4
    assert store.insert_batch([retry, ev(6)]) == 1
    total, ids = page_ids(store)
    assert total == 5 and first["id"] in ids and retry["id"] not in ids
    assert store.daily_stats(None, None, None) == [("2024-01-01", "click", 5)]


def test_duplicate_event_id_inside_one_batch(store: EventStore) -> None:
    assert store.insert_batch([ev(1, event_id="k"), ev(2, event_id="k"), ev(3)]) == 2
    assert page_ids(store)[0] == 2


def test_events_come_back_as_loaded(store: EventStore) -> None:
    a = ev(1, "signup", ts=MONDAY + 0.5, event_id="e-1", sent_at=MONDAY + 1)
    b = ev(2, "signup", ts=MONDAY)
    b["params"] = {"nested": {"list": [1, "x", None]}, "user_id": "u-9"}
    store.insert_batch([a, b])
    _, events = store.query_events(page=1, limit=10, start=None, end=None, event_types=None)
    assert events == [
        {"id": a["id"], "event_type": "signup", "ts": MONDAY + 0.5, "params": a["params"],
         "received_at": MONDAY + 0.75, "event_id": "e-1", "sent_at": MONDAY + 1},
        {"id": b["id"], "event_type": "signup", "ts": MONDAY, "params": b["params"],
         "received_at": MONDAY + 0.25},
    ]
    assert isinstance(events[1]["ts"], int)  # a whole ts comes back as written


def test_order_is_newest_ts_first_then_id_descending(store: EventStore) -> None:
    batch = [ev(1, ts=MONDAY + 5), ev(2, ts=MONDAY + 9), ev(3, ts=MONDAY + 5), ev(4, ts=MONDAY)]
    store.insert_batch(batch)
    _, ids = page_ids(store)
    assert ids == [batch[1]["id"], batch[2]["id"], batch[0]["id"], batch[3]["id"]]


def test_pages_partition_the_result(store: EventStore) -> None:
    batch = [ev(i, ts=MONDAY + i % 13) for i in range(95)]
    store.insert_batch(batch)
    _, everything = page_ids(store, limit=1000)
    pages = []
    for page in range(1, 5):
        total, ids = page_ids(store, page=page, limit=30)
        assert total == 95
        pages += ids
    assert pages == everything and len(everything) == 95
    assert page_ids(store, page=9, limit=30) == (95, [])


def test_date_range_is_inclusive_at_both_ends(store: EventStore) -> None:
    batch = [ev(1, ts=MONDAY + 9.999), ev(2, ts=MONDAY + 10), ev(3, ts=MONDAY + 15),
             ev(4, ts=MONDAY + 20), ev(5, ts=MONDAY + 20.001)]
    store.insert_batch(batch)
    total, ids = page_ids(store, start=MONDAY + 10, end=MONDAY + 20)
    assert total == 3 and ids == [batch[3]["id"], batch[2]["id"], batch[1]["id"]]
    assert page_ids(store, start=MONDAY + 20.0005)[1] == [batch[4]["id"]]
    assert page_ids(store, end=MONDAY + 9.999)[1] == [batch[0]["id"]]


def test_totals_across_many_days_match_the_events(store: EventStore) -> None:
    # Whole days inside a range are counted from daily_stats; check the edges.
    batch = [ev(i, ["a", "b"][i % 2], ts=MONDAY + i * 3_600 * 7 + 0.5) for i in range(60)]
    store.insert_batch(batch)
    for start, end in [(None, None), (MONDAY + 3 * DAY - 1, None), (None, MONDAY + 5 * DAY),
                       (MONDAY + 0.5, MONDAY + 10 * DAY - 0.5), (MONDAY + DAY, MONDAY + 2 * DAY),
                       (MONDAY + DAY + 1, MONDAY + 2 * DAY - 1)]:
        for types in (None, ["a"], ["a", "b"]):
            expected = [e for e in batch
                        if (start is None or e["ts"] >= start)
                        and (end is None or e["ts"] <= end)
                        and (types is None or e["event_type"] in types)]
            assert page_ids(store, start=start, end=end, event_types=types)[0] == len(expected)


def test_one_or_many_event_types(store: EventStore) -> None:
    batch = [ev(1, "a"), ev(2, "b"), ev(3, "c"), ev(4, "a")]
    store.insert_batch(batch)
    assert sorted(page_ids(store, event_types=["a"])[1]) == sorted([batch[0]["id"],
                                                                   batch[3]["id"]])
    assert page_ids(store, event_types=["b", "c"])[0] == 2
    assert page_ids(store, event_types=["nope"]) == (0, [])


def test_daily_stats_group_by_utc_day_and_type(store: EventStore) -> None:
    store.insert_batch([ev(1, "a", ts=MONDAY - 0.001), ev(2, "a", ts=MONDAY),
                        ev(3, "b", ts=MONDAY + DAY - 0.001), ev(4, "a", ts=MONDAY + DAY)])
    store.insert_batch([ev(5, "a", ts=MONDAY + 10)])
    assert store.daily_stats(None, None, None) == [
        ("2023-12-31", "a", 1), ("2024-01-01", "a", 2), ("2024-01-01", "b", 1),
        ("2024-01-02", "a", 1)]
    assert store.daily_stats("2024-01-01", "2024-01-01", ["a"]) == [("2024-01-01", "a", 2)]
    assert store.daily_stats("2024-01-02", None, None) == [("2024-01-02", "a", 1)]


def day_ts(y: int, m: int, d: int) -> float:
    return dt.datetime(y, m, d, 12, tzinfo=dt.UTC).timestamp()


def test_rollup_week_month_year_boundaries(store: EventStore) -> None:
    days = [(2023, 12, 31), (2024, 1, 1), (2024, 1, 7), (2024, 1, 8), (2024, 1, 31),
            (2024, 2, 1), (2024, 2, 29), (2024, 12, 30), (2025, 1, 1)]
    store.insert_batch([ev(i, "x", ts=day_ts(*d)) for i, d in enumerate(days)])

    def totals(period: str) -> list[tuple[str, int]]:
        return [(r["start"], r["total"]) for r in store.rollup(period, None, None, None)]

    # 2023-12-31 is a Sunday (week of Monday 12-25); 2024-12-30 is the Monday of the week
    # holding 2025-01-01, so that week starts in the previous year.
    assert totals("week") == [("2023-12-25", 1), ("2024-01-01", 2), ("2024-01-08", 1),
                              ("2024-01-29", 2), ("2024-02-26", 1), ("2024-12-30", 2)]
    assert totals("month") == [("2023-12-01", 1), ("2024-01-01", 4), ("2024-02-01", 2),
                               ("2024-12-01", 1), ("2025-01-01", 1)]
    assert totals("year") == [("2023-01-01", 1), ("2024-01-01", 7), ("2025-01-01", 1)]
    assert len(totals("day")) == len(days)
    # The range is exact: starting an hour after 2024-01-07's event leaves it out; ending at
    # 2024-02-01's event keeps it in.
    part = store.rollup("month", day_ts(2024, 1, 7) + 3600, day_ts(2024, 2, 1), ["x"])
    assert part == [{"start": "2024-01-01", "event_type": "x", "total": 2},
                    {"start": "2024-02-01", "event_type": "x", "total": 1}]
    part = store.rollup("month", day_ts(2024, 1, 7), day_ts(2024, 2, 1) - 0.001, ["x"])
    assert part == [{"start": "2024-01-01", "event_type": "x", "total": 3}]


def test_rollup_rejects_an_unknown_period(store: EventStore) -> None:
    with pytest.raises(ValueError, match="week"):
        store.rollup("fortnight", None, None, None)


def test_empty_store(store: EventStore) -> None:
    assert store.count() == 0
    assert page_ids(store) == (0, [])
    assert store.daily_stats(None, None, None) == []
    assert store.rollup("week", None, None, None) == []
    assert store.insert_batch([]) == 0


def test_mongo_daily_stats_repaired_by_the_replay_after_a_crash() -> None:
    """MongoDB has no transaction here: a crash may land between the insert and the count.
    The replay finds duplicates and recounts the touched days from the events."""
    import mongomock

    from loader.stores.mongo import MongoStore

    store = MongoStore(mongomock.MongoClient(tz_aware=True), "crash")
    batch = [ev(i, "a", ts=MONDAY + i * 5_000) for i in range(40)]
    store.insert_batch(batch[:10])
    docs = [store._doc(e) for e in batch[10:30]]  # inserted, then "crashed" before counting
    store._events.insert_many(docs)
    assert sum(t for _, _, t in store.daily_stats(None, None, None)) == 10
    assert store.insert_batch(batch[10:]) == 10
    daily = store.daily_stats(None, None, None)
    assert sum(t for _, _, t in daily) == 40
    assert daily == [("2024-01-01", "a", 18), ("2024-01-02", "a", 17), ("2024-01-03", "a", 5)]


def test_params_any_json_object_can_hold_are_stored_exactly(store: EventStore) -> None:
    # The collector accepts any JSON object as params: an integer past 64 bits signed and a
    # NUL in a key included. BSON holds neither; such an event must not fail its batch for
    # ever (wedging the loader's stream), and must read back as it was sent.
    odd = [ev(1, params={"n": 2**63, "user_id": 5}), ev(2, params={"a\x00b": [2**64 - 1]})]
    batch = [ev(0), *odd, ev(3)]
    assert store.insert_batch(batch) == 4
    _, events = store.query_events(page=1, limit=10, start=None, end=None, event_types=None)
    by_id = {e["id"]: e["params"] for e in events}
    assert [by_id[e["id"]] for e in batch] == [e["params"] for e in batch]
    assert store.insert_batch(batch) == 0  # a replay still inserts nothing


def test_mongo_write_concern_errors_are_not_taken_for_duplicates() -> None:
    # pymongo raises BulkWriteError with no writeErrors when only the write concern failed
    # (no majority in time, a step-down): the inserts may be rolled back, so the loader must
    # not record its position after them.
    import mongomock
    from pymongo.errors import BulkWriteError

    from tests.fixtures.store import _mongo_store

    store = _mongo_store(mongomock.MongoClient(tz_aware=True))
    details = {"writeErrors": [], "writeConcernErrors": [
        {"code": 64, "errmsg": "waiting for replication timed out"}], "nInserted": 1}

    def insert_many(*args: Any, **kwargs: Any) -> None:
        raise BulkWriteError(details)

    store._events.insert_many = insert_many  # type: ignore[attr-defined]
    with pytest.raises(BulkWriteError):
        store.insert_batch([ev(1)])


def test_a_null_received_at_reads_back_as_ts(store: EventStore) -> None:
    # Not what the collector writes, but what a merged or hand-made segment may hold.
    assert store.insert_batch([ev(1, ts=MONDAY + 5, received_at=None)]) == 1
    _, (event,) = store.query_events(page=1, limit=10, start=None, end=None, event_types=None)
    assert event["received_at"] == MONDAY + 5


def test_mongo_counts_a_batch_with_client_retries_without_recounting_days(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A client's retry (a new id, a known event_id) is refused by the unique index; the
    # batch's new events are counted with $inc. Recounting whole days for it made every
    # batch holding one retry scan millions of events. A replay (a known _id) still recounts.
    import mongomock

    from tests.fixtures.store import _mongo_store

    store = _mongo_store(mongomock.MongoClient(tz_aware=True))
    recounted: list[set[int]] = []
    real = store._recount_days  # type: ignore[attr-defined]
    monkeypatch.setattr(store, "_recount_days", lambda days: recounted.append(days) or real(days))
    assert store.insert_batch([ev(1, event_id="a"), ev(2)]) == 2
    assert store.insert_batch([ev(3, event_id="a"), ev(4), ev(5)]) == 2  # ev 3 is a retry
    assert recounted == []
    assert store.daily_stats(None, None, None) == [("2024-01-01", "click", 4)]
    assert store.insert_batch([ev(5), ev(6)]) == 1  # ev 5 again: a replay
    assert len(recounted) == 1
    assert store.daily_stats(None, None, None) == [("2024-01-01", "click", 5)]
