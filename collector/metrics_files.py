"""Metrics across processes, through small files in `data/run/`.

Each worker rewrites `metrics-<index>.json` every second (tmp + rename, so a reader never sees
half a file); `/metrics` on any worker sums its own live numbers with its peers' snapshots. The
loader writes `loader.json`, from which the lag gauges are derived.

Counters never go backwards while the collector runs, though the supervisor restarts workers
that die or stop: a worker that stops leaves its last snapshot, and the one that replaces it
starts its counters and histograms from that file (`Metrics.carry_over`). The gauges of a
snapshot older than `STALE_SECONDS` (a worker that died, not restarted yet) are ignored; its
counters still count. The supervisor clears the files when `collector serve` starts: a new
run counts from zero, as any restarted exporter does.
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
    try:
        tmp.write_bytes(orjson.dumps(snapshot))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):  # (a full disk: no empty tmp file left behind)
            tmp.unlink()
        raise


def read_snapshot(run_dir: Path, worker_index: int) -> dict[str, Any]:
    """The last snapshot of worker `worker_index` ({} if none or unreadable)."""
    try:
        snapshot: dict[str, Any] = orjson.loads(snapshot_path(run_dir, worker_index).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return snapshot


def clear_snapshots(run_dir: Path) -> None:
    """Forget the workers' metrics of a previous run (the supervisor, before they start)."""
    for path in run_dir.glob("metrics-*.json"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def read_peer_snapshots(run_dir: Path, worker_index: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    now = time.time()
    for path in run_dir.glob("metrics-*.json"):
        if path == snapshot_path(run_dir, worker_index):
            continue
        try:
            stale = now - path.stat().st_mtime > STALE_SECONDS
            snapshot = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue  # a worker replacing its file right now, or gone
        if stale:  # a dead worker's counters still count; its gauges no longer hold
            snapshot = {name: fam for name, fam in snapshot.items() if fam["kind"] != "gauge"}
        out.append(snapshot)
    return out


def loader_snapshot(cfg: Config) -> dict[str, Any]:
    """Loader gauges from its status file, in the snapshot shape (loader_up 0 alone when there
    is none: a loader that never started, or never got as far as loading)."""
    from loader.status import fill_metrics, read_status

    status = read_status(cfg)
    m = Metrics()
    fill_metrics(m, status or None, time.time())  # (none yet: loader_up 0)
    return m.snapshot()
