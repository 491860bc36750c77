"""Metrics across processes, through small files in `data/run/`.

Each worker rewrites `metrics-<index>.json` every second (tmp + rename, so a reader never sees
half a file); `/metrics` on any worker sums its own live numbers with its peers' snapshots. The
loader writes `loader.json`, from which the lag gauges are derived. A snapshot older than
`STALE_SECONDS` belongs to a worker that died and is ignored.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import orjson

from collector.config import Config
from collector.metrics import Metrics

STALE_SECONDS = 30.0


def snapshot_path(run_dir: Path, worker_index: int) -> Path:
    return run_dir / f"metrics-{worker_index}.json"


def write_snapshot(run_dir: Path, worker_index: int, snapshot: dict[str, Any]) -> None:
    path = snapshot_path(run_dir, worker_index)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(snapshot))
    os.replace(tmp, path)


def remove_snapshot(run_dir: Path, worker_index: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        snapshot_path(run_dir, worker_index).unlink()


def read_peer_snapshots(run_dir: Path, worker_index: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    now = time.time()
    for path in run_dir.glob("metrics-*.json"):
        if path == snapshot_path(run_dir, worker_index):
            continue
        try:
            if now - path.stat().st_mtime > STALE_SECONDS:
                continue
            out.append(orjson.loads(path.read_bytes()))
        except (OSError, orjson.JSONDecodeError):
            continue  # a worker replacing its file right now, or gone
    return out


def loader_snapshot(cfg: Config) -> dict[str, Any]:
    """Loader gauges from its status file, in the snapshot shape (empty when unknown)."""
    try:
        from loader.daemon import read_status
    except ImportError:
        return {}
    try:
        status = read_status(cfg)
    except Exception:
        return {}
    if not status:
        return {}
    m = Metrics()
    m.describe("collector_loader_up", "gauge",
               "1 when the loader's status file is fresh (updated in the last 30 s)")
    fresh = time.time() - float(status.get("updated_at", 0)) < STALE_SECONDS
    m.set("collector_loader_up", 1 if fresh else 0)
    for key, help_text in (
        ("lag_events", "events in the segments the loader has not loaded yet"),
        ("lag_bytes", "segment bytes the loader has not loaded yet"),
        ("lag_seconds", "seconds between the newest segment event and the loader position"),
        ("events_loaded_total", "events the loader has inserted into the store"),
        ("batches_total", "batches the loader has committed"),
        ("errors_total", "loader errors"),
        ("events_per_second", "recent loading rate"),
    ):
        if key in status and isinstance(status[key], int | float):
            name = f"collector_loader_{key}"
            m.describe(name, "counter" if key.endswith("_total") else "gauge", help_text)
            m.set(name, float(status[key]))
    return m.snapshot()
