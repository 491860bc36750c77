"""Counters that never go backwards across a worker's restart (Metrics.carry_over and the
snapshot files of collector/metrics_files.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from collector.metrics import Metrics, merge_snapshots
from collector.metrics_files import (
    STALE_SECONDS,
    clear_snapshots,
    read_peer_snapshots,
    read_snapshot,
    write_snapshot,
)


def value(snapshot: dict, name: str, **labels: str) -> float:
    merged = merge_snapshots([snapshot])
    return merged[name]["values"].get(tuple(sorted(labels.items())), 0.0) if name in merged \
        else 0.0


def died(run: Path) -> dict:
    """The snapshot a worker left: 7 events accepted, one request timed, 3 connections."""
    old = Metrics()
    old.describe("collector_events_accepted_total", "counter", "events")
    old.describe("collector_connections_open", "gauge", "open connections")
    # A counter the worker sets from a part's own count (as collector/app.py describes it).
    old.describe("collector_segment_rotations_total", "counter", "segments sealed")
    old.inc("collector_events_accepted_total", 7)
    old.set("collector_segment_rotations_total", 2)
    old.set("collector_connections_open", 3)
    old.observe("collector_request_duration_seconds", 0.01)
    write_snapshot(run, 1, old.snapshot())
    return read_snapshot(run, 1)


def test_a_restarted_worker_counts_on_from_its_predecessor(tmp_path: Path) -> None:
    new = Metrics()
    new.describe("collector_segment_rotations_total", "counter", "segments sealed")
    new.carry_over(died(tmp_path))
    new.inc("collector_events_accepted_total", 1)
    new.set("collector_segment_rotations_total", 1)  # its writer's own count, from zero
    new.set("collector_connections_open", 1)
    snap = new.snapshot()
    assert value(snap, "collector_events_accepted_total") == 8
    assert value(snap, "collector_segment_rotations_total") == 3
    assert value(snap, "collector_connections_open") == 1  # a gauge is not carried
    hist = merge_snapshots([snap])["collector_request_duration_seconds"]["hist"][()]
    assert hist[-1] == 1  # the predecessor's request is still counted
    assert new.get("collector_events_accepted_total") == 1  # get(): this process's own


def test_a_dead_workers_counters_count_until_it_is_replaced_but_not_its_gauges(
        tmp_path: Path) -> None:
    died(tmp_path)
    path = tmp_path / "metrics-1.json"
    fresh = merge_snapshots(read_peer_snapshots(tmp_path, 0))
    assert fresh["collector_connections_open"]["values"]
    old = time.time() - STALE_SECONDS - 5
    os.utime(path, (old, old))
    stale = merge_snapshots(read_peer_snapshots(tmp_path, 0))
    assert "collector_connections_open" not in stale
    assert stale["collector_events_accepted_total"]["values"][()] == 7


def test_a_new_run_starts_from_zero(tmp_path: Path) -> None:
    died(tmp_path)
    (tmp_path / "loader.json").write_text("{}")
    clear_snapshots(tmp_path)
    assert read_snapshot(tmp_path, 1) == {}
    assert (tmp_path / "loader.json").exists()
