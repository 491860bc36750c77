"""StatsCounters against a real redis-server: counts, TTLs, uniques, and Redis trouble.

Expected values come from a reference written independently of collector.stats (datetime
truncation in UTC, not integer flooring), and every counter key in Redis is compared.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from collector.config import RedisConfig, StatsConfig
from collector.metrics import Metrics
from collector.stats import BITMAP_ID_LIMIT, TOTAL_FIELD
from collector.storage.counters import StatsCounters
from collector.storage.redis_client import make_redis_client
from tests.fakes import FakeClock
from tests.fixtures.redis import (  # noqa: F401
    RedisClusterNode,
    RedisServer,
    redis_cluster,
    redis_server,
)

NOW = 1_700_000_000.25  # 2023-11-14T22:13:20.25Z
STATS = StatsConfig()
TYPES = ["signup", "page view", "purchase", "émoji 🎉", "a/b:c{d}"]
HANG_GUARD = 15.0
"""Only against a hang: a test that reaches it fails, no test depends on how fast Redis is."""


# --- reference -----------------------------------------------------------------------------------


def truncate(dt: datetime, granularity: str) -> datetime:
    """Start of the UTC second, minute, hour or day holding `dt`."""
    dt = dt.replace(microsecond=0)
    if granularity in ("minute", "hour", "day"):
        dt = dt.replace(second=0)
    if granularity in ("hour", "day"):
        dt = dt.replace(minute=0)
    if granularity == "day":
        dt = dt.replace(hour=0)
    return dt


BUSY_LUA = """
local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end
local start = now()
while now() - start < 1500000 do end
return 1
"""
"""Keeps redis-server busy for 1.5 s by its own clock (it runs scripts to the end). By the
clock, not by a count of iterations: on a fast machine a count ended before the flush's 0.2 s
timeout, and the flush then succeeded."""
RECEIPTS = "{collector:receipts}"
"""Where each StatsCounters records its last applied flush (not a counter)."""
EDGE = 60.0
"""Buckets within this many seconds of their deadline are left out of comparisons: Redis
expires them in real time while the test runs."""


def expected_counters(events: list[dict[str, Any]], now: float,
                      prefix: str = "collector") -> dict[str, dict[str, int]]:
    """Counter hashes the events must produce at `now`; buckets near expiry are left out."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for e in events:
        dt = datetime.fromtimestamp(e["ts"], UTC)
        for g in STATS.granularities:
            start = truncate(dt, g.name)
            if start.timestamp() + g.seconds + g.retention <= now + EDGE:
                continue  # past retention (never written) or about to expire
            key = f"{{{prefix}:{g.name}}}:{start.strftime(g.format)}"
            out[key][e["event_type"]] += 1
            out[key][TOTAL_FIELD] += 1
    return {k: dict(v) for k, v in out.items()}


def near_expiry(key: str, now: float) -> bool:
    name, label = key[1:].split("}:")
    g = next(g for g in STATS.granularities if f"collector:{g.name}" == name)
    start = datetime.strptime(label, g.format).replace(tzinfo=UTC).timestamp()
    return start + g.seconds + g.retention <= now + EDGE


def expected_users(events: list[dict[str, Any]]) -> dict[str, tuple[set[int], set[str]]]:
    """Per UTC day (YYYYMMDD): the int ids (bitmap) and the other ids (HyperLogLog)."""
    out: dict[str, tuple[set[int], set[str]]] = defaultdict(lambda: (set(), set()))
    for e in events:
        u = e["params"].get("user_id")
        if u is None or u == "":
            continue
        day = datetime.fromtimestamp(e["ts"], UTC).strftime("%Y%m%d")
        if isinstance(u, str) and u.isascii() and u.isdigit() and str(int(u)) == u:
            u = int(u)
        if isinstance(u, int) and 0 <= u < BITMAP_ID_LIMIT:
            out[day][0].add(u)
        else:
            out[day][1].add(str(u))
    return out


