"""The pure part of the real-time stats: buckets, keys, windows, tiling, users, combining."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from collector import stats
from collector.config import Granularity, RedisConfig, StatsConfig
from collector.errors import ConfigError
from collector.storage.redis_client import make_redis_client, parse_redis_url

SECOND = Granularity("second", 1, 2 * 3600, "%Y%m%d%H%M%S")
MINUTE = Granularity("minute", 60, 49 * 3600, "%Y%m%d%H%M")
HOUR = Granularity("hour", 3600, 49 * 3600, "%Y%m%d%H")
DAY = Granularity("day", 86400, 400 * 86400, "%Y%m%d")
ALL = (SECOND, MINUTE, HOUR, DAY)
WINDOW = 48 * 3600
KEYS = stats.KeySpace("collector")

T0 = 1_456_606_932  # 2016-02-27T21:02:12Z


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
        second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp())


@pytest.fixture
def far_time_zone() -> Iterator[None]:
    """Run with the process in a time zone far from UTC (and with DST), then restore it."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Pacific/Kiritimati"  # UTC+14
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


# --- buckets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "seconds", "start"),
    [
        (T0, 1, T0),
        (T0 + 0.999, 1, T0),
        (utc(2016, 2, 27, 21, 2), 60, utc(2016, 2, 27, 21, 2)),
        (utc(2016, 2, 27, 21, 2) - 0.001, 60, utc(2016, 2, 27, 21, 1)),
        (utc(2016, 2, 27, 21, 59, 59), 3600, utc(2016, 2, 27, 21)),
        (utc(2016, 2, 28), 86400, utc(2016, 2, 28)),
        (utc(2016, 2, 28) - 1e-3, 86400, utc(2016, 2, 27)),
        (utc(2016, 2, 29, 12), 86400, utc(2016, 2, 29)),  # leap day
        (0, 86400, 0),
    ],
)
def test_bucket_start_floors_to_utc_edges(ts: float, seconds: int, start: int) -> None:
    assert stats.bucket_start(ts, seconds) == start


@settings(deadline=None)  # timing-free: a loaded CI machine must not fail it
@given(st.floats(min_value=0, max_value=4e9, allow_nan=False),
       st.sampled_from([1, 60, 300, 3600, 86400]))
def test_bucket_of_whole_second_is_bucket_of_ts(ts: float, seconds: int) -> None:
    # StatsCounters aggregates by int(ts) and expands later: that must not move any event.
    start = stats.bucket_start(ts, seconds)
    assert start == stats.bucket_start(int(ts), seconds)
    assert start <= ts < start + seconds
    assert start % seconds == 0


def test_format_bucket_is_utc_whatever_the_host_zone(far_time_zone: None) -> None:
    assert time.localtime(T0).tm_hour != time.gmtime(T0).tm_hour  # the zone really is not UTC
    assert stats.format_bucket(T0, "%Y%m%d%H%M%S") == "20160227210212"
    assert stats.format_bucket(stats.bucket_start(T0, 86400), "%Y%m%d") == "20160227"
    assert KEYS.bits_key(stats.bucket_start(T0, 86400)).endswith(":20160227")


def test_counter_key_layout_and_hash_tag() -> None:
    assert KEYS.counter_key(MINUTE, utc(2016, 2, 27, 21, 2)) == "{collector:minute}:201602272102"
    assert KEYS.counter_key(DAY, utc(2016, 2, 27)) == "{collector:day}:20160227"
    assert KEYS.bits_key(utc(2016, 2, 27)) == "{collector:uniques}:bits:20160227"
    assert KEYS.hll_key(utc(2016, 2, 27)) == "{collector:uniques}:hll:20160227"


def test_keys_read_together_share_a_cluster_slot() -> None:
    now = T0
    for g in ALL:
        slots = {key_slot(KEYS.counter_key(g, s).encode())
                 for s in stats.window_buckets(now, WINDOW, g)}
        assert len(slots) == 1, g.name
    days = stats.days_of(now - WINDOW, now)
    slots = {key_slot(k.encode()) for d in days for k in (KEYS.bits_key(d), KEYS.hll_key(d))}
    assert len(slots) == 1
    # ...and a rebuild's temporary key can be renamed onto its target.
    key = KEYS.counter_key(HOUR, stats.bucket_start(now, 3600))
    assert key_slot((key + ":rebuild").encode()) == key_slot(key.encode())


def test_prefix_is_part_of_the_tag() -> None:
    a = stats.KeySpace("a").counter_key(MINUTE, T0 - T0 % 60)
    b = stats.KeySpace("b").counter_key(MINUTE, T0 - T0 % 60)
    assert key_slot(a.encode()) != key_slot(b.encode())


def test_total_field_cannot_be_an_event_type() -> None:
    # SPEC §2: event types have no control characters.
    assert any(ord(c) < 32 for c in stats.TOTAL_FIELD)


