"""Process-local metrics, rendered in the Prometheus text format.

Each worker process keeps its own counters (no locks: one event loop per process) and writes a
snapshot to `data/run/metrics-<worker>.json` every second; `/metrics` sums the snapshots of all
live workers so a scrape that lands on any worker sees the whole collector. Names follow the
Prometheus conventions (`_total` for counters, `_seconds` for durations).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

LabelKey = tuple[tuple[str, str], ...]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(slots=True)
class _Family:
    kind: str  # "counter" | "gauge" | "histogram"
    help: str
    values: dict[LabelKey, list[float]] = field(default_factory=dict)
    """One-element lists ("cells"), so hot paths can hold a cell and add to it directly."""
    buckets: tuple[float, ...] = ()
    # histogram state per label set: (bucket counts, sum, count)
    hist: dict[LabelKey, list[float]] = field(default_factory=dict)


class Metrics:
    """Counters, gauges and histograms keyed by name and labels."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._carried: dict[str, Any] = {}

    def carry_over(self, snapshot: dict[str, Any]) -> None:
        """Start this process's counters and histograms from `snapshot`, the last one of the
        process it replaces (gauges are not carried: they describe that process).

        A worker the supervisor restarts would otherwise start from zero, and the sum over the
        workers in /metrics would go backwards: Prometheus reads that as a counter reset, a
        spike in `rate()`. Added in `snapshot()`; `get()` stays this process's own count.
        """
        self._carried = {name: fam for name, fam in snapshot.items()
                         if fam.get("kind") != "gauge"}

    def describe(self, name: str, kind: str, help: str,
                 buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        if name not in self._families:
            self._families[name] = _Family(kind, help, buckets=buckets if kind == "histogram"
                                           else ())

    def _family(self, name: str, kind: str) -> _Family:
        fam = self._families.get(name)
        if fam is None:
            fam = self._families[name] = _Family(
                kind, name, buckets=LATENCY_BUCKETS if kind == "histogram" else ())
        return fam

    def cell(self, name: str, kind: str = "counter", **labels: str) -> list[float]:
        """The one-element list holding a counter or gauge: `cell[0] += n` on hot paths skips
        the label sorting and lookups of inc()."""
        fam = self._family(name, kind)
        key = tuple(sorted(labels.items()))
        c = fam.values.get(key)
        if c is None:
            c = fam.values[key] = [0.0]
        return c

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        self.cell(name, "counter", **labels)[0] += value

    def set(self, name: str, value: float, **labels: str) -> None:
        self.cell(name, "gauge", **labels)[0] = value

    def histogram(self, name: str, **labels: str) -> tuple[tuple[float, ...], list[float]]:
        """(bucket bounds, state) of a histogram: state[i] counts values in bucket i,
        state[-2] is the sum and state[-1] the count. See observe_into()."""
        fam = self._family(name, "histogram")
        key = tuple(sorted(labels.items()))
        state = fam.hist.get(key)
        if state is None:
            state = fam.hist[key] = [0.0] * (len(fam.buckets) + 2)
        return fam.buckets, state

    def observe(self, name: str, value: float, **labels: str) -> None:
        buckets, state = self.histogram(name, **labels)
        observe_into(buckets, state, value)

    def get(self, name: str, **labels: str) -> float:
        fam = self._families.get(name)
        if fam is None:
            return 0
        c = fam.values.get(tuple(sorted(labels.items())))
        return c[0] if c else 0

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy, for the per-worker snapshot file (with what was carried over)."""
        own = self._own_snapshot()
        if not self._carried:
            return own
        return as_snapshot(merge_snapshots([self._carried, own]))

    def _own_snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, fam in self._families.items():
            out[name] = {
                "kind": fam.kind,
                "help": fam.help,
                "buckets": list(fam.buckets),
                "values": [[list(map(list, k)), v[0]] for k, v in fam.values.items()],
                "hist": [[list(map(list, k)), list(s)] for k, s in fam.hist.items()],
            }
        return out


def observe_into(buckets: tuple[float, ...], state: list[float], value: float) -> None:
    i = bisect.bisect_left(buckets, value)
    if i < len(buckets):  # (past the last bound, only +Inf, which is the count, holds it)
        state[i] += 1
    state[-2] += value  # sum
    state[-1] += 1  # count (the +Inf bucket)


def merge_snapshots(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum counters and histograms of several workers; gauges are summed too (they are
    per-worker amounts such as open connections)."""
    merged: dict[str, Any] = {}
    for snap in snapshots:
        for name, fam in snap.items():
            m = merged.setdefault(name, {"kind": fam["kind"], "help": fam["help"],
                                         "buckets": fam["buckets"], "values": {}, "hist": {}})
            for k, v in fam["values"]:
                key = tuple(tuple(x) for x in k)
                m["values"][key] = m["values"].get(key, 0) + v
            for k, s in fam["hist"]:
                key = tuple(tuple(x) for x in k)
                cur = m["hist"].get(key)
                m["hist"][key] = list(s) if cur is None else [a + b for a, b in zip(cur, s,
                                                                                      strict=True)]
    return merged


def as_snapshot(merged: dict[str, Any]) -> dict[str, Any]:
    """merge_snapshots' result back in the snapshot shape (so that it can be merged again)."""
    return {name: {**fam,
                   "values": [[list(map(list, key)), v] for key, v in fam["values"].items()],
                   "hist": [[list(map(list, key)), list(h)] for key, h in fam["hist"].items()]}
            for name, fam in merged.items()}


def _labels(key: Iterable[Iterable[str]], extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in key]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    return repr(int(v)) if float(v).is_integer() else repr(float(v))


def render(merged: dict[str, Any]) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    lines: list[str] = []
    for name in sorted(merged):
        fam = merged[name]
        lines.append(f"# HELP {name} {fam['help']}")
        lines.append(f"# TYPE {name} {fam['kind']}")
        if fam["kind"] == "histogram":
            for key, s in sorted(fam["hist"].items()):
                cum = 0.0
                for bound, count in zip(fam["buckets"], s, strict=False):
                    cum += count
                    le = 'le="' + _num(bound) + '"'
                    lines.append(f"{name}_bucket{_labels(key, le)} {_num(cum)}")
                inf = 'le="+Inf"'
                lines.append(f"{name}_bucket{_labels(key, inf)} {_num(s[-1])}")
                lines.append(f"{name}_sum{_labels(key)} {_num(s[-2])}")
                lines.append(f"{name}_count{_labels(key)} {_num(s[-1])}")
        else:
            for key, v in sorted(fam["values"].items()):
                lines.append(f"{name}{_labels(key)} {_num(v)}")
    return "\n".join(lines) + "\n"