def counter_snapshot(r: Any, now: float) -> dict[str, dict[str, int]]:
    """Every counter hash in Redis, but those near expiry (see EDGE)."""
    keys = [key for key in r.scan_iter(match="{collector:*", count=1000)
            if not key.startswith(("{collector:uniques}", RECEIPTS))
            and not near_expiry(key, now)]
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return {key: {f: int(v) for f, v in h.items()}
            for key, h in zip(keys, pipe.execute(), strict=True)}


def make_events(rng: random.Random, n: int, *, start: float, end: float,
                users: list[Any] | None = None) -> list[dict[str, Any]]:
    events = []
    for i in range(n):
        ts: float = rng.uniform(start, end)
        if i % 3 == 0:
            ts = int(ts)  # ints and floats, as clients send them
        params: dict[str, Any] = {"i": i}
        if users:
            params["user_id"] = rng.choice(users)
        events.append({"event_type": rng.choice(TYPES), "ts": ts, "params": params, "id": i})
    return events


def own_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "collector.storage.counters"]


def add_in_requests(counters: StatsCounters, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 100):
        counters.add(events[i:i + 100])


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def sync_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:  # noqa: F811
    r = redis.Redis(unix_socket_path=str(redis_server.sock), decode_responses=True)
    yield r
    r.close()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Any]:  # noqa: F811
    # Generous: a loaded test machine must not turn a healthy Redis into a failed flush.
    c = make_redis_client(RedisConfig(timeout=5.0), redis_server.url)
    yield c
    await c.aclose()


def make_counters(client: Any, clock: FakeClock, metrics: Metrics,
                  **redis_overrides: Any) -> StatsCounters:
    cfg = RedisConfig(timeout=0.5, **redis_overrides)
    return StatsCounters(client, cfg, STATS, clock, metrics)


async def flush(counters: StatsCounters) -> None:
    await asyncio.wait_for(counters.flush(), HANG_GUARD)


async def flush_all(counters: StatsCounters) -> None:
    """Flush until nothing is pending: a big backlog takes several bounded pipelines."""
    for _ in range(100):
        await flush(counters)
        if counters.pending == 0:
            return
    raise AssertionError(f"{counters.pending} entries still pending after 100 flushes")


# --- counts --------------------------------------------------------------------------------------


async def test_every_bucket_matches_what_was_sent(client: Any, sync_redis: redis.Redis) -> None:
    rng = random.Random(1)
    clock = FakeClock(NOW)
    metrics = Metrics()
    counters = make_counters(client, clock, metrics)
    events = (
        make_events(rng, 3000, start=NOW - 3 * 3600, end=NOW)  # second buckets half expired
        + make_events(rng, 500, start=NOW - 60 * 3600, end=NOW - 40 * 3600)  # hours expiring
        + make_events(rng, 200, start=NOW - 300 * 86400, end=NOW - 100 * 86400)  # days only
        + make_events(rng, 50, start=NOW, end=NOW + 86400)  # ahead (clock skew allowance)
    )
    rng.shuffle(events)
    add_in_requests(counters, events)
    await flush_all(counters)

    assert counter_snapshot(sync_redis, NOW) == expected_counters(events, NOW)
    assert metrics.get("collector_stats_flushes_total", result="error") == 0


async def test_counts_add_up_over_many_flushes(client: Any, sync_redis: redis.Redis) -> None:
    rng = random.Random(2)
    clock = FakeClock(NOW)
    counters = make_counters(client, clock, Metrics())
    events = make_events(rng, 2000, start=NOW - 600, end=NOW + 60)
    for i in range(0, len(events), 250):
        add_in_requests(counters, events[i:i + 250])
        await flush(counters)
        clock.advance(0.1)
    assert counter_snapshot(sync_redis, clock.time()) == expected_counters(events, clock.time())


