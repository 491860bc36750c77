"""/api/stats's "types" with very many distinct event types: bounded work in Redis, bounded
answer (collector/http/stats_routes.py, MAX_TYPE_FIELDS and MAX_TYPES)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from collector.config import Config, RedisConfig
from collector.http import stats_routes
from collector.stats import TOTAL_FIELD
from collector.storage.redis_client import make_redis_client
from tests.fixtures.redis import RedisServer, redis_server  # noqa: F401

NOW = 1_700_000_000.25  # 2023-11-14T22:13:20.25Z
HOUR = "{collector:hour}:2023111421"  # a whole hour inside the 48 h window
HOUR_START = 1_699_995_600


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Any]:  # noqa: F811
    c = make_redis_client(RedisConfig(timeout=5.0), redis_server.url)
    yield c
    await c.aclose()


async def answer_with(client: Any, types: int) -> dict[str, Any]:
    await client.hset(HOUR, mapping={**{f"t{i:04d}": i + 1 for i in range(types)},
                                     TOTAL_FIELD: sum(range(1, types + 1))})
    cfg = Config()
    reader = stats_routes.StatsReader(SimpleNamespace(config=cfg))  # type: ignore[arg-type]
    return await reader.answer(client, cfg.stats.granularities, None, NOW)


async def test_the_most_frequent_types_are_listed_and_the_rest_counted(
        client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_routes, "MAX_TYPES", 5)
    body = await answer_with(client, 12)
    assert [t["event_type"] for t in body["types"]] == ["t0011", "t0010", "t0009", "t0008",
                                                        "t0007"]
    assert body["types_total"] == 12


async def test_past_the_field_budget_no_types_are_summed_and_it_says_why(
        client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_routes, "MAX_TYPE_FIELDS", 50)
    body = await answer_with(client, 60)
    assert body["types"] == []
    assert "too many event types" in body["types_omitted"]
    hours = {start: n for start, n in body["series"]["hour"]}
    assert hours[HOUR_START] == sum(range(1, 61))  # the series are still there


async def test_a_few_types_are_all_listed(client: Any) -> None:
    body = await answer_with(client, 3)
    assert len(body["types"]) == 3 and "types_total" not in body and "types_omitted" not in body


async def test_a_failed_read_is_a_503_and_counted(tmp_path: Any) -> None:
    from collector.metrics import Metrics
    from tests.fakes import FakeClock

    dead = make_redis_client(RedisConfig(timeout=0.5), f"unix://{tmp_path}/no.sock")
    metrics = Metrics()
    ctx = SimpleNamespace(config=Config(), redis=dead, metrics=metrics, clock=FakeClock(NOW))
    reader = stats_routes.StatsReader(ctx)  # type: ignore[arg-type]
    request = SimpleNamespace(path_params={}, arg=lambda name: None)
    try:
        response = await reader.handle(request)  # type: ignore[arg-type]
    finally:
        await dead.aclose()
    assert response.status == 503
    assert metrics.get("collector_redis_errors_total") == 1
