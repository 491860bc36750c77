"""Analytics parameters (loader/analytics/params.py) and the local-time arithmetic shared by
the stores (loader/analytics/common.py): pure functions, no store."""

from __future__ import annotations

import datetime as dt
import threading
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.analytics import common
from loader.analytics import params as P

NOW = 1_750_000_000.0


def utc(y: int, m: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return dt.datetime(y, m, d, h, mi, s, tzinfo=dt.UTC).timestamp()


# --- from / to --------------------------------------------------------------------------------


def test_range_defaults_to_the_last_seven_days() -> None:
    assert P.time_range(None, None, NOW) == P.Range(NOW - 7 * 86400, NOW)
    assert P.time_range("", " ", NOW) == P.Range(NOW - 7 * 86400, NOW)


def test_range_with_one_bound() -> None:
    assert P.time_range("1000", None, NOW) == P.Range(1000.0, NOW)
    assert P.time_range(None, "1000000", NOW) == P.Range(1000000 - 7 * 86400, 1000000.0)
    # Never before the epoch.
    assert P.time_range(None, "5", NOW) == P.Range(0.0, 5.0)


def test_range_accepts_strings_and_json_numbers() -> None:
    assert P.time_range("1.5", "2", NOW) == P.Range(1.5, 2.0)
    assert P.time_range(1, 2.25, NOW) == P.Range(1.0, 2.25)
    assert P.time_range(5, 5, NOW) == P.Range(5.0, 5.0)


@pytest.mark.parametrize("start, end, message", [
    ("abc", None, "from='abc' is not UNIX seconds"),
    (None, "-1", "must be UNIX seconds >= 0"),
    ("nan", None, "must be UNIX seconds >= 0"),
    ("1700000000000", None, "looks like milliseconds"),
    (True, None, "not a boolean"),
    ([1], None, "must be UNIX seconds"),
    ("20", "10", "from=20 is after to=10"),
    # Plain numbers: `:g` printed both of these as 1.79599e+09.
    ("1795987511", "1795901111", "from=1795987511 is after to=1795901111"),
    ("10.5", "10.25", r"from=10\.5 is after to=10\.25"),
    (str(NOW + 10), None, "in the future"),
])
def test_bad_ranges(start: object, end: object, message: str) -> None:
    with pytest.raises(P.BadParam, match=message):
        P.time_range(start, end, NOW)


def test_uniques_range_is_capped() -> None:
    ok = P.Range(0, P.MAX_UNIQUES_DAYS * 86400)
    assert P.uniques_range(ok) is ok
    with pytest.raises(P.BadParam, match="more than 3660 days"):
        P.uniques_range(P.Range(0, P.MAX_UNIQUES_DAYS * 86400 + 1))


# --- other query parameters -------------------------------------------------------------------


def test_timezone() -> None:
    assert P.timezone(None) == ZoneInfo("UTC")
    assert P.timezone("Asia/Kolkata") == ZoneInfo("Asia/Kolkata")
    for bad in ("Mars/Olympus", "../../etc/passwd", ""):
        with pytest.raises(P.BadParam, match="not an IANA time zone"):
            P.timezone(bad)


def test_top() -> None:
    assert P.top(None, 20) == 20
    assert P.top("1", 20) == 1
    assert P.top("1000", 20) == 1000
    for bad, message in (("0", "between 1 and 1000"), ("1001", "between 1 and 1000"),
                         ("x", "not a whole number"), ("2.5", "not a whole number")):
        with pytest.raises(P.BadParam, match=message):
            P.top(bad, 20)


def test_period() -> None:
    assert P.period(None) == "day"
    assert [P.period(p) for p in ("day", "week", "month", "year")] == [
        "day", "week", "month", "year"]
    with pytest.raises(P.BadParam, match="not one of day, week, month, year"):
        P.period("quarter")


def test_event_types_repeat_and_keep_commas() -> None:
    assert P.event_types({}) is None
    assert P.event_types({"eventType": [""]}) is None
    assert P.event_types({"eventType": ["a,b", " c ", "a,b"]}) == ("a,b", "c")


def test_unknown_parameters_are_named() -> None:
    P.check_known({"from": ["1"]}, ("from", "to"))
    with pytest.raises(P.BadParam, match="unknown parameter event_type; this endpoint takes "
                                         "from, to"):
        P.check_known({"event_type": ["x"]}, ("from", "to"))


def test_last_value_wins_and_blank_is_absent() -> None:
    assert P.last({"top": ["1", "2"]}, "top") == "2"
    assert P.last({"top": [" "]}, "top") is None
    assert P.last({}, "top") is None


# --- funnel body ------------------------------------------------------------------------------


def test_funnel_body() -> None:
    q = P.funnel({"steps": ["signup", " purchase "], "window": 3600, "from": 10, "to": 20}, NOW)
    assert q == P.FunnelQuery(("signup", "purchase"), 3600.0, P.Range(10.0, 20.0))
    default = P.funnel({"steps": ["a"]}, NOW)
    assert default.window == P.DEFAULT_WINDOW
    assert default.range == P.Range(NOW - 7 * 86400, NOW)


@pytest.mark.parametrize("body, message", [
    (None, "must be a JSON object"),
    ([], "must be a JSON object"),
    ({}, "steps must be a non-empty array"),
    ({"steps": []}, "steps must be a non-empty array"),
    ({"steps": "a"}, "steps must be a non-empty array"),
    ({"steps": ["a", ""]}, r"steps\[1\] must be a non-empty"),
    ({"steps": ["a", 3]}, r"steps\[1\] must be a non-empty"),
    ({"steps": ["a"] * 21}, "at most 20 steps"),
    ({"steps": ["a"], "window": 0}, "more than 0"),
    ({"steps": ["a"], "window": -1}, "at most 31622400 seconds"),
    ({"steps": ["a"], "window": "60"}, "window must be a number"),
    ({"steps": ["a"], "window": True}, "window must be a number"),
    ({"steps": ["a"], "window": 1e12}, "at most"),
    ({"steps": ["a"], "from": 30, "to": 20}, "after to"),
    ({"steps": ["a"], "stepz": 1}, "unknown field stepz"),
])
def test_bad_funnel_bodies(body: object, message: str) -> None:
    with pytest.raises(P.BadParam, match=message):
        P.funnel(body, NOW)


# --- local time -------------------------------------------------------------------------------


def test_offset_pieces_of_new_york_around_both_changes() -> None:
    tz = ZoneInfo("America/New_York")
    start, end = utc(2024, 3, 1), utc(2024, 11, 30)
    assert common.offset_intervals(tz, start, end) == [
        (start, -5 * 3600),
        (utc(2024, 3, 10, 7), -4 * 3600),
        (utc(2024, 11, 3, 6), -5 * 3600),
    ]


@pytest.mark.parametrize("zone, start, end, change", [
    ("America/New_York", 1772931600.5, 1773000000, 1772953200),
    ("America/New_York", 1772866800.001, 1772953200.001, 1772953200),
    ("Australia/Lord_Howe", 1775311200, 1775314800.25, 1775314800),
])
def test_offset_pieces_with_fractional_bounds_near_a_change(zone: str, start: float, end: float,
                                                           change: int) -> None:
    """A bound with a fraction within a second after a change made the bisection loop for
    ever (a query thread at 100% CPU; six of them blocked every read)."""
    result: list[common.Intervals] = []
    worker = threading.Thread(target=lambda: result.append(
        common.offset_intervals(ZoneInfo(zone), start, end)), daemon=True)
    worker.start()
    worker.join(10)
    assert result, "offset_intervals did not return"
    (pieces,) = result
    assert [t for t, _ in pieces] == [start, change]
    tz = ZoneInfo(zone)
    assert common.utc_offset(tz, change - 1) != common.utc_offset(tz, change) == pieces[1][1]


def test_offset_pieces_of_a_zone_without_changes() -> None:
    tz = ZoneInfo("Asia/Kolkata")
    assert common.offset_intervals(tz, 100.5, utc(2024, 1, 1)) == [(100.5, 19800)]
    assert common.offset_intervals(ZoneInfo("UTC"), 5, 10) == [(5, 0)]


def test_hour_buckets_split_at_dst_and_cover_the_range_exactly() -> None:
    tz = ZoneInfo("Australia/Lord_Howe")  # 02:00 +11 -> 01:30 +10:30 on 2024-04-07 local
    start, end = utc(2024, 4, 6, 14, 10), utc(2024, 4, 6, 16, 59, 59) + 0.5
    buckets = common.hour_buckets(common.offset_intervals(tz, start, end), end)
    assert buckets[0][0] == start
    assert buckets[-1][1] > end
    for (_, hi, _), (lo, _, _) in zip(buckets, buckets[1:], strict=False):
        assert hi == lo
    labels = [common.weekday_hour(lh)[1] for _, _, lh in buckets]
    # Local 01:10 .. 02:00 (+11), then 01:30 .. 02:00 again (+10:30), then 02, 03 (+10:30).
    assert labels == [1, 1, 2, 3]
    for lo, hi, lh in buckets:
        for t in (lo, (lo + hi) / 2):
            local = dt.datetime.fromtimestamp(t, tz)
            assert (local.weekday(), local.hour) == common.weekday_hour(lh)


@settings(max_examples=200, deadline=None)
@given(ts=st.floats(min_value=0, max_value=2_000_000_000, allow_nan=False),
       zone=st.sampled_from(["America/New_York", "Asia/Kolkata", "Asia/Kathmandu",
                             "Australia/Lord_Howe", "Europe/London", "America/St_Johns"]))
def test_local_day_and_hour_match_datetime(ts: float, zone: str) -> None:
    tz = ZoneInfo(zone)
    intervals = common.offset_intervals(tz, max(0.0, ts - 40 * 86400), ts + 40 * 86400)
    local_s = common.local_seconds(ts, intervals)
    local = dt.datetime.fromtimestamp(ts, tz)
    assert common.day_string(common.day_number(local_s)) == local.date().isoformat()
    assert common.weekday_hour(int(local_s // 3600)) == (local.weekday(), local.hour)


# --- answer shapes ----------------------------------------------------------------------------


def test_funnel_conversion_rules() -> None:
    answer = common.funnel_answer(("a", "b", "c", "d"), [10, 4, 0, 0])
    assert [s["conversion"] for s in answer["steps"]] == [1.0, 0.4, 0.0, 0.0]
    assert common.funnel_answer(("a",), [0])["steps"][0]["conversion"] == 0.0


def test_users_ties_by_user_id_and_distribution() -> None:
    answer = common.users_answer([("b", 2), ("a", 2), ("c", 5), ("d", 1)], top=3)
    assert answer["users"] == [{"user_id": "c", "events": 5}, {"user_id": "a", "events": 2},
                               {"user_id": "b", "events": 2}]
    assert answer["distribution"] == [{"events": 1, "users": 1}, {"events": 2, "users": 2},
                                      {"events": 5, "users": 1}]


def test_fold_funnel_greedy_and_deadline() -> None:
    rows = [("u", 0.0, 1, "a"), ("u", 1.0, 2, "b"), ("u", 2.0, 3, "a"), ("u", 10.0, 4, "c"),
            ("v", 0.0, 5, "a"), ("v", 11.0, 6, "b")]
    assert common.fold_funnel(iter(rows), ("a", "b", "c"), 10.0) == [2, 1, 1]