async def test_events_older_than_every_retention_are_not_counted(
        client: Any, sync_redis: redis.Redis) -> None:
    metrics = Metrics()
    counters = make_counters(client, FakeClock(NOW), metrics)
    counters.add([{"event_type": "old", "ts": NOW - 500 * 86400, "params": {"user_id": 1},
                   "id": 1}])
    await flush(counters)
    assert sync_redis.dbsize() == 0
    assert metrics.get("collector_stats_too_old_total") == 1


async def test_ttls_follow_each_granularity_retention(
        client: Any, sync_redis: redis.Redis) -> None:
    counters = make_counters(client, FakeClock(NOW), Metrics())
    ts = NOW - 10
    counters.add([{"event_type": "x", "ts": ts, "params": {"user_id": 7}, "id": 1},
                  {"event_type": "x", "ts": ts, "params": {"user_id": "u7"}, "id": 2}])
    flushed = time.monotonic()
    await flush(counters)
    sec = int(ts)
    want = {
        f"{{collector:{g.name}}}": sec - sec % g.seconds + g.seconds + g.retention - NOW
        for g in STATS.granularities
    }
    day_end = sec - sec % 86400 + 86400
    want["{collector:uniques}:bits"] = day_end + 400 * 86400 - NOW
    want["{collector:uniques}:hll"] = want["{collector:uniques}:bits"]
    keys = [k for k in sync_redis.scan_iter() if not k.startswith(RECEIPTS)]
    assert len(keys) == 6
    for key in keys:
        prefix = key.rsplit(":", 1)[0]
        ttl = sync_redis.pttl(key) / 1000
        elapsed = time.monotonic() - flushed
        # The key lives at least a second past the end of its retention: a TTL rounded down let
        # the oldest bucket of the window read 0 for most of its last second (an audit). Redis
        # counts down in real time from the EXPIRE, which came after `flushed`, so the remaining
        # TTL is at most what was set and, with the time since `flushed` added back, at least it
        # (less a millisecond or two: Redis keeps its clock in whole milliseconds).
        expected = math.ceil(want[prefix]) + 1
        assert ttl <= expected, key
        assert ttl + elapsed >= expected - 0.002, key


# --- unique users --------------------------------------------------------------------------------


async def test_uniques_exact_for_int_ids_estimated_for_others(
        client: Any, sync_redis: redis.Redis) -> None:
    rng = random.Random(3)
    counters = make_counters(client, FakeClock(NOW), Metrics())
    int_ids = rng.sample(range(BITMAP_ID_LIMIT), 3000)
    users: list[Any] = [*int_ids, *(str(u) for u in int_ids[:500])]  # "42" is user 42
    users += [f"user-{i}" for i in range(2000)] + [BITMAP_ID_LIMIT + 5, -3, "007"]
    events = make_events(rng, 20_000, start=NOW - 2 * 86400, end=NOW, users=users)
    for e in events:  # few buckets: this test is about users, not counts
        e["ts"] = int(e["ts"]) // 3600 * 3600
    add_in_requests(counters, events)
    await flush(counters)

    want = expected_users(events)
    assert len(want) == 3
    for day, (ints, others) in want.items():
        assert sync_redis.bitcount(f"{{collector:uniques}}:bits:{day}") == len(ints)
        estimate = sync_redis.pfcount(f"{{collector:uniques}}:hll:{day}")
        assert abs(estimate - len(others)) <= 0.03 * len(others) + 1, (day, estimate)
        # the bitmap holds exactly these ids
        for u in list(ints)[:50]:
            assert sync_redis.getbit(f"{{collector:uniques}}:bits:{day}", u) == 1


# --- Redis trouble -------------------------------------------------------------------------------


