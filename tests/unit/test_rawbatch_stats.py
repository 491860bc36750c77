"""The fast path with Redis stats on: the user read from raw params, and the counters' columns.

`rawbatch.user_reader` must give what the slow path hands the counters,
`orjson.loads(params).get(key)`, and `StatsCounters.add_columns` and `add_one` must count what
`add` counts.
No Redis here: nothing is flushed.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.config import RedisConfig, StatsConfig
from collector.metrics import Metrics
from collector.rawbatch import user_reader
from collector.storage.counters import StatsCounters
from tests.fakes import FakeClock

NOW = 1_700_000_000.25

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=5)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | _text
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner,
                                                                 max_size=3),
    max_leaves=6,
)


@settings(max_examples=400, deadline=None)
@given(params=st.dictionaries(st.sampled_from(["user_id", "uid", "x", "user"]), _json_values,
                              max_size=4),
       key=st.sampled_from(["user_id", "uid"]))
def test_the_user_is_what_orjson_reads(params: dict[str, Any], key: str) -> None:
    raw = json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode()  # (big ints)
    expected = orjson.loads(raw).get(key)
    got = user_reader(key)(raw)
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"user_id":18446744073709551615}', 18446744073709551615),  # u64 max: an int for both
    (b'{"user_id":18446744073709551616}', 1.8446744073709552e19),  # past it: a float
    (b'{"user_id":-9223372036854775809}', -9.223372036854776e18),
    (b'{"user_id":1,"user_id":"two"}', "two"),  # a repeated key: the last, as orjson
    (b'{"user_id":null}', None),
    (b'{"other":1}', None),
    (b'{"user_id":[1,{"a":2}]}', [1, {"a": 2}]),
])
def test_user_edge_cases(raw: bytes, expected: Any) -> None:
    assert orjson.loads(raw).get("user_id") == expected
    got = user_reader("user_id")(raw)
    assert got == expected
    assert type(got) is type(expected)


def _counters() -> StatsCounters:
    return StatsCounters(None, RedisConfig(), StatsConfig(), FakeClock(NOW), Metrics())


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.tuples(
    st.sampled_from(["a", "b"]),
    st.one_of(st.integers(int(NOW) - 3 * 86400, int(NOW)), st.floats(NOW - 3 * 86400, NOW)),
    st.one_of(st.none(), st.integers(0, 2**20), st.sampled_from(["u1", "u2"]))),
    max_size=30))
def test_columns_count_what_dicts_count(events: list[tuple[str, float, Any]]) -> None:
    # add (event dicts), add_columns (a batch of the fast path) and add_one (its single
    # event, one call per event here) must count alike.
    by_dicts, by_columns, one_by_one = _counters(), _counters(), _counters()
    by_dicts.add([{"event_type": t, "ts": ts, "params": {"user_id": u}} for t, ts, u in events])
    by_columns.add_columns([t for t, _, _ in events], [ts for _, ts, _ in events],
                           [u for _, _, u in events])
    for t, ts, u in events:
        one_by_one.add_one(t, ts, u)
    for counters in by_dicts, by_columns, one_by_one:
        counters._gather()
    for counters in by_columns, one_by_one:
        assert dict(counters._counts) == dict(by_dicts._counts)
        assert dict(counters._bits) == dict(by_dicts._bits)
        assert dict(counters._hll) == dict(by_dicts._hll)
