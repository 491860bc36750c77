"""The per-request metrics hook of a worker (app.make_state's on_request): the counter by route
and status, the latency histogram, and the cap on label sets."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from collector.app import make_state
from collector.config import Config
from collector.metrics import Metrics, observe_into


def _state(metrics: Metrics):  # type: ignore[no-untyped-def]
    ctx = SimpleNamespace(config=Config(), metrics=metrics,
                          writer=SimpleNamespace(flush_if_queued=lambda n: None))
    state = make_state(ctx, router=None)  # type: ignore[arg-type]
    assert state.on_request is not None
    return state.on_request


def test_requests_are_counted_by_route_and_status_and_timed() -> None:
    metrics = Metrics()
    on_request = _state(metrics)
    seconds = [0.0001, 0.0004, 0.003, 0.003, 0.7, 3.0, 99.0]
    for s in seconds:
        on_request("/api/events", 202, s)
    on_request("/api/events", 400, 0.001)
    on_request("unmatched", 404, 0.001)
    assert metrics.get("collector_requests_total", route="/api/events", status="202") == 7
    assert metrics.get("collector_requests_total", route="/api/events", status="400") == 1
    assert metrics.get("collector_requests_total", route="unmatched", status="404") == 1
    # The histogram holds what observe_into would have made of the same values.
    buckets, state = metrics.histogram("collector_request_duration_seconds")
    expected = [0.0] * (len(buckets) + 2)
    for s in [*seconds, 0.001, 0.001]:
        observe_into(buckets, expected, s)
    assert state == expected
    assert state[-1] == 9 and state[-2] == pytest.approx(sum(seconds) + 0.002)


def test_the_label_sets_are_capped() -> None:
    metrics = Metrics()
    on_request = _state(metrics)
    for n in range(1100):
        on_request(f"/route/{n}", 200, 0.001)
    on_request("/route/5", 200, 0.001)  # a known label keeps its own counter
    assert metrics.get("collector_requests_total", route="/route/5", status="200") == 2
    assert metrics.get("collector_requests_total", route="/route/1099", status="200") == 0
    assert metrics.get("collector_requests_total", route="other", status="200") == 1100 - 1001