async def test_redis_killed_mid_load_counts_are_kept_and_flushed_after_restart(
        client: Any, redis_server: RedisServer,  # noqa: F811
        sync_redis: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(4)
    clock = FakeClock(NOW)
    metrics = Metrics()
    counters = make_counters(client, clock, metrics)
    before = make_events(rng, 500, start=NOW - 3600, end=NOW)
    add_in_requests(counters, before)
    await flush(counters)
    assert counter_snapshot(sync_redis, NOW) == expected_counters(before, NOW)

    redis_server.kill()
    during = make_events(rng, 3000, start=NOW - 3600, end=NOW)
    with caplog.at_level(logging.WARNING, logger="collector.storage.counters"):
        for i in range(0, len(during), 300):
            add_in_requests(counters, during[i:i + 300])  # sync: cannot wait on Redis
            await flush(counters)  # fails, keeps everything
            clock.advance(0.1)
        assert counters.pending > 0
        assert metrics.get("collector_stats_pending_keys") == counters.pending
        assert metrics.get("collector_redis_errors_total") >= 10
        assert metrics.get("collector_stats_flushes_total", result="error") == 10
        assert metrics.get("collector_stats_dropped_total", unit="events") == 0
        assert len(own_records(caplog)) == 1  # one line per incident, not per flush

        redis_server.start()  # empty: the counts flushed before the kill are gone with it
        await flush_all(counters)
        records = own_records(caplog)
        assert len(records) == 2
        assert "recovered" in records[1].getMessage()

    assert counters.pending == 0
    assert counter_snapshot(sync_redis, clock.time()) == expected_counters(during, clock.time())


async def test_stalled_redis_times_out_and_counts_survive(
        redis_server: RedisServer, sync_redis: redis.Redis) -> None:  # noqa: F811
    clock = FakeClock(NOW)
    metrics = Metrics()
    client = make_redis_client(RedisConfig(timeout=2.0), redis_server.url)
    try:
        counters = make_counters(client, clock, metrics)
        events = make_events(random.Random(5), 400, start=NOW - 100, end=NOW)
        add_in_requests(counters, events)
        assert redis_server.proc is not None
        redis_server.proc.send_signal(signal.SIGSTOP)  # accepts connections, never answers
        try:
            await flush(counters)  # returns after the socket timeout, it does not hang
            assert metrics.get("collector_stats_flushes_total", result="error") == 1
            assert counters.pending > 0
        finally:
            redis_server.kill()  # SIGKILL works on a stopped process; nothing was applied
        redis_server.start()
        await flush(counters)
        assert counters.pending == 0
    finally:
        await client.aclose()
    assert counter_snapshot(sync_redis, NOW) == expected_counters(events, NOW)


async def test_pending_is_bounded_and_drops_are_counted(
        client: Any, redis_server: RedisServer, sync_redis: redis.Redis) -> None:  # noqa: F811
    clock = FakeClock(NOW)
    metrics = Metrics()
    counters = make_counters(client, clock, metrics, max_pending_keys=100)
    redis_server.kill()
    # one event per second for 5 minutes, one type: each second adds 2 fields to a new
    # second bucket; minutes, hours and the day are shared
    events = [{"event_type": "tick", "ts": NOW - 300 + i, "params": {}, "id": i}
              for i in range(300)]
    for e in events:
        counters.add([e])
        await flush(counters)
    assert 0 < counters.pending <= 100
    dropped = metrics.get("collector_stats_dropped_total", unit="events")
    assert dropped > 0

    redis_server.start()
    await flush(counters)
    day_key = "{collector:day}:" + datetime.fromtimestamp(NOW, UTC).strftime("%Y%m%d")
    kept = int(sync_redis.hget(day_key, TOTAL_FIELD) or 0)
    assert kept + dropped == len(events)
    # the events kept are whole: every granularity counted the same ones
    snapshot = counter_snapshot(sync_redis, NOW)
    for g in STATS.granularities:
        total = sum(h[TOTAL_FIELD] for k, h in snapshot.items()
                    if k.startswith(f"{{collector:{g.name}}}"))
        assert total == kept, g.name
    # ...and they are the earliest ones: the bound drops new counts, not old ones
    assert snapshot == expected_counters(events[:int(kept)], NOW)


async def test_commands_refused_by_redis_are_retried(
        client: Any, sync_redis: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(NOW)
    metrics = Metrics()
    counters = make_counters(client, clock, metrics)
    events = make_events(random.Random(6), 300, start=NOW - 50, end=NOW,
                         users=[1, 2, "x", "y"])
    add_in_requests(counters, events)
    sync_redis.config_set("maxmemory", "1")  # every write is refused: OOM
    try:
        with caplog.at_level(logging.WARNING, logger="collector.storage.counters"):
            await flush(counters)
            await flush(counters)
        assert metrics.get("collector_stats_flushes_total", result="error") == 2
        # (a transaction refused whole counts once per flush)
        assert metrics.get("collector_redis_errors_total") >= 2
        assert counters.pending > 0
        records = own_records(caplog)
        assert len(records) == 1
        assert "OutOfMemoryError" in records[0].getMessage()
    finally:
        sync_redis.config_set("maxmemory", "0")
    await flush(counters)
    assert counters.pending == 0
    assert counter_snapshot(sync_redis, NOW) == expected_counters(events, NOW)
    assert sync_redis.bitcount("{collector:uniques}:bits:20231114") == 2
    assert sync_redis.pfcount("{collector:uniques}:hll:20231114") == 2


async def _until_redis_is_busy(server: RedisServer) -> None:
    """Return once Redis runs the busy script: a PING that cannot get an answer in 50 ms."""
    probe = redis.Redis.from_url(server.url, socket_timeout=0.05)
    deadline = time.monotonic() + 10
    try:
        while True:
            assert time.monotonic() < deadline, "the busy script never started"
            try:
                probe.ping()
            except redis.exceptions.TimeoutError:
                return
            await asyncio.sleep(0.005)
    finally:
        probe.close()


async def test_a_flush_applied_after_its_timeout_is_not_sent_twice(
        redis_server: RedisServer, sync_redis: redis.Redis) -> None:  # noqa: F811
    # Redis busy for longer than the client's timeout: the flush times out, yet Redis applies
    # it once the busy script ends. The next flush must find it applied (the receipt), not
    # send the same HINCRBYs again (every count doubled, as an audit measured).
    short = make_redis_client(RedisConfig(timeout=0.2), redis_server.url)
    try:
        metrics = Metrics()
        counters = make_counters(short, FakeClock(NOW), metrics)
        events = make_events(random.Random(9), 300, start=NOW - 50, end=NOW, users=[1, "x"])
        add_in_requests(counters, events)
        await flush(counters)  # connects, so the next flush has nothing left to set up
        add_in_requests(counters, events)
        errors = metrics.get("collector_stats_flushes_total", result="error")
        busy = asyncio.get_running_loop().run_in_executor(None, sync_redis.eval, BUSY_LUA, 0)
        await _until_redis_is_busy(redis_server)
        await flush(counters)
        assert metrics.get("collector_stats_flushes_total", result="error") == errors + 1
        await busy
        await flush(counters)
        assert counters.pending == 0
        assert counter_snapshot(sync_redis, NOW) == expected_counters(events + events, NOW)
    finally:
        await short.aclose()


async def test_a_flush_not_applied_is_sent_again_once_redis_answers(
        client: Any, redis_server: RedisServer, sync_redis: redis.Redis) -> None:  # noqa: F811
    # The other side of the receipt: a flush that never reached Redis (stopped) is sent
    # again, and nothing is sent while the receipt cannot be read.
    clock = FakeClock(NOW)
    counters = make_counters(client, clock, Metrics())
    events = make_events(random.Random(10), 200, start=NOW - 50, end=NOW, users=[3])
    add_in_requests(counters, events)
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(counters.flush(), 0.5)
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    await flush_all(counters)
    assert counter_snapshot(sync_redis, NOW) == expected_counters(events, NOW)


async def test_a_backlog_drains_in_bounded_pipelines(
        client: Any, sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.storage import counters as counters_module

    monkeypatch.setattr(counters_module, "MAX_COMMANDS", 50)
    counters = make_counters(client, FakeClock(NOW), Metrics())
    events = [{"event_type": "tick", "ts": NOW - 1000 + i, "params": {"user_id": i}, "id": i}
              for i in range(200)]
    counters.add(events)

    def hincrby_calls() -> int:
        stats = sync_redis.info("commandstats").get("cmdstat_hincrby")
        return int(stats["calls"]) if stats else 0

    await flush(counters)
    assert 0 < hincrby_calls() <= 50  # not the whole backlog in one pipeline
    assert counters.pending > 0
    for _ in range(20):
        if counters.pending == 0:
            break
        await flush(counters)
    assert counters.pending == 0
    assert counter_snapshot(sync_redis, NOW) == expected_counters(events, NOW)
    assert sync_redis.bitcount("{collector:uniques}:bits:20231114") == 200
    for key in sync_redis.scan_iter():
        assert sync_redis.ttl(key) > 0, key  # every key got its EXPIRE in the end


# --- the flush loop ------------------------------------------------------------------------------


async def test_flush_loop_writes_without_being_asked(
        client: Any, sync_redis: redis.Redis) -> None:
    clock = FakeClock(NOW)
    counters = make_counters(client, clock, Metrics(), flush_interval=0.01)
    events = make_events(random.Random(7), 100, start=NOW - 10, end=NOW)
    await counters.start()
    try:
        counters.add(events)

        async def written() -> None:
            while counter_snapshot(sync_redis, NOW) != expected_counters(events, NOW):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(written(), HANG_GUARD)
    finally:
        await counters.close()


async def test_close_flushes_what_is_pending(client: Any, sync_redis: redis.Redis) -> None:
    counters = make_counters(client, FakeClock(NOW), Metrics(), flush_interval=3600)
    await counters.start()
    events = make_events(random.Random(8), 100, start=NOW - 10, end=NOW)
    counters.add(events)
    await counters.close()
    assert counter_snapshot(sync_redis, NOW) == expected_counters(events, NOW)


async def test_close_with_redis_down_returns(
        client: Any, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    counters = make_counters(client, FakeClock(NOW), Metrics())
    await counters.start()
    redis_server.kill()
    counters.add(make_events(random.Random(9), 10, start=NOW - 10, end=NOW))
    with caplog.at_level(logging.WARNING, logger="collector.storage.counters"):
        await asyncio.wait_for(counters.close(), HANG_GUARD)
    assert any("not written to Redis at shutdown" in r.getMessage()
               for r in own_records(caplog))


# --- Redis Cluster ----------------------------------------------------------------------------


async def test_counters_and_reads_through_a_cluster_client(
        redis_cluster: RedisClusterNode) -> None:  # noqa: F811
    # Redis refuses multi-key commands across slots (CROSSSLOT) even on one node, so this
    # checks the hash tags as well as the cluster client's pipelines.
    from redis.asyncio.cluster import RedisCluster

    from collector.config import Config
    from collector.context import AppContext
    from collector.http.stats_routes import StatsReader

    client = make_redis_client(RedisConfig(timeout=2.0), redis_cluster.url)
    assert isinstance(client, RedisCluster)
    try:
        clock = FakeClock(NOW)
        counters = make_counters(client, clock, Metrics())
        events = make_events(random.Random(10), 500, start=NOW - 3600, end=NOW,
                             users=[1, 2, "x"])
        add_in_requests(counters, events)
        await flush(counters)
        assert counters.pending == 0

        cfg = Config()
        ctx = AppContext(config=cfg, clock=clock, loop=asyncio.get_running_loop(),
                         metrics=Metrics(), redis=client)
        body = await StatsReader(ctx).answer(client, cfg.stats.granularities, None, NOW)
        assert body["total"] == len(events)
        assert sum(r["count"] for r in body["types"]) == len(events)
        assert body["uniques"][-1]["exact"] == 2 and body["uniques"][-1]["estimated"] == 1
    finally:
        await client.aclose()