# --- configuration checks ----------------------------------------------------------------------


def test_default_formats_are_accepted() -> None:
    stats.validate_granularities(StatsConfig().granularities, "collector")


@pytest.mark.parametrize(
    "g",
    [
        Granularity("minute", 60, 3600, "%Y%m%d%H"),  # sixty minutes per key
        Granularity("hour", 3600, 49 * 3600, "%H"),  # 21:00 today and yesterday
        Granularity("day", 86400, 400 * 86400, "%m%d"),  # Feb 27 of two years
        Granularity("hour", 3600, 40 * 86400, "%d%H"),  # the 27th of two months
    ],
)
def test_format_that_merges_buckets_is_refused(g: Granularity) -> None:
    with pytest.raises(ConfigError, match=g.name):
        stats.validate_format(g)


def test_format_whose_keys_repeat_only_after_expiry_is_accepted() -> None:
    stats.validate_format(Granularity("hour", 3600, 7200, "%H"))
    stats.validate_format(Granularity("day", 86400, 20 * 86400, "%m%d"))


@pytest.mark.parametrize("prefix", ["a{b", "c}", "{x}"])
def test_prefix_with_braces_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match="key_prefix"):
        stats.validate_granularities(ALL, prefix)


def test_duplicate_granularity_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="duplicate"):
        stats.validate_granularities((MINUTE, MINUTE), "collector")


def test_uniques_retention_follows_the_day_granularity() -> None:
    assert stats.uniques_retention(StatsConfig(granularities=ALL)) == DAY.retention
    no_day = StatsConfig(window_seconds=WINDOW, granularities=(SECOND, MINUTE))
    assert stats.uniques_retention(no_day) == MINUTE.retention


# --- live targets --------------------------------------------------------------------------------


def test_live_targets_one_bucket_per_granularity_with_deadlines() -> None:
    sec = utc(2016, 2, 27, 21, 2, 12)
    got = stats.live_targets(sec, ALL, KEYS, now=sec + 1)
    assert got == [
        ("{collector:second}:20160227210212", sec + 1 + SECOND.retention),
        ("{collector:minute}:201602272102", utc(2016, 2, 27, 21, 3) + MINUTE.retention),
        ("{collector:hour}:2016022721", utc(2016, 2, 27, 22) + HOUR.retention),
        ("{collector:day}:20160227", utc(2016, 2, 28) + DAY.retention),
    ]


def test_live_targets_leave_out_expired_buckets() -> None:
    sec = T0
    now = sec + 3 * 3600  # second buckets keep 2 h, the others longer
    names = [k.split("}")[0] for k, _ in stats.live_targets(sec, ALL, KEYS, now)]
    assert names == ["{collector:minute", "{collector:hour", "{collector:day"]
    assert stats.live_targets(sec, ALL, KEYS, now=sec + 401 * 86400) == []


# --- users ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "member"),
    [
        (42, 42),
        (0, 0),
        ("42", 42),  # the same user as 42, as in the event store's text user_id
        ("0", 0),
        ("042", "042"),  # not the canonical text of 42: another user
        ("+42", "+42"),
        ("4 2", "4 2"),
        ("٤٢", "٤٢"),  # Arabic-Indic digits: str.isdigit() is true, still not an int id
        (-1, "-1"),
        (stats.BITMAP_ID_LIMIT - 1, stats.BITMAP_ID_LIMIT - 1),
        (stats.BITMAP_ID_LIMIT, str(stats.BITMAP_ID_LIMIT)),
        (str(stats.BITMAP_ID_LIMIT), str(stats.BITMAP_ID_LIMIT)),
        (2**70, str(2**70)),
        ("alice", "alice"),
        (True, "true"),
        (1.5, "1.5"),
        ({"b": 1, "a": 2}, '{"a":2,"b":1}'),
        (None, None),
        ("", None),
    ],
)
def test_user_member_classification(value: object, member: int | str | None) -> None:
    assert stats.user_member(value) == member


@settings(deadline=None)  # timing-free: a loaded CI machine must not fail it
@given(st.integers(min_value=-(2**64), max_value=2**64))
def test_int_and_its_text_are_one_user(n: int) -> None:
    assert stats.user_member(n) == stats.user_member(str(n))


# --- windows --------------------------------------------------------------------------------------


def test_window_buckets_cover_the_window_oldest_first() -> None:
    now = T0 + 0.5
    for g in ALL:
        starts = stats.window_buckets(now, WINDOW, g)
        span = min(WINDOW, g.retention)
        assert starts[0] <= int(now) - span < starts[0] + g.seconds
        assert starts[-1] <= now < starts[-1] + g.seconds
        assert list(starts) == sorted(starts)
        assert all(b - a == g.seconds for a, b in zip(starts, starts[1:], strict=False))


