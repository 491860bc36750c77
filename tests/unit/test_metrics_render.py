"""The Prometheus text of collector/metrics.py: histogram sums and special values."""

from __future__ import annotations

import math

from collector.metrics import Metrics, merge_snapshots, render


def rendered(m: Metrics) -> dict[str, str]:
    out = {}
    for line in render(merge_snapshots([m.snapshot()])).splitlines():
        if not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = value
    return out


def test_a_value_past_the_last_bucket_adds_only_itself_to_the_sum() -> None:
    # An audit: a request slower than 2.5 s (the last bound) added 1 more to _sum, because
    # the bucket index past the bounds was the sum's slot.
    m = Metrics()
    m.describe("h", "histogram", "seconds", buckets=(0.1, 1.0))
    m.observe("h", 5.0)
    m.observe("h", 0.05)
    lines = rendered(m)
    assert lines["h_sum"] == "5.05"
    assert lines["h_count"] == "2"
    assert lines['h_bucket{le="0.1"}'] == "1"
    assert lines['h_bucket{le="1"}'] == "1"
    assert lines['h_bucket{le="+Inf"}'] == "2"


def test_special_values_are_spelled_as_prometheus_reads_them() -> None:
    m = Metrics()
    for name, v in (("a", math.nan), ("b", -math.inf), ("c", math.inf)):
        m.describe(name, "gauge", name)
        m.set(name, v)
    lines = rendered(m)
    assert (lines["a"], lines["b"], lines["c"]) == ("NaN", "-Inf", "+Inf")
