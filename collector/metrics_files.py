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
    from loader.status import fill_metrics, read_status

    status = read_status(cfg)
    if not status:
        return {}
    m = Metrics()
    fill_metrics(m, status, time.time())
    return m.snapshot()
