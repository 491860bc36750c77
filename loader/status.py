"""The loader's status file, `data/run/loader.json`, and its reading by the collector.

The loader rewrites the file about once a second (temporary file + rename, no fsync: it is
runtime information, rebuilt after a reboot). The collector's /metrics reads it to report the
loader's lag and rates without talking to the loader process; `fill_metrics` turns a status into
gauges of a collector.metrics.Metrics so both /metrics and the loader's own --metrics-port use
the same names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from collector.config import Config
from collector.metrics import Metrics

STATUS_FILE = "loader.json"

HELP = {
    "loader_up": ("gauge", "1 when the loader status file is fresh (rewritten in the last 10 s)"),
    "loader_lag_bytes": ("gauge", "Segment bytes written but not yet loaded"),
    "loader_lag_events": ("gauge", "Events not yet loaded (estimated from bytes / mean line)"),
    "loader_lag_seconds": ("gauge", "Age of the newest segment data minus the last loaded event"),
    "loader_batches_total": ("counter", "Batches committed to the event store"),
    "loader_events_loaded_total": ("counter", "Events read from segments and committed"),
    "loader_events_inserted_total": ("counter", "Events new to the store (replays excluded)"),
    "loader_events_per_second": ("gauge", "Events loaded per second over the last interval"),
    "loader_errors_total": ("counter", "Failed store writes and other loader errors"),
    "loader_bad_lines_total": ("counter", "Segment lines that are not valid events (skipped)"),
    "loader_segments_deleted_total": ("counter", "Segments deleted by retention"),
    "loader_segments_skipped_total": ("counter", "Segments that vanished before fully loaded"),
}

FRESH_SECONDS = 10.0


def status_path(cfg: Config) -> Path:
    return cfg.run_path / STATUS_FILE


def write_status(path: Path, status: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(status, option=orjson.OPT_INDENT_2) + b"\n")
    os.replace(tmp, path)


def read_status(cfg: Config) -> dict[str, Any] | None:
    """The last status the loader wrote, or None when there is none (never started, or
    unreadable). `updated_at` (UNIX seconds) tells how fresh it is."""
    try:
        doc = orjson.loads(status_path(cfg).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def fill_metrics(metrics: Metrics, status: dict[str, Any] | None, now: float) -> None:
    """Set the loader_* families of `metrics` from a status (loader_up 0 when stale or None).

    Counters are copied as totals (the loader is their only source).
    """
    for name, (kind, help_) in HELP.items():
        metrics.describe(name, kind, help_)
    fresh = status is not None and now - float(status.get("updated_at", 0)) <= FRESH_SECONDS
    metrics.set("loader_up", 1 if fresh else 0)
    if status is None:
        return
    for name, (kind, _) in HELP.items():
        field = name.removeprefix("loader_").removesuffix("_total")
        if name == "loader_up" or field not in status:
            continue
        if kind == "gauge" and not fresh:
            # A stopped loader's last lag (often 0: it had caught up) is not today's lag;
            # no sample beats a wrong one. Counters stay: totals do not go stale.
            continue
        value = float(status[field])
        if kind == "counter":
            metrics.inc(name, value - metrics.get(name))
        else:
            metrics.set(name, value)
