"""SPEC §10: the request-path processors are a list in the configuration, and a processor of
one's own is one class (tests/fixtures/processors.py) and one line of configuration."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from collector.config import load_config
from collector.errors import ConfigError
from tests.fixtures.rawhttp import segment_events
from tests.fixtures.server import ROOT, ServerProcess

FIXTURES = "tests.fixtures.processors"


def scrape_errors(server: ServerProcess, name: str) -> float:
    _, _, body = server.request("GET", "/metrics")
    for line in body.decode().splitlines():
        if line.startswith("collector_processor_errors_total{") and f'"{name}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_processor_of_ones_own_gets_every_stored_event_and_a_failing_one_harms_nothing(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(env={
        "COLLECTOR_PROCESSORS_REQUEST": f"{FIXTURES}:Failing,{FIXTURES}:Recorder"})
    sent = [{"event_type": "signup", "params": {"user_id": 7}, "event_id": "e-1"},
            {"event_type": "click", "ts": 1_700_000_000}]
    for body in (sent[0], sent, [{"event_type": "x"}] * 10):
        status, _, answer = server.request("POST", "/api/events", body)
        assert status == 202, answer  # the failing processor never reaches the client
    assert server.request("POST", "/api/events", {"event_type": ""})[0] == 400
    assert server.request("GET", "/api/events/pixel.gif?event_type=open")[0] == 200
    assert scrape_errors(server, "Failing") == 4
    assert server.stop() == 0
    lines = [orjson.loads(x) for x in (server.data_dir / "processed-0.ndjson").read_bytes()
             .splitlines()]
    assert lines[0] == {"started": True} and lines[-1] == {"closed": True}
    processed = lines[1:-1]
    # Exactly the stored events (not the refused one), as their segment lines hold them.
    assert processed == list(segment_events(server.data_dir))
    assert [e["event_type"] for e in processed] == ["signup", "signup", "click"] + ["x"] * 10 \
        + ["open"]
    assert processed[0]["event_id"] == "e-1" and processed[0]["params"] == {"user_id": 7}
    assert all(isinstance(e["id"], str) and e["received_at"] for e in processed)
    assert server.log().count("processor Failing failed") == 1, "one traceback a minute at most"


@pytest.mark.parametrize(("name", "message"), [
    ("nosuch.module:X", "cannot import 'nosuch.module'"),
    (f"{FIXTURES}:Missing", "has no class 'Missing'"),
    (f"{FIXTURES}:NoAdd", "no add(events) method"),
])
def test_serve_names_a_processor_it_cannot_load(tmp_path: Path, name: str, message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "collector", "serve", "--data-dir", str(tmp_path), "--port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
             "COLLECTOR_PROCESSORS_REQUEST": name, "COLLECTOR_LOADER_EMBEDDED": "false"})
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("value", ["webhook", "a:", ":B", "redis_stats,redis_stats"])
def test_a_processor_that_is_no_name_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigError, match="processors.request"):
        load_config(None, env={"COLLECTOR_PROCESSORS_REQUEST": value})


def test_without_redis_stats_there_are_no_stats(start_server: Callable[..., ServerProcess]
                                                 ) -> None:
    server = start_server(env={"COLLECTOR_REDIS_ENABLED": "true",
                               "COLLECTOR_PROCESSORS_REQUEST": f"{FIXTURES}:Recorder"})
    assert server.request("POST", "/api/events", {"event_type": "a"})[0] == 202
    status, _, body = server.request("GET", "/api/stats")
    assert status == 503 and b"processors.request" in body
    assert not (server.data_dir / "run" / "redis.sock").exists()


def test_a_processor_that_cannot_start_does_not_stop_ingestion(
        start_server: Callable[..., ServerProcess]) -> None:
    # A review: a processor whose start() raised took the worker, and so serve, down.
    server = start_server(env={
        "COLLECTOR_PROCESSORS_REQUEST": f"{FIXTURES}:FailsToStart,{FIXTURES}:Recorder"})
    assert server.request("POST", "/api/events", {"event_type": "a"})[0] == 202
    assert scrape_errors(server, "FailsToStart") == 1
    assert "could not start; running without it" in server.log()
    assert server.stop() == 0
    lines = (server.data_dir / "processed-0.ndjson").read_bytes().splitlines()
    assert [orjson.loads(x).get("event_type") for x in lines[1:-1]] == ["a"]
