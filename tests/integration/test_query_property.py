"""Property: for random events and random filters, the store answers exactly what a direct
scan of the segment files gives (hypothesis). Run against SQLite and MongoDB (mongomock)."""

from __future__ import annotations

import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import mongomock
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.storage.segment import parse_segment_name
from loader.aggregate import day_string
from loader.daemon import LoaderDaemon
from loader.stores.base import EventStore
from loader.stores.mongo import MongoStore
from loader.stores.sqlite import SQLiteStore
from tests.fakes import FakeClock
from tests.fixtures.store import StreamWriter, loader_config

DAY = 86_400
DAY0 = 1_704_067_200  # 2024-01-01T00:00:00Z
TYPES = ("signup", "click", "view")
EDGES = [DAY0, DAY0 + DAY, DAY0 + 2 * DAY]

timestamps = st.one_of(
    st.sampled_from([e + d for e in EDGES for d in (-1, -0.5, -1e-6, 0, 1e-6, 0.5, 1)]),
    st.integers(DAY0 - 100, DAY0 + 3 * DAY),
    st.floats(DAY0 - 100, DAY0 + 3 * DAY, allow_nan=False, allow_infinity=False),
)
# (stream, event type, ts, event_id). Only stream 0 uses event ids: across streams the loading
# order, and so which duplicate is "first", is not part of the contract.
event_specs = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(TYPES), timestamps,
              st.sampled_from([None, None, None, "k1", "k2"])),
    max_size=40,
)
bounds = st.one_of(st.none(), timestamps)
filters = st.tuples(
    st.integers(1, 4), st.integers(1, 15), bounds, bounds,
    st.one_of(st.none(), st.lists(st.sampled_from((*TYPES, "other")), min_size=1, max_size=3,
                                  unique=True)),
)


def write_segments(directory: Path, specs: list[Any], cuts: list[int]) -> None:
    writers = [StreamWriter(directory, worker=w) for w in range(3)]
    per_stream: list[list[dict[str, Any]]] = [[], [], []]
    for stream, event_type, ts, event_id in specs:
        (ev,) = writers[stream].events(1, types=(event_type,), ts=ts)
        if event_id is not None and stream == 0:
            ev["event_id"] = event_id
        per_stream[stream].append(ev)
    for stream, events in enumerate(per_stream):
        cut = min(cuts[stream], len(events))
        parts = [p for p in (events[:cut], events[cut:]) if p]
        for i, part in enumerate(parts):
            # The last segment of a stream stays open, as the live segment of a writer.
            writers[stream].write(part, sealed=i < len(parts) - 1)


def scan_segments(directory: Path) -> list[dict[str, Any]]:
    """What should be in the store: every line of every segment, id order within a stream,
    keeping the first event of each event_id."""
    events = []
    for path in sorted(directory.iterdir(), key=lambda p: parse_segment_name(p.name)[0]):
        events += [orjson.loads(line) for line in path.read_bytes().splitlines()]
    seen: set[str] = set()
    kept = []
    for e in sorted(events, key=lambda e: int(e["id"])):
        if "event_id" in e:
            if e["event_id"] in seen:
                continue
            seen.add(e["event_id"])
        kept.append(e)
    return kept


def expected_page(events: list[dict[str, Any]], page: int, limit: int, start: Any, end: Any,
                  types: list[str] | None) -> tuple[int, list[str]]:
    hits = [e for e in events
            if (start is None or e["ts"] >= start) and (end is None or e["ts"] <= end)
            and (types is None or e["event_type"] in types)]
    hits.sort(key=lambda e: (e["ts"], int(e["id"])), reverse=True)
    return len(hits), [e["id"] for e in hits[(page - 1) * limit: page * limit]]


def expected_daily(events: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    counts: dict[tuple[str, str], int] = {}
    for e in events:
        day = day_string(int(Fraction(e["ts"]) // DAY))  # exact, unlike float division
        counts[(day, e["event_type"])] = counts.get((day, e["event_type"]), 0) + 1
    return sorted((d, t, n) for (d, t), n in counts.items())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=event_specs, cuts=st.lists(st.integers(0, 40), min_size=3, max_size=3),
       batch_size=st.integers(1, 16), queries=st.lists(filters, min_size=1, max_size=6))
def test_query_events_equals_a_scan_of_the_segments(specs: list[Any], cuts: list[int],
                                                    batch_size: int,
                                                    queries: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        (data_dir / "segments").mkdir()
        write_segments(data_dir / "segments", specs, cuts)
        truth = scan_segments(data_dir / "segments")
        cfg = loader_config(data_dir, batch_size=batch_size)
        stores: list[EventStore] = [
            SQLiteStore(data_dir / "events.db"),
            MongoStore(mongomock.MongoClient(tz_aware=True), "prop"),
        ]
        try:
            for store in stores:
                # Each store starts from the beginning: SQLite keeps its positions in its own
                # file, MongoDB in the JSON file, which the SQLite run never writes.
                daemon = LoaderDaemon(cfg, store, FakeClock())
                assert daemon.positions == {}
                daemon.run_once()
                assert store.count() == len(truth)
                assert store.daily_stats(None, None, None) == expected_daily(truth)
                for page, limit, start, end, types in queries:
                    total, got = store.query_events(page=page, limit=limit, start=start,
                                                    end=end, event_types=types)
                    want = expected_page(truth, page, limit, start, end, types)
                    assert (total, [e["id"] for e in got]) == want, (type(store).__name__,
                                                                    start, end, types)
        finally:
            for store in stores:
                store.close()
