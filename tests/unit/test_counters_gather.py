"""StatsCounters.add keeps columns and _gather counts them a column at a time; the per-event
rules (_count_each) are the specification. No Redis here: nothing is flushed."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from collector.config import RedisConfig, StatsConfig
from collector.metrics import Metrics
from collector.storage.counters import StatsCounters
from tests.fakes import FakeClock

NOW = 1_700_000_000.25
STATS = StatsConfig()


def counters(metrics: Metrics | None = None) -> StatsCounters:
    return StatsCounters(None, RedisConfig(), STATS, FakeClock(NOW), metrics or Metrics())


def gathered(c: StatsCounters) -> tuple[Any, Any, Any]:
    return dict(c._counts), dict(c._bits), dict(c._hll)


def by_the_rules(events: list[dict[str, Any]], metrics: Metrics) -> tuple[Any, Any, Any]:
    reference = counters(metrics)
    reference._count_each([e["ts"] for e in events], [e["event_type"] for e in events],
                          [e["params"].get(STATS.user_key) for e in events],
                          NOW - reference._max_age)
    return gathered(reference)


_users = st.one_of(
    st.none(), st.integers(-5, 2**27), st.sampled_from(["", "u1", "42", "007", "x"]),
    st.booleans(), st.floats(0, 10), st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from("ab"), st.integers(0, 2), max_size=2),
)
_events = st.lists(st.builds(
    lambda t, ts, u, has_user: {"event_type": t, "ts": ts,
                                "params": {"user_id": u} if has_user else {"other": 1}},
    st.sampled_from(["a", "b", "c"]),
    st.one_of(st.integers(int(NOW) - 3 * 86400, int(NOW)), st.floats(NOW - 3 * 86400, NOW),
              st.sampled_from([NOW - 900 * 86400, 0])),
    _users, st.booleans(),
), max_size=30)


@settings(max_examples=300, deadline=None)
@given(requests=st.lists(_events, max_size=5))
def test_columns_count_exactly_what_the_per_event_rules_count(
    requests: list[list[dict[str, Any]]]
) -> None:
    metrics, reference_metrics = Metrics(), Metrics()
    c = counters(metrics)
    for events in requests:
        c.add(events)
    c._gather()
    everything = [e for events in requests for e in events]
    assert gathered(c) == by_the_rules(everything, reference_metrics)
    assert metrics.get("collector_stats_too_old_total") == \
        reference_metrics.get("collector_stats_too_old_total")


def test_add_takes_any_iterable_and_keeps_no_event_dict() -> None:
    c = counters()
    events = [{"event_type": "a", "ts": NOW - 5, "params": {"user_id": 3}} for _ in range(3)]
    c.add(e for e in events)
    assert c._ts == [NOW - 5] * 3 and c._types == ["a"] * 3 and c._users == [3, 3, 3]
    c._gather()
    assert c._ts == [] and c._counts == {(int(NOW) - 5, "a"): 3}
    day = int(NOW) - 5 - (int(NOW) - 5) % 86400
    assert c._bits == {day: {3}}


def test_user_ids_equal_in_python_but_counted_apart_are_both_counted() -> None:
    # False == 0 and 1.0 == 1 in a set; the bitmap takes 0 and 1, the estimate "false" and
    # the float. Found by the property above: 0 was lost when False came first.
    events = [{"event_type": "a", "ts": NOW - 5, "params": {"user_id": u}}
              for u in (False, 0, 1.0, 1)]
    c = counters()
    c.add(events)
    c._gather()
    assert gathered(c) == by_the_rules(events, Metrics())
    assert c._bits[int(NOW) - 5 - (int(NOW) - 5) % 86400] == {0, 1}
