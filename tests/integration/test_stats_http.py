"""GET /api/stats through the real server process, with a real redis-server behind it.

The server runs on the real clock, so the events sent here are placed relative to time.time()
and well inside every series (the last hour but the last few seconds); every bucket returned is
compared with what was sent.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest

from tests.fixtures.redis import RedisServer, redis_server  # noqa: F401
from tests.fixtures.server import ROOT, ServerProcess

HANG_GUARD = 20.0
TYPES = ["signup", "page view", "purchase", "a/b"]
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


def make_events(rng: random.Random, n: int, now: float) -> list[dict[str, Any]]:
    events = []
    for i in range(n):
        ts: float = now - rng.uniform(30, 3600)
        if i % 2:
            ts = int(ts)
        events.append({"event_type": rng.choice(TYPES), "ts": ts,
                       "params": {"user_id": rng.choice([1, 2, 3, "ann", "bob", "7"])}})
    return events


def post_all(server: ServerProcess, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 100):
        status, body = server.json("POST", "/api/events", events[i:i + 100])
        assert status == 202, body


def expected_series(events: list[dict[str, Any]], granularity: str,
                    event_type: str | None = None) -> Counter[int]:
    return Counter(
        int(truncate(datetime.fromtimestamp(e["ts"], UTC), granularity).timestamp())
        for e in events if event_type is None or e["event_type"] == event_type
    )


def get_stats(server: ServerProcess, path: str = "/api/stats") -> tuple[int, Any]:
    return server.json("GET", path)


def wait_for_total(server: ServerProcess, total: int) -> dict[str, Any]:
    give_up = time.monotonic() + HANG_GUARD
    while True:
        status, body = get_stats(server)
        if status == 200 and body["total"] == total:
            # Fetch again: the series of one answer are read one granularity after the other,
            # so the answer that saw the last flush land may hold a series read before it.
            status, body = get_stats(server)
            assert status == 200
            return dict(body)
        if time.monotonic() > give_up:
            raise AssertionError(f"stats never reached total {total}: {status} {body}")
        time.sleep(0.05)


def assert_series_match(body: dict[str, Any], events: list[dict[str, Any]],
                        event_type: str | None = None) -> None:
    for name, series in body["series"].items():
        want = expected_series(events, name, event_type)
        got = {start: count for start, count in series}
        assert len(got) == len(series)  # no bucket twice
        assert {s: got.get(s, 0) for s in want} == dict(want), name  # every event counted
        assert sum(got.values()) == sum(want.values()), name  # and nothing else
        starts = [s for s, _ in series]
        step = starts[1] - starts[0]
        assert starts == list(range(starts[0], starts[-1] + 1, step))  # zeros included


@pytest.fixture
def stats_server(start_server: Callable[..., ServerProcess],
                 redis_server: RedisServer) -> ServerProcess:  # noqa: F811
    return start_server(env={"COLLECTOR_REDIS_ENABLED": "true",
                             "COLLECTOR_REDIS_URL": redis_server.url})


def test_stats_count_every_event_in_every_bucket(stats_server: ServerProcess) -> None:
    events = make_events(random.Random(1), 600, time.time())
    post_all(stats_server, events)
    body = wait_for_total(stats_server, len(events))

    assert body["type"] == "*"
    assert set(body["series"]) == {"second", "minute", "hour", "day"}
    assert len(body["series"]["minute"]) == 2881
    assert len(body["series"]["hour"]) == 49
    assert len(body["series"]["second"]) == 7201  # capped at its 2 h retention
    assert body["from"] == body["series"]["minute"][0][0]
    assert body["from"] <= body["to"] - 48 * 3600 < body["from"] + 60
    assert_series_match(body, events)
    assert body["types"] == sorted(
        ({"event_type": t, "count": n} for t, n in Counter(e["event_type"] for e in events)
         .items()), key=lambda r: (-r["count"], r["event_type"]))

    days = {datetime.fromtimestamp(e["ts"], UTC).strftime("%Y-%m-%d") for e in events}
    rows = {r["date"]: r for r in body["uniques"]}
    assert len(body["uniques"]) in (3, 2)  # the UTC days the window touches
    for day in days:
        day_events = [e for e in events
                      if datetime.fromtimestamp(e["ts"], UTC).strftime("%Y-%m-%d") == day]
        users = {e["params"]["user_id"] for e in day_events}
        exact = {u for u in users if isinstance(u, int) or u == "7"}  # "7" is user 7
        assert rows[day]["exact"] == len(exact)
        assert rows[day]["estimated"] == len(users - exact)  # tiny sets: HLL is exact here
        assert rows[day]["users"] == rows[day]["exact"] + rows[day]["estimated"]


def test_one_type_and_one_granularity(stats_server: ServerProcess) -> None:
    events = make_events(random.Random(2), 300, time.time())
    post_all(stats_server, events)
    wait_for_total(stats_server, len(events))

    status, body = get_stats(stats_server, "/api/stats/" + quote("page view"))
    assert status == 200
    assert body["type"] == "page view"
    assert "types" not in body and "uniques" not in body
    assert body["total"] == sum(e["event_type"] == "page view" for e in events)
    assert_series_match(body, events, "page view")
    # Stored stripped (SPEC §2), so asked for stripped too.
    padded_status, padded = get_stats(stats_server, "/api/stats/" + quote("  page view "))
    assert (padded_status, padded["type"], padded["total"]) == (200, "page view", body["total"])

    status, body = get_stats(stats_server, "/api/stats/a%2Fb?granularity=hour")
    assert status == 200
    assert body["type"] == "a/b"
    assert list(body["series"]) == ["hour"]
    assert body["from"] == body["series"]["hour"][0][0]
    assert body["total"] == sum(e["event_type"] == "a/b" for e in events)
    assert_series_match(body, events, "a/b")

    status, body = get_stats(stats_server, "/api/stats/never-sent")
    assert status == 200
    assert body["total"] == 0
    assert all(n == 0 for s in body["series"].values() for _, n in s)


def test_unknown_granularity_is_a_400_listing_the_valid_ones(
        stats_server: ServerProcess) -> None:
    status, body = get_stats(stats_server, "/api/stats?granularity=week")
    assert status == 400
    assert body["error"] == "bad_granularity"
    for name in ("second", "minute", "hour", "day"):
        assert name in body["message"]


def test_redis_killed_mid_load_then_rebuild_restores_exact_counts(
        stats_server: ServerProcess, redis_server: RedisServer) -> None:  # noqa: F811
    rng = random.Random(3)
    before = make_events(rng, 300, time.time())
    post_all(stats_server, before)
    wait_for_total(stats_server, len(before))

    redis_server.kill()
    during = make_events(rng, 300, time.time())
    post_all(stats_server, during)  # every POST still answers 202
    status, body = get_stats(stats_server)
    assert status == 503
    assert body["error"] == "stats_unavailable"

    redis_server.start()  # empty: what was counted before the kill is gone
    wait_for_total(stats_server, len(during))  # the pending counts were kept and flushed

    since = min(e["ts"] for e in before + during) - 1
    done = subprocess.run(
        # (--include-open: the load is over, and the current hour must be repaired too)
        [sys.executable, "-m", "collector", "stats", "rebuild", "--since", str(int(since)),
         "--include-open", "--no-progress", "--data-dir", str(stats_server.data_dir)],
        cwd=ROOT, env=stats_server.env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    status, body = get_stats(stats_server)
    assert status == 200
    assert body["total"] == len(before) + len(during)
    assert_series_match(body, before + during)
