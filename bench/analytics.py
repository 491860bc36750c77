"""Time each analytics endpoint over a large SQLite store (issue 5 target: < 200 ms at 1M).

    .venv/bin/python bench/analytics.py [--events 1000000] [--days 7] [--db PATH] [--runs 5]
                                        [--load-events 200000]

Builds (or reuses, when --db exists with the right count) a store of realistic events from the
generator's model (collector/gen.py: a few hundred users, sessions, diurnal traffic) spread
over the last `--days` days, loaded through the real `SQLiteStore.insert_batch` (the real
schema and indexes). Then answers each endpoint `--runs` times through the same functions the
HTTP handlers call, for the default range (the last 7 days: with --days 7 every event is in
it, the worst case), and prints the median wall time and the median CPU time of this process.
CPU time is the honest figure on a shared machine; wall time is what a user waits.

Each per-user endpoint is timed twice: from the events table alone (what a store without the
analytics tables answers) and from the analytics tables (loader/analytics/userhours.py), which
are backfilled into the bench database the first time. Finally the loader's cost of keeping
the tables: `--load-events` fresh events loaded into empty stores with and without them.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collector.gen import EventModel  # noqa: E402
from loader.analytics import for_store, userhours  # noqa: E402
from loader.analytics import sqlite as raw  # noqa: E402
from loader.analytics.params import FunnelQuery, Range  # noqa: E402
from loader.stores.sqlite import SQLiteStore  # noqa: E402

SNOWFLAKE_EPOCH_MS = 1_451_606_400_000


def build(path: Path, events: int, days: float, now: float) -> None:
    store = SQLiteStore(path)
    try:
        have = store.count()
        if have == events:
            print(f"reusing {path} ({have} events)")
            return
        if have:
            raise SystemExit(f"{path} holds {have} events, not {events}; remove it first")
        model = EventModel(random.Random(1), now - days * 86400, now, users=300)
        batch: list[dict[str, Any]] = []
        started = time.monotonic()
        ms = int(now * 1000) - SNOWFLAKE_EPOCH_MS
        for i, e in enumerate(model.events(events)):
            # Ids in arrival order, as the collector mints them: not in ts order.
            e["id"] = str(((ms + i // 4096) << 22) | (i % 4096))
            e["received_at"] = now
            batch.append(e)
            if len(batch) == 5000:
                store.insert_batch(batch)
                batch = []
                if (i + 1) % 100_000 == 0:
                    print(f"  {i + 1} events loaded, {time.monotonic() - started:.0f} s",
                          flush=True)
        if batch:
            store.insert_batch(batch)
        print(f"built {path}: {store.count()} events in {time.monotonic() - started:.0f} s")
    finally:
        store.close()


def build_tables(path: Path) -> None:
    store = SQLiteStore(path)
    try:
        assert store._writer is not None
        started = time.monotonic()
        folded = userhours.ensure_tables(store._writer)
        # The loader's analytics pass, for what build_store's insert_batch queued.
        while store.summarize_pending():
            pass
        if folded:
            print(f"analytics tables backfilled: {folded} events in "
                  f"{time.monotonic() - started:.1f} s")
    finally:
        store.close()


def events_of(n: int, now: float, seed: int) -> list[dict[str, Any]]:
    model = EventModel(random.Random(seed), now - 86400, now, users=300)
    ms = int(now * 1000) - SNOWFLAKE_EPOCH_MS
    out = []
    for i, e in enumerate(model.events(n)):
        e["id"] = str(((ms + i // 4096) << 22) | (i % 4096))
        e["received_at"] = now
        out.append(e)
    return out


def loader_rate(path: Path, events: list[dict[str, Any]], tables: bool) -> float:
    """Events/s of insert_batch followed by the analytics pass (what the loader does for
    each batch of live traffic) when `tables`; of insert_batch alone, queueing nothing for
    the tables, otherwise."""
    store = SQLiteStore(path)
    con = store._writer
    assert con is not None
    batches = [events[i:i + 5000] for i in range(0, len(events), 5000)]
    real = userhours.enqueue
    if not tables:
        userhours.enqueue = lambda con, ids, min_ts: None
    cpu = time.process_time()
    try:
        for batch in batches:
            store.insert_batch(batch)
            if tables:
                store.summarize_pending()
        return len(events) / (time.process_time() - cpu)
    finally:
        userhours.enqueue = real
        store.close()


def measure(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--days", type=float, default=7.0)
    p.add_argument("--db", type=Path, default=Path("/tmp/collector-bench-analytics.db"))
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--load-events", type=int, default=200_000)
    args = p.parse_args(argv)
    now = time.time()
    build(args.db, args.events, args.days, now)
    build_tables(args.db)
    store = SQLiteStore(args.db, readonly=True)
    a = for_store(store)

    def on_events(fn: Callable[..., Any], *fargs: Any) -> Callable[[], Any]:
        def run() -> Any:
            with store._snapshot() as con:
                return fn(con, *fargs)
        return run

    week = Range(now - 7 * 86400, now + 60)
    ny = ZoneInfo("America/New_York")
    utc = ZoneInfo("UTC")
    steps = ("page_view", "search", "add_to_cart", "checkout", "purchase")
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("rollup?period=day", lambda: a.rollup("day", week, None)),
        ("rollup?period=month", lambda: a.rollup("month", week, None)),
        ("peak-times", lambda: a.peak_times(week, None, utc)),
        ("peak-times?tz=America/New_York", lambda: a.peak_times(week, None, ny)),
        ("peak-times?eventType=purchase", lambda: a.peak_times(week, ("purchase",), utc)),
        ("uniques?tz=America/New_York", lambda: a.uniques(week, ny)),
        ("users?top=20", lambda: a.users(week, 20)),
        ("flows?top=50", lambda: a.flows(week, None, 50)),
        ("flows?start=search", lambda: a.flows(week, "search", 50)),
        ("funnel (5 steps, 1 h)", lambda: a.funnel(FunnelQuery(steps, 3600.0, week))),
        ("funnel (5 steps, 7 days)", lambda: a.funnel(FunnelQuery(steps, 7 * 86400.0, week))),
        ("events table: uniques?tz=New_York", on_events(raw.uniques, week, ny)),
        ("events table: users?top=20", on_events(raw.users, week, 20)),
        ("events table: flows?top=50", on_events(raw.flows, week, None, 50)),
        ("events table: funnel (1 h)", on_events(raw.funnel, FunnelQuery(steps, 3600.0, week))),
    ]
    print(f"\n{args.events} events over {args.days:g} days; range: the last 7 days; "
          f"median of {args.runs}")
    print(f"{'endpoint':34} {'wall ms':>9} {'cpu ms':>9}")
    try:
        for name, fn in cases:
            fn()  # warm the page cache and the connection
            wall, cpu = measure(fn, args.runs)
            print(f"{name:34} {wall * 1000:9.1f} {cpu * 1000:9.1f}", flush=True)
    finally:
        store.close()
    if args.load_events:
        import tempfile

        scattered = events_of(args.load_events, now, seed=2)
        # Live traffic: events arrive about in time order, and ids follow.
        live = sorted(events_of(args.load_events, now, seed=3), key=lambda e: e["ts"])
        first = int(live[0]["id"])
        for i, e in enumerate(live):
            e["id"] = str(first + i)
        print(f"\nloader CPU rate, {args.load_events} events, batches of 5000:")
        for name, evs in (("live (in time order)", live),
                          ("generator history (random ts over a day)", scattered)):
            with tempfile.TemporaryDirectory() as d:
                plain = loader_rate(Path(d) / "plain.db", evs, tables=False)
                kept = loader_rate(Path(d) / "tables.db", evs, tables=True)
            print(f"  {name:42} {plain:9,.0f} events/s without the tables, "
                  f"{kept:9,.0f} with them")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
