"""aggregate.split_range: an inclusive range of seconds as whole UTC days plus edge pieces.

The rollups total the whole days from daily_stats and count the pieces from the events, so the
two together must hold exactly the instants of the range, each piece inside its own day.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from loader.aggregate import DAY_SECONDS, day_number, split_range

DAY = DAY_SECONDS
seconds = st.one_of(
    st.integers(0, 40 * DAY).map(float),
    st.floats(0, 40 * DAY, allow_nan=False),
    st.integers(0, 40).map(lambda d: float(d * DAY)),  # midnights exactly
)


def covered(start: float | None, end: float | None, ts: float) -> int:
    """How many parts of split_range(start, end) hold ts."""
    days, pieces = split_range(start, end)
    n = 0
    if days is not None:
        first, last = days
        d = day_number(ts)
        n += (first is None or d >= first) and (last is None or d <= last)
    for p in pieces:
        n += p.lo <= ts and (ts <= p.hi if p.closed else ts < p.hi)
    return n


@given(seconds, seconds, st.lists(seconds, max_size=30))
def test_parts_hold_exactly_the_range(a: float, b: float, stamps: list[float]) -> None:
    start, end = min(a, b), max(a, b)
    for ts in [*stamps, start, end, start - 0.001, end + 0.001,
               float(day_number(start) * DAY), float((day_number(end) + 1) * DAY)]:
        if ts >= 0:
            assert covered(start, end, ts) == (1 if start <= ts <= end else 0), (start, end, ts)


@given(seconds, seconds)
def test_each_piece_lies_in_its_day(a: float, b: float) -> None:
    _, pieces = split_range(min(a, b), max(a, b))
    assert len(pieces) <= 2
    for p in pieces:
        assert p.day * DAY <= p.lo <= p.hi <= (p.day + 1) * DAY
        assert p.closed or p.hi == (p.day + 1) * DAY


@given(seconds)
def test_open_sides(t: float) -> None:
    for start, end in ((None, t), (t, None), (None, None)):
        for ts in (0.0, t - 0.5, t, t + 0.5, t + 3 * DAY):
            if ts >= 0:
                inside = (start is None or ts >= start) and (end is None or ts <= end)
                assert covered(start, end, ts) == inside


def test_examples() -> None:
    noon = 10 * DAY + 12 * 3600.0
    assert split_range(noon, noon) == (None, [(10, noon, noon, True)])
    # 18:00 to 06:00 the next day: two pieces, no whole day.
    days, pieces = split_range(noon + 6 * 3600, noon + 18 * 3600)
    assert days is None and [p.day for p in pieces] == [10, 11]
    # Midnight to midnight: day 10 whole, and the instant of midnight of day 11.
    days, pieces = split_range(10 * DAY, 11 * DAY)
    assert days == (10, 10) and pieces == [(11, 11 * DAY, 11 * DAY, True)]
