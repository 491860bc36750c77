"""`collector stats rebuild` against a real redis-server and segment files written here.

Most tests recount on a quiet collector (`include_open=True`: the buckets around NOW are
replaced too); the default, which leaves the buckets still receiving live counts alone, has
its own test."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from collector.config import Config, RedisConfig
from collector.metrics import Metrics
from collector.stats import TOTAL_FIELD
from collector.stats_rebuild import rebuild
from collector.storage.counters import StatsCounters
from collector.storage.redis_client import make_redis_client
from tests.fakes import FakeClock
from tests.fixtures.redis import (  # noqa: F401
    RedisClusterNode,
    RedisServer,
    redis_cluster,
    redis_server,
)
from tests.integration.test_counters_redis import (
    NOW,
    STATS,
    counter_snapshot,
    expected_counters,
    expected_users,
    flush_all,
    make_events,
)

DAY = 86400


@pytest.fixture
def sync_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:  # noqa: F811
    r = redis.Redis(unix_socket_path=str(redis_server.sock), decode_responses=True)
    yield r
    r.close()


@pytest.fixture
def cfg(tmp_path: Path, redis_server: RedisServer) -> Config:  # noqa: F811
    return Config(data_dir=str(tmp_path / "data"), redis=RedisConfig(url=redis_server.url))


def write_segment(directory: Path, first_id: int, events: list[dict[str, Any]], *,
                  sealed: bool = True, tail: bytes = b"") -> Path:
    """A segment file in the line format of docs/DESIGN.md."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{first_id:020d}.ndjson{'' if sealed else '.open'}"
    lines = []
    for i, e in enumerate(events):
        line = {"id": str(first_id + i), "event_type": e["event_type"], "ts": e["ts"],
                "params": e["params"], "received_at": NOW}
        lines.append(orjson.dumps(line) + b"\n")
    path.write_bytes(b"".join(lines) + tail)
    return path


def write_segments(cfg: Config, events: list[dict[str, Any]], per_file: int = 700) -> None:
    chunks = [events[i:i + per_file] for i in range(0, len(events), per_file)]
    for n, chunk in enumerate(chunks):
        last = n == len(chunks) - 1
        write_segment(cfg.segments_path, 10**15 + n * 10**6, chunk, sealed=not last,
                      tail=b'{"id":"9","event_type":"torn' if last else b"")


def full_snapshot(r: redis.Redis, now: float) -> dict[str, Any]:
    """Counters, plus the users of each day (exact count and HyperLogLog estimate)."""
    snap: dict[str, Any] = dict(counter_snapshot(r, now))
    for key in r.scan_iter(match="{collector:uniques}:*"):
        snap[key] = r.bitcount(key) if ":bits:" in key else r.pfcount(key)
    return snap


async def count_live(server: RedisServer, events: list[dict[str, Any]]) -> None:  # noqa: F811
    client = make_redis_client(RedisConfig(timeout=5.0), server.url)
    try:
        counters = StatsCounters(client, RedisConfig(), STATS, FakeClock(NOW), Metrics())
        for i in range(0, len(events), 100):
            counters.add(events[i:i + 100])
        await flush_all(counters)
    finally:
        await client.aclose()


def sample(seed: int, n: int = 3000) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    users: list[Any] = [*range(300), *(f"u{i}" for i in range(200)), "12", "0012"]
    return make_events(rng, n, start=NOW - 30 * 3600, end=NOW - 5, users=users)


async def test_rebuild_equals_live_counts(cfg: Config, redis_server: RedisServer,  # noqa: F811
                                          sync_redis: redis.Redis) -> None:
    events = sample(1)
    await count_live(redis_server, events)
    live = full_snapshot(sync_redis, NOW)
    assert live  # the live path wrote something to compare with

    sync_redis.flushall()
    write_segments(cfg, events)
    summary = rebuild(cfg, NOW - 30 * 3600, NOW, progress=False, clock=FakeClock(NOW),
                      include_open=True)

    assert full_snapshot(sync_redis, NOW) == live
    assert summary["events"] == len(events)
    assert summary["bad_lines"] == 0  # the torn tail of the .open segment is not a line
    assert summary["lines"] == len(events)
    assert summary["straddling_buckets"] == 0
    # ...and equal to the independent reference, users included
    assert counter_snapshot(sync_redis, NOW) == expected_counters(events, NOW)
    for day, (ints, _) in expected_users(events).items():
        assert sync_redis.bitcount(f"{{collector:uniques}}:bits:{day}") == len(ints)


async def test_rebuild_twice_gives_the_same_counts(cfg: Config,
                                                   sync_redis: redis.Redis) -> None:
    events = sample(2)
    write_segments(cfg, events)
    clock = FakeClock(NOW)
    first = rebuild(cfg, NOW - 30 * 3600, None, progress=False, clock=clock,
                    include_open=True)
    once = full_snapshot(sync_redis, NOW)
    second = rebuild(cfg, NOW - 30 * 3600, None, progress=False, clock=clock,
                    include_open=True)
    assert full_snapshot(sync_redis, NOW) == once
    assert first["keys_written"] == second["keys_written"] > 0
    assert not list(sync_redis.scan_iter(match="*:rebuild"))  # no temporary key left