def test_window_sizes_with_the_defaults() -> None:
    now = T0  # not on a minute edge
    sizes = {g.name: len(stats.window_buckets(now, WINDOW, g)) for g in ALL}
    assert sizes == {"second": 7201, "minute": 2881, "hour": 49, "day": 3}


def test_window_at_exact_midnight() -> None:
    now = utc(2016, 2, 28)
    days = list(stats.window_buckets(now, WINDOW, DAY))
    assert days == [utc(2016, 2, 26), utc(2016, 2, 27), utc(2016, 2, 28)]


def test_second_series_is_capped_at_its_retention() -> None:
    starts = stats.window_buckets(T0, WINDOW, SECOND)
    assert starts[0] == T0 - SECOND.retention
    # every bucket returned still exists in Redis: none is past its deadline
    assert all(stats.deadline(s, SECOND) > T0 for s in starts)


def test_reference_granularity() -> None:
    assert stats.reference_granularity(ALL, WINDOW) is MINUTE
    assert stats.reference_granularity((HOUR, DAY), WINDOW) is HOUR
    assert stats.reference_granularity((SECOND,), WINDOW) is SECOND
    # none keeps the whole window: the one keeping the most of it
    longer = Granularity("m2", 60, 10 * 3600, "%Y%m%d%H%M")
    assert stats.reference_granularity((SECOND, longer), WINDOW) is longer
    shorter = Granularity("m3", 60, 3600, "%Y%m%d%H%M")
    assert stats.reference_granularity((SECOND, shorter), WINDOW) is SECOND


def test_days_of() -> None:
    assert list(stats.days_of(utc(2016, 2, 27, 23), utc(2016, 2, 29, 1))) == [
        utc(2016, 2, 27), utc(2016, 2, 28), utc(2016, 2, 29)]
    assert list(stats.days_of(utc(2016, 2, 27), utc(2016, 2, 27, 12))) == [utc(2016, 2, 27)]


# --- tiling --------------------------------------------------------------------------------------


def _covered(pieces: list[tuple[Granularity, int]]) -> list[tuple[int, int]]:
    return sorted((s, s + g.seconds) for g, s in pieces)


@settings(deadline=None)  # timing-free: a loaded CI machine must not fail it
@given(st.integers(min_value=0, max_value=200_000), st.integers(min_value=0, max_value=200_000))
def test_tile_covers_exactly_once(a: int, length: int) -> None:
    base = T0 - T0 % 60 - 30 * 86400
    start = base + a * 60
    end = start + length * 60
    now = end + 10
    pieces = stats.tile(start, end, ALL, MINUTE, now)
    spans = _covered(pieces)
    pos = start
    for lo, hi in spans:  # contiguous, disjoint, from start to end
        assert lo == pos
        pos = hi
    assert pos == end
    for g, s in pieces:  # only live buckets of granularities aligned on the base
        assert g is not SECOND
        assert g is MINUTE or stats.deadline(s, g) > now


def test_tile_uses_coarse_buckets_inside() -> None:
    now = utc(2016, 2, 29, 10, 30)
    start, end = utc(2016, 2, 27, 10, 29), utc(2016, 2, 29, 10, 31)
    pieces = stats.tile(start, end, ALL, MINUTE, now)
    by = {g.name: sum(1 for p in pieces if p[0] is g) for g in ALL}
    # 10:29-11:00 (31 min), 11:00-24:00 (13 h), the 28th (1 day), 00:00-10:00 (10 h),
    # 10:00-10:31 (31 min)
    assert by == {"second": 0, "minute": 62, "hour": 23, "day": 1}


def test_tile_replaces_an_expired_coarse_bucket_with_finer_ones() -> None:
    short_hour = Granularity("hour", 3600, 3600, "%Y%m%d%H")
    start = utc(2016, 2, 27, 10)
    now = utc(2016, 2, 27, 14, 30)
    pieces = stats.tile(start, utc(2016, 2, 27, 14), (MINUTE, short_hour), MINUTE, now)
    # hour buckets ending before now - 1 h are gone: 10h-12h must come from minutes
    # an hour bucket lives until its end + 1 h: at 14:30 only 13:00-14:00 is left
    hours = [s for g, s in pieces if g is short_hour]
    assert hours == [utc(2016, 2, 27, 13)]
    assert sum(1 for g, _ in pieces if g is MINUTE) == 3 * 60
    assert _covered(pieces)[0][0] == start and _covered(pieces)[-1][1] == utc(2016, 2, 27, 14)


def test_tile_ignores_granularities_not_aligned_on_the_base() -> None:
    seven = Granularity("seven", 420, 86400, "%Y%m%d%H%M%S")
    pieces = stats.tile(utc(2016, 2, 27), utc(2016, 2, 27, 1), (seven, HOUR), Granularity(
        "five", 300, 86400, "%Y%m%d%H%M"), now=utc(2016, 2, 27, 2))
    assert {g.name for g, _ in pieces} == {"hour"}


