"""Loader and query benchmark (issue 4 targets).

1. Loading: N events in segment files (2 streams, 64 MiB-ish segments scaled down) are loaded
   into a fresh SQLite store by the loader daemon, pinned to one core, in its two steps timed
   apart: the load (`LoaderDaemon.load_once`: read, parse, insert, daily_stats, the analytics
   queue's row of id ranges and positions in one transaction per batch), then the analytics
   pass that folds the queue into the per-user-hour tables (`LoaderDaemon.summarize`;
   `run_once` runs both). Two figures: the load rate (what a backlog loads at, the analytics
   trailing) and the rate with the pass included (events loaded AND summarized per
   CPU-second: what the loader sustains when both keep up). Printed next to references on the
   same rows, core and pragmas: the loader without the analytics tables (what they cost), a
   plain `executemany` of pre-built tuples into the same schema (one transaction per batch,
   nothing else), the same without secondary indexes, and orjson parsing alone. `--runs N`
   repeats the loaders and the plain reference N times, each into a fresh store, and prints
   the medians and the ratio of the loader's rate to the reference's: on a shared machine the
   ratio is steadier than either figure. CPU time (user + system of this process) is the
   figure to read there; wall time also counts waiting for the core. The analytics tables
   cost grows with the users active per hour (`--users`; the default, 100,000 users drawn at
   random, makes nearly every event a new user-hour).
2. Query: a store of M events (built fast: rows first, indexes after) is queried the way
   `POST /api/events/query` does for one event type and one UTC day; p50/p90 of
   `store.query_events` and of the HTTP handler itself (body parsing, executor hop, JSON).

    .venv/bin/python bench/loader.py                       # 500k load, 10M query store
    .venv/bin/python bench/loader.py --query-events 0 --runs 5   # the loading figures alone
    .venv/bin/python bench/loader.py --events 200000 --query-events 1000000 --cpu 0

Target: loading >= 100,000 events/s on one core; query p50 < 50 ms on 10M events.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collector.clock import SystemClock  # noqa: E402
from collector.config import Config, with_overrides  # noqa: E402
from collector.context import AppContext  # noqa: E402
from collector.http.message import Request  # noqa: E402
from collector.http.query_routes import routes  # noqa: E402
from collector.metrics import Metrics  # noqa: E402
from collector.storage.segment import segment_name  # noqa: E402
from loader.aggregate import day_of  # noqa: E402
from loader.analytics import userhours  # noqa: E402
from loader.daemon import LoaderDaemon  # noqa: E402
from loader.stores.sqlite import SCHEMA, SQLiteStore  # noqa: E402

SYNCHRONOUS = "NORMAL"
"""The loader's setting (loader/stores/sqlite.py, "Durability"); the references use it too."""

EPOCH_MS = 1_451_606_400_000
TYPES = [f"event_{i}" for i in range(20)]
START = 1_704_067_200  # 2024-01-01T00:00:00Z


def snowflake(ms: int, worker: int, seq: int) -> int:
    return ((ms - EPOCH_MS) << 22) | (worker << 12) | seq