async def test_rebuild_restores_counts_lost_while_redis_was_down(
        cfg: Config, redis_server: RedisServer, sync_redis: redis.Redis) -> None:  # noqa: F811
    events = sample(3)
    half = len(events) // 2
    await count_live(redis_server, events[:half])
    redis_server.kill()  # the second half never reaches Redis; the first is lost with it
    redis_server.start()
    write_segments(cfg, events)  # ...but every event is in the segments
    rebuild(cfg, NOW - 30 * 3600, NOW, progress=False, clock=FakeClock(NOW),
                      include_open=True)
    assert counter_snapshot(sync_redis, NOW) == expected_counters(events, NOW)


async def test_rebuild_repairs_overcounts_and_deletes_empty_buckets(
        cfg: Config, redis_server: RedisServer, sync_redis: redis.Redis) -> None:  # noqa: F811
    events = sample(4)
    await count_live(redis_server, events)
    hour_keys = sorted(k for k in sync_redis.scan_iter(match="{collector:hour}:*"))
    sync_redis.hincrby(hour_keys[0], TOTAL_FIELD, 5)  # a retried pipeline applied twice
    sync_redis.hincrby(hour_keys[0], "ghost", 1)
    want = expected_counters(events, NOW)
    phantom = next(k for k in (f"{{collector:minute}}:2023111410{m:02d}" for m in range(60))
                   if k not in want)  # inside the span, but no event in that minute
    sync_redis.hset(phantom, mapping={"x": 3, TOTAL_FIELD: 3})
    write_segments(cfg, events)
    summary = rebuild(cfg, NOW - 30 * 3600, NOW, progress=False, clock=FakeClock(NOW),
                      include_open=True)
    assert counter_snapshot(sync_redis, NOW) == want
    assert not sync_redis.exists(phantom)
    assert summary["keys_deleted"] > 0


async def test_rebuild_leaves_buckets_outside_the_span_alone(
        cfg: Config, sync_redis: redis.Redis) -> None:
    outside_day = "{collector:day}:20231110"  # four days before NOW
    outside_hour = "{collector:hour}:2023111321"  # the day before `since`'s day
    sync_redis.hset(outside_day, mapping={"x": 7, TOTAL_FIELD: 7})
    sync_redis.hset(outside_hour, mapping={"x": 2, TOTAL_FIELD: 2})
    events = [e for e in sample(5) if e["ts"] >= NOW - 20 * 3600]
    write_segments(cfg, events)
    # since = 2023-11-14 02:13:20: the span is the whole of 2023-11-14, only
    summary = rebuild(cfg, NOW - 20 * 3600, NOW, progress=False, clock=FakeClock(NOW),
                      include_open=True)
    lo, hi = summary["span"]
    assert (hi - lo) == DAY and lo % DAY == 0
    assert sync_redis.hget(outside_day, "x") == "7"
    assert sync_redis.hget(outside_hour, "x") == "2"
    inside = [e for e in events if lo <= e["ts"] < hi]
    assert summary["events"] == len(inside)


async def test_events_in_the_widened_span_are_counted_whole(
        cfg: Config, sync_redis: redis.Redis) -> None:
    # since falls mid-day: the day bucket (and the others of that day) must include the events
    # before `since` too, or the rebuild would lose them.
    day0 = int(NOW) - int(NOW) % DAY
    early = [{"event_type": "early", "ts": day0 + 60, "params": {}, "id": 1}]
    late = [{"event_type": "late", "ts": NOW - 100, "params": {}, "id": 2}]
    write_segments(cfg, early + late)
    rebuild(cfg, NOW - 3600, NOW, progress=False, clock=FakeClock(NOW),
                      include_open=True)
    assert sync_redis.hgetall("{collector:day}:20231114") == {
        "early": "1", "late": "1", TOTAL_FIELD: "2"}


async def test_old_sealed_segments_are_skipped_by_mtime(
        cfg: Config, sync_redis: redis.Redis) -> None:
    recent = [{"event_type": "new", "ts": NOW - 100, "params": {}, "id": 1}]
    old_events = [{"event_type": "old", "ts": NOW - 10 * DAY, "params": {}, "id": 2}]
    old = write_segment(cfg.segments_path, 10**15, old_events)
    write_segment(cfg.segments_path, 10**15 + 10**6, recent)
    os.utime(old, (NOW - 9 * DAY, NOW - 9 * DAY))  # last written 9 days before NOW
    summary = rebuild(cfg, NOW - 3600, NOW, progress=False, clock=FakeClock(NOW),
                      include_open=True)
    assert summary["segments"] == 1
    assert sync_redis.hget("{collector:day}:20231114", "new") == "1"