# --- combining ------------------------------------------------------------------------------------


def test_sum_hashes_and_types_list() -> None:
    t = stats.TOTAL_FIELD
    summed = stats.sum_hashes([{"a": "2", "b": "1", t: "3"}, {}, {"b": "4", "c": "0", t: "4"}])
    assert summed == {"a": 2, "b": 5, "c": 0, t: 7}
    assert stats.types_list(summed) == [
        {"event_type": "b", "count": 5}, {"event_type": "a", "count": 2}]
    tie = stats.types_list({"z": 1, "y": 1})
    assert [r["event_type"] for r in tie] == ["y", "z"]


def test_uniques_row() -> None:
    assert stats.uniques_row(utc(2016, 2, 29), 10, 3) == {
        "date": "2016-02-29", "users": 13, "exact": 10, "estimated": 3}


def test_as_count() -> None:
    assert stats.as_count(None) == 0
    assert stats.as_count("17") == 17


# --- rebuild span -------------------------------------------------------------------------


def test_rebuild_span_widens_to_whole_days() -> None:
    since, until = utc(2016, 2, 27, 10, 30, 5), utc(2016, 2, 28, 3, 0, 0)
    assert stats.rebuild_span(since, until, ALL) == (utc(2016, 2, 27), utc(2016, 2, 29))


def test_rebuild_span_with_granularities_coarser_than_a_day() -> None:
    week = Granularity("week", 7 * 86400, 60 * 86400, "%Y%m%d")
    lo, hi = stats.rebuild_span(utc(2016, 2, 27, 10), utc(2016, 2, 27, 11), (HOUR, week))
    assert lo % week.seconds == 0 and hi % week.seconds == 0
    assert lo <= utc(2016, 2, 27, 10) and hi > utc(2016, 2, 27, 11)


def test_replaced_buckets_are_inside_and_alive() -> None:
    lo, hi = utc(2016, 2, 27), utc(2016, 2, 29)
    now = utc(2016, 2, 29, 1)
    got, straddling = stats.replaced_buckets(lo, hi, ALL, now)
    assert straddling == 0
    by: dict[str, list[int]] = {}
    for g, s in got:
        assert lo <= s and s + g.seconds <= hi
        assert stats.deadline(s, g) > now
        by.setdefault(g.name, []).append(s)
    assert len(by["day"]) == 2
    assert len(by["hour"]) == 48
    assert len(by["minute"]) == 48 * 60
    # second buckets only for the last 2 h before now that lie inside [lo, hi): 23:00-24:00
    assert by["second"][0] == utc(2016, 2, 28, 23) and by["second"][-1] == hi - 1
    assert len(by["second"]) == 3600


def test_replaced_buckets_report_straddling_edges() -> None:
    seven = Granularity("seven", 7, 86400, "%Y%m%d%H%M%S")
    lo, hi = utc(2016, 2, 27), utc(2016, 2, 28)
    got, straddling = stats.replaced_buckets(lo, hi, (seven,), now=hi)
    assert straddling == 2  # 86400 is not a multiple of 7: both edges straddle
    inside = [s for s in range(lo - 7, hi + 7) if s % 7 == 0 and lo <= s and s + 7 <= hi]
    assert [s for _, s in got] == inside


# --- Redis URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "clean", "cluster"),
    [
        ("redis://h:6379/0", "redis://h:6379/0", False),
        ("rediss://u:p@h:6380", "rediss://u:p@h:6380", False),
        ("unix:///run/redis.sock", "unix:///run/redis.sock", False),
        ("redis+cluster://h:7000", "redis://h:7000", True),
        ("rediss+cluster://h:7000?ssl_cert_reqs=none", "rediss://h:7000?ssl_cert_reqs=none", True),
        ("redis://h:7000?cluster=true&socket_timeout=2", "redis://h:7000?socket_timeout=2", True),
        ("redis://h:7000?cluster=no", "redis://h:7000", False),
    ],
)
def test_parse_redis_url(url: str, clean: str, cluster: bool) -> None:
    assert parse_redis_url(url) == (clean, cluster)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("", "no Redis URL"),
        ("http://h:6379", "scheme"),
        ("unix:///x.sock?cluster=true", "TCP"),
    ],
)
def test_bad_redis_urls_are_refused(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_redis_url(url)


def test_clients_are_built_without_connecting() -> None:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    # Nothing listens on port 1: building must not touch the network.
    assert isinstance(make_redis_client(RedisConfig(), "redis://127.0.0.1:1"), Redis)
    assert isinstance(make_redis_client(RedisConfig(), "redis+cluster://127.0.0.1:1"),
                      RedisCluster)