def make_lines(n: int, *, days: int, rng: random.Random,
               users: int = 100_000) -> list[list[bytes]]:
    """Segment lines for two streams; events spread evenly over `days` days, each from one of
    `users` users drawn at random."""
    streams: list[list[bytes]] = [[], []]
    step_ms = max(1, days * 86_400_000 // n)
    for i in range(n):
        w = i % 2
        ms = START * 1000 + i * step_ms
        ev = {"id": str(snowflake(ms, w, i % 4096)), "event_type": rng.choice(TYPES),
              "ts": ms / 1000, "params": {"user_id": rng.randint(1, users), "plan": "pro",
                                          "path": f"/p/{i % 97}"},
              "received_at": ms / 1000 + 0.004}
        streams[w].append(orjson.dumps(ev))
    return streams


def write_segments(directory: Path, streams: list[list[bytes]], per_segment: int) -> int:
    directory.mkdir(parents=True)
    size = 0
    for lines in streams:
        for at in range(0, len(lines), per_segment):
            chunk = lines[at:at + per_segment]
            first = int(orjson.loads(chunk[0])["id"])
            data = b"\n".join(chunk) + b"\n"
            (directory / segment_name(first, sealed=True)).write_bytes(data)
            size += len(data)
    return size


def rows_of(lines: list[bytes]) -> list[tuple[Any, ...]]:
    out = []
    for line in lines:
        e = orjson.loads(line)
        p = e["params"]
        out.append((int(e["id"]), e["event_type"], e["ts"], orjson.dumps(p).decode(),
                    e["received_at"], None, None, str(p["user_id"])))
    return out


class Timer:
    """Wall time and this process's CPU time. On a shared machine the wall time includes
    waiting for the core; the CPU time is what one quiet core would spend (fsync waits are
    not in it, so both are printed)."""

    def __enter__(self) -> Timer:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0

    def rates(self, n: int) -> str:
        return f"{n / self.wall:>10,.0f} /s wall  {n / self.cpu:>10,.0f} /s CPU"


def plain_executemany(path: Path, rows: list[tuple[Any, ...]], batch: int,
                      indexes: bool) -> Timer:
    """The textbook load: one executemany of row tuples per transaction (absent values as
    None), same pragmas and schema as the store."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
    schema = SCHEMA if indexes else SCHEMA.split("CREATE UNIQUE INDEX")[0]
    con.executescript(schema)
    with Timer() as t:
        for at in range(0, len(rows), batch):
            con.execute("BEGIN")
            con.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            rows[at:at + batch])
            con.execute("COMMIT")
    con.close()
    return t


def load_once(cfg: Config, events: int, *, analytics_tables: bool = True) -> tuple[Timer, Timer]:
    """One run of the loader over every segment into a fresh store: the load itself
    (`LoaderDaemon.load_once`: read, parse, insert, daily_stats, the analytics queue and
    positions, one transaction per batch), then the analytics pass that folds the queue into
    the per-user-hour tables (`LoaderDaemon.summarize`), timed apart; `run_once` does both.
    Without analytics tables, nothing is queued and there is no pass: a reference for what
    they cost, not a configuration of the product."""
    store = SQLiteStore(cfg.sqlite_file, user_key=cfg.stats.user_key)
    daemon = LoaderDaemon(cfg, store, SystemClock())
    real = userhours.enqueue, userhours.enqueue_ids
    if not analytics_tables:
        userhours.enqueue = userhours.enqueue_ids = lambda con, ids, min_ts: None
    try:
        with Timer() as load:
            loaded = daemon.load_once()
        with Timer() as summarize:
            daemon.summarize()
    finally:
        userhours.enqueue, userhours.enqueue_ids = real
    assert loaded == events == store.count(), (loaded, store.count())
    con = store._writer
    assert con is not None and userhours.pending_since(con) is None
    if analytics_tables:
        (summarized,) = con.execute("SELECT SUM(n) FROM user_hours").fetchone()
        assert summarized == events, (summarized, events)
    store.close()
    return load, summarize


def bench_load(args: argparse.Namespace, tmp: Path) -> None:
    rng = random.Random(1)
    streams = make_lines(args.events, days=7, rng=rng, users=args.users)
    segments = tmp / "segments"
    size = write_segments(segments, streams, args.per_segment)
    loader = {"batch_size": args.batch_size} if args.batch_size else {}

    def fresh(name: str) -> Config:
        """A data directory of its own (store, positions) over the shared segments."""
        return with_overrides(Config(), data_dir=str(tmp / name),  # type: ignore[arg-type]
                              segments={"dir": str(segments)}, loader=loader)

    batch = fresh("x").loader.batch_size
    all_lines = streams[0] + streams[1]
    with Timer() as parse:
        rows = rows_of(all_lines)
    n = len(rows)
    print(f"load: {args.events:,} events, {size / 2**20:.0f} MiB of segments, "
          f"{args.users:,} users, batch {batch}, synchronous={SYNCHRONOUS}")
    loads: list[Timer] = []
    totals: list[Timer] = []
    bare: list[Timer] = []
    refs: list[Timer] = []
    for run in range(args.runs):
        load, summarize = load_once(fresh(f"loader-{run}"), args.events)
        loads.append(load)
        totals.append(both(load, summarize))
        bare.append(load_once(fresh(f"bare-{run}"), args.events, analytics_tables=False)[0])
        refs.append(plain_executemany(tmp / f"ref-{run}.db", rows, batch, indexes=True))
        if args.runs > 1:
            print(f"  run {run + 1} CPU: loader {n / loads[-1].cpu:>9,.0f} /s   "
                  f"with the analytics pass {n / totals[-1].cpu:>9,.0f} /s   "
                  f"without analytics tables {n / bare[-1].cpu:>9,.0f} /s   "
                  f"reference {n / refs[-1].cpu:>9,.0f} /s")
    floor = plain_executemany(tmp / "floor.db", rows, batch, indexes=False)
    if args.runs > 1:
        print(f"  medians of {args.runs} runs:")
    print(f"  loader: load (events, daily_stats, queue, positions) {median_rates(loads, n)}")
    print(f"  loader: load + analytics pass (events summarized)    {median_rates(totals, n)}")
    print(f"  loader without the analytics tables (reference)      {median_rates(bare, n)}")
    print(f"  reference: executemany of ready rows                 {median_rates(refs, n)}")
    print(f"  reference: executemany, no secondary index           {floor.rates(n)}")
    print(f"  reference: orjson parse + row tuples only            {parse.rates(n)}")
    ref_cpu = statistics.median(r.cpu for r in refs)
    load_ratio = ref_cpu / statistics.median(t.cpu for t in loads)
    total_ratio = ref_cpu / statistics.median(t.cpu for t in totals)
    without = ref_cpu / statistics.median(t.cpu for t in bare)
    print(f"  loader rate / executemany rate (CPU time): load {load_ratio:.2f}; load + "
          f"analytics pass {total_ratio:.2f}; without the analytics tables {without:.2f}")


def both(a: Timer, b: Timer) -> Timer:
    """The time of a then b."""
    t = Timer()
    t.wall, t.cpu = a.wall + b.wall, a.cpu + b.cpu
    return t


def median_rates(timers: list[Timer], n: int) -> str:
    t = Timer()
    t.wall = statistics.median(x.wall for x in timers)
    t.cpu = statistics.median(x.cpu for x in timers)
    return t.rates(n)


def build_big_store(path: Path, n: int, days: int) -> None:
    """Rows first (no index), then daily_stats by GROUP BY, then the indexes: much faster
    than loading 10M events through the loader, and the same file in the end."""
    rng = random.Random(2)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    tables, _, _ = SCHEMA.partition("CREATE UNIQUE INDEX")
    con.executescript(tables)
    step_ms = days * 86_400_000 / n
    t0 = time.perf_counter()
    chunk = 200_000
    for at in range(0, n, chunk):
        rows = []
        for i in range(at, min(n, at + chunk)):
            ms = START * 1000 + int(i * step_ms)
            ts = ms / 1000
            rows.append((snowflake(ms, i % 2, i % 4096), TYPES[rng.randrange(20)], ts,
                         f'{{"user_id":{rng.randint(1, 100_000)},"plan":"pro"}}', ts + 0.004,
                         None, None, None))
        con.execute("BEGIN")
        con.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        con.execute("COMMIT")
        print(f"\r  building: {min(n, at + chunk):,} rows, {time.perf_counter() - t0:.0f} s",
              end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    con.executescript(SCHEMA)  # the index statements; the tables exist already
    con.execute("INSERT INTO daily_stats SELECT date(ts, 'unixepoch'), event_type, COUNT(*) "
                "FROM events GROUP BY 1, 2")
    con.execute("ANALYZE")
    con.close()


def bench_query(args: argparse.Namespace, tmp: Path) -> None:
    n, days = args.query_events, 30
    path = Path(args.store) if args.store else tmp / "big.db"
    t0 = time.perf_counter()
    if not path.exists():
        build_big_store(path, n, days)
    built = time.perf_counter() - t0
    store = SQLiteStore(path, readonly=True)
    count = store.count()
    rng = random.Random(3)
    cases = [(rng.choice(TYPES), START + rng.randrange(days) * 86_400)
             for _ in range(args.queries)]
    times = []
    for event_type, day in cases:
        q0 = time.perf_counter()
        total, events = store.query_events(page=1, limit=100, start=day, end=day + 86_399,
                                           event_types=[event_type])
        times.append(time.perf_counter() - q0)
        assert len(events) == min(100, total)
    cfg = with_overrides(Config(), data_dir=str(tmp), auth={"open_reads": True})  # type: ignore[arg-type]
    http_times = asyncio.run(_handler_times(cfg, store, cases))
    store.close()
    per = count // (days * len(TYPES))
    print(f"query: {count:,} events over {days} days and {len(TYPES)} types (~{per:,} per "
          f"type and day), built in {built:.0f} s; {len(cases)} queries of one type and one "
          f"day ({day_of(START)}...), limit 100")
    print(f"  store.query_events          p50 {_ms(times, 50)} ms   p90 {_ms(times, 90)} ms")
    print(f"  POST /api/events/query      p50 {_ms(http_times, 50)} ms   "
          f"p90 {_ms(http_times, 90)} ms   (handler: body, executor, JSON; no socket)")


async def _handler_times(cfg: Config, store: SQLiteStore,
                         cases: list[tuple[str, int]]) -> list[float]:
    ctx = AppContext(config=cfg, clock=SystemClock(), loop=asyncio.get_running_loop(),
                     metrics=Metrics(), store=store, read_token=None)
    handler = next(r.handler for r in routes(ctx) if r.path == "/api/events/query")
    times = []
    for event_type, day in cases:
        body = orjson.dumps({"eventType": event_type, "startDate": day,
                             "endDate": day + 86_399, "page": 1, "limit": 100})
        req = Request("POST", "/api/events/query", "",
                      ((b"content-type", b"application/json"),), body)
        q0 = time.perf_counter()
        resp = await handler(req)  # type: ignore[misc]
        times.append(time.perf_counter() - q0)
        assert resp.status == 200, resp.body
    return times


def _ms(times: list[float], pct: int) -> str:
    if pct == 50:
        return f"{statistics.median(times) * 1000:6.1f}"
    return f"{statistics.quantiles(times, n=100)[pct - 1] * 1000:6.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=500_000, help="events to load")
    parser.add_argument("--per-segment", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=0,
                        help="loader.batch_size (0: the configured default)")
    parser.add_argument("--runs", type=int, default=1,
                        help="loader and reference runs (medians are printed)")
    parser.add_argument("--users", type=int, default=100_000,
                        help="distinct users the events are drawn from (the analytics tables "
                             "cost grows with users per hour)")
    parser.add_argument("--query-events", type=int, default=10_000_000,
                        help="size of the store queried (0: skip the query benchmark)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--store", help="reuse (or keep) the big store at this path")
    parser.add_argument("--cpu", type=int, default=1, help="core to pin to (-1: no pinning)")
    args = parser.parse_args()
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
        print(f"pinned to core {args.cpu} (like taskset -c {args.cpu})")
    print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}")
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        if args.events:
            bench_load(args, Path(tmp))
        if args.query_events:
            bench_query(args, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