async def test_bad_lines_are_counted_and_skipped(cfg: Config, sync_redis: redis.Redis) -> None:
    path = write_segment(cfg.segments_path, 10**15,
                         [{"event_type": "ok", "ts": NOW - 10, "params": {}, "id": 1}])
    with open(path, "ab") as f:
        f.write(b"not json\n\n" + b'{"id":"1","ts":"x","event_type":"t"}\n' + b"\x00\x00\n")
    summary = rebuild(cfg, NOW - 60, NOW, progress=False, clock=FakeClock(NOW),
                      include_open=True)
    assert summary["bad_lines"] == 3
    assert summary["events"] == 1
    assert sync_redis.hget("{collector:day}:20231114", "ok") == "1"


async def test_expired_buckets_are_not_resurrected(cfg: Config, sync_redis: redis.Redis) -> None:
    events = [{"event_type": "x", "ts": NOW - 5 * 3600, "params": {}, "id": 1}]
    write_segments(cfg, events)
    rebuild(cfg, NOW - 6 * 3600, NOW, progress=False, clock=FakeClock(NOW),
                      include_open=True)
    assert not list(sync_redis.scan_iter(match="{collector:second}:*"))  # kept 2 h only
    assert list(sync_redis.scan_iter(match="{collector:minute}:*"))


async def test_progress_bar_and_until_before_since(
        cfg: Config, capsys: pytest.CaptureFixture[str]) -> None:
    write_segments(cfg, sample(6, 50))
    rebuild(cfg, NOW - 3600, NOW, progress=True, clock=FakeClock(NOW))
    assert "reading segments" in capsys.readouterr().err
    with pytest.raises(ValueError, match="before"):
        rebuild(cfg, NOW, NOW - 10, progress=False, clock=FakeClock(NOW),
                      include_open=True)


async def test_embedded_redis_not_running_is_a_clear_error(tmp_path: Path) -> None:
    cfg = Config(data_dir=str(tmp_path / "data"))  # no redis.url: the embedded one
    write_segments(cfg, sample(7, 10))
    with pytest.raises(RuntimeError, match="collector serve"):
        rebuild(cfg, NOW - 3600, NOW, progress=False, clock=FakeClock(NOW),
                      include_open=True)


async def test_rebuild_through_a_cluster_client(tmp_path: Path,
                                                redis_cluster: RedisClusterNode) -> None:  # noqa: F811
    # RENAME of the temporary key and the multi-key DEL must stay inside one slot.
    from redis.cluster import RedisCluster

    cfg = Config(data_dir=str(tmp_path / "data"), redis=RedisConfig(url=redis_cluster.url))
    events = sample(8, 500)
    write_segments(cfg, events)
    summary = rebuild(cfg, NOW - 30 * 3600, NOW, progress=False, clock=FakeClock(NOW),
                      include_open=True)
    assert summary["keys_written"] > 0 and summary["keys_deleted"] > 0
    r = RedisCluster(host="127.0.0.1", port=redis_cluster.port, decode_responses=True)
    try:
        assert counter_snapshot(r, NOW) == expected_counters(events, NOW)
    finally:
        r.close()


async def test_buckets_still_receiving_live_counts_are_left_alone(
        cfg: Config, redis_server: RedisServer, sync_redis: redis.Redis) -> None:  # noqa: F811
    # A rebuild under live traffic replaced the current minute, hour and day from the segments
    # it had read, losing what the workers added meanwhile (an audit: 632 counts). By default
    # those buckets are left alone; the closed ones are still repaired.
    events = sample(5)
    await count_live(redis_server, events)
    want = expected_counters(events, NOW)
    current = {g: f"{{collector:{g}}}:{stamp}" for g, stamp in (
        ("minute", "202311142213"), ("hour", "2023111422"), ("day", "20231114"))}
    for key in current.values():  # counts the workers added while the rebuild ran
        sync_redis.hincrby(key, TOTAL_FIELD, 1000)
    sync_redis.setbit("{collector:uniques}:bits:20231114", 99_999, 1)  # a user of today
    closed = sorted(k for k in want if k.startswith("{collector:hour}:") and
                    k != current["hour"])[0]
    sync_redis.hincrby(closed, TOTAL_FIELD, 7)  # an overcount in a closed bucket
    write_segments(cfg, events)

    summary = rebuild(cfg, NOW - 30 * 3600, NOW, progress=False, clock=FakeClock(NOW))

    # The buckets that have started and may still get counts (the last seconds, the current
    # minute, hour and day), not every later bucket of today (thousands of seconds).
    assert 3 <= summary["open_buckets"] <= 20, summary
    for key in current.values():
        assert int(sync_redis.hget(key, TOTAL_FIELD)) == \
            want.get(key, {}).get(TOTAL_FIELD, 0) + 1000
    assert sync_redis.getbit("{collector:uniques}:bits:20231114", 99_999) == 1
    assert int(sync_redis.hget(closed, TOTAL_FIELD)) == want[closed][TOTAL_FIELD]
