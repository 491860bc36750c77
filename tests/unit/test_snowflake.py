"""Snowflake ids (SPEC §4): layout, strict order under any clock, uniqueness across nodes."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.snowflake import (
    EPOCH_MS,
    MAX_SEQUENCE,
    MAX_TIME,
    REGRESS_WARNING_INTERVAL,
    SnowflakeGenerator,
    SnowflakeParts,
    max_id_for_ms,
    min_id_for_ms,
    parse_id,
)
from tests.fakes import FakeClock

LOGGER = "collector.snowflake"


def make(dc: int = 3, worker: int = 7, start: float = 1_700_000_000.0) -> tuple[
    SnowflakeGenerator, FakeClock
]:
    clock = FakeClock(start)
    return SnowflakeGenerator(dc, worker, clock), clock


def regress_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


# --- layout -----------------------------------------------------------------------------------


def test_epoch_is_2016_01_01_utc() -> None:
    assert int(datetime(2016, 1, 1, tzinfo=UTC).timestamp() * 1000) == EPOCH_MS


def test_first_id_carries_wall_ms_datacenter_worker_and_sequence_zero() -> None:
    gen, clock = make(dc=5, worker=9)
    parts = parse_id(gen.next_id())
    assert parts == SnowflakeParts(ms=clock.wall_ms(), datacenter_id=5, worker_id=9, sequence=0)


@pytest.mark.parametrize(("dc", "worker"), [(0, 0), (31, 0), (0, 31), (31, 31), (17, 4)])
def test_datacenter_and_worker_occupy_their_own_five_bits(dc: int, worker: int) -> None:
    gen, _ = make(dc=dc, worker=worker)
    snowflake = gen.next_id()
    assert (snowflake >> 17) & 0x1F == dc
    assert (snowflake >> 12) & 0x1F == worker
    assert snowflake & 0xFFF == 0
    assert parse_id(snowflake).datacenter_id == dc
    assert parse_id(snowflake).worker_id == worker


def test_ids_fit_a_signed_64_bit_column_until_the_time_field_runs_out() -> None:
    gen, clock = make(dc=31, worker=31)
    clock.set((EPOCH_MS + MAX_TIME) / 1000)
    for _ in range(MAX_SEQUENCE + 1):
        snowflake = gen.next_id()
    assert snowflake == 2**63 - 1
    with pytest.raises(OverflowError, match="time field is exhausted"):
        gen.next_id()  # no millisecond left to borrow
    with pytest.raises(OverflowError, match="time field is exhausted"):
        gen.next_ids(2)
    clock.advance(0.001)
    with pytest.raises(OverflowError, match="time field is exhausted"):
        gen.next_id()


@pytest.mark.parametrize(
    ("dc", "worker"), [(-1, 0), (32, 0), (0, -1), (0, 32), (True, 0), (0, 1.0), ("1", 0)]
)
def test_out_of_range_or_non_int_node_ids_are_refused(dc: object, worker: object) -> None:
    with pytest.raises(ValueError, match="^cannot create generator: "):
        SnowflakeGenerator(dc, worker, FakeClock())  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    ms=st.integers(EPOCH_MS, EPOCH_MS + MAX_TIME),
    dc=st.integers(0, 31),
    worker=st.integers(0, 31),
    seq=st.integers(0, MAX_SEQUENCE),
)
def test_parse_id_round_trips_every_field(ms: int, dc: int, worker: int, seq: int) -> None:
    snowflake = ((ms - EPOCH_MS) << 22) | (dc << 17) | (worker << 12) | seq
    assert parse_id(snowflake) == SnowflakeParts(ms, dc, worker, seq)


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, "12", True])
def test_parse_id_refuses_what_is_not_an_id(bad: object) -> None:
    with pytest.raises(ValueError, match="^cannot parse id"):
        parse_id(bad)  # type: ignore[arg-type]


# --- order ------------------------------------------------------------------------------------


def test_100k_ids_are_strictly_increasing_while_the_clock_moves_in_small_steps() -> None:
    gen, clock = make()
    previous = -1
    for i in range(100_000):
        if i % 7 == 0:
            clock.advance(0.0003)
        snowflake = gen.next_id()
        assert snowflake > previous
        previous = snowflake


def test_ids_in_one_millisecond_count_the_sequence_and_a_new_millisecond_resets_it() -> None:
    gen, clock = make()
    first = [parse_id(gen.next_id()) for _ in range(3)]
    assert [p.sequence for p in first] == [0, 1, 2]
    assert {p.ms for p in first} == {clock.wall_ms()}
    clock.advance(0.001)
    later = parse_id(gen.next_id())
    assert (later.ms, later.sequence) == (clock.wall_ms(), 0)


def test_clock_stepping_back_never_gives_a_smaller_or_duplicate_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gen, clock = make()
    before = [gen.next_id() for _ in range(10)]
    last_ms = parse_id(before[-1]).ms
    clock.set(clock.time() - 5.0)  # NTP steps the wall clock back by 5 s
    after = []
    for _ in range(50):
        after.append(gen.next_id())
        clock.advance(0.0005)
    ids = before + after
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    # Until the wall clock catches up the ids keep the last logical millisecond.
    assert all(parse_id(s).ms == last_ms for s in after)
    assert len(regress_warnings(caplog)) == 1


def test_after_a_step_back_ids_follow_the_wall_clock_again_once_it_passes() -> None:
    gen, clock = make()
    high = gen.next_id()
    clock.set(clock.time() - 1.0)
    gen.next_id()
    clock.set(parse_id(high).ms / 1000 + 2.0)
    parts = parse_id(gen.next_id())
    assert (parts.ms, parts.sequence) == (clock.wall_ms(), 0)


def test_regression_warnings_are_rate_limited_and_count_what_they_suppressed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gen, clock = make()
    gen.next_id()
    for _ in range(5):  # five separate regressions, no monotonic time passing
        clock.set(clock.time() - 1.0)
        gen.next_id()
    assert len(regress_warnings(caplog)) == 1
    clock.advance(REGRESS_WARNING_INTERVAL)
    gen.next_id()
    clock.set(clock.time() - 10.0)
    gen.next_id()
    warnings = regress_warnings(caplog)
    assert len(warnings) == 2
    assert "4 similar warnings suppressed" in warnings[1].getMessage()


def test_sequence_overflow_borrows_the_next_millisecond_without_waiting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gen, clock = make()
    frozen_ms = clock.wall_ms()
    ids = [gen.next_id() for _ in range(MAX_SEQUENCE + 2)]  # 4097 ids, clock never moves
    assert ids == sorted(set(ids))
    assert parse_id(ids[-2]).sequence == MAX_SEQUENCE
    overflow = parse_id(ids[-1])
    assert (overflow.ms, overflow.sequence) == (frozen_ms + 1, 0)
    # Borrowing is not a clock regression: nothing to warn about.
    assert regress_warnings(caplog) == []
    # When the wall clock reaches the borrowed millisecond, the sequence goes on, no duplicate.
    clock.advance(0.001)
    assert parse_id(gen.next_id()) == SnowflakeParts(frozen_ms + 1, 3, 7, 1)


def test_clock_before_the_epoch_still_gives_valid_increasing_ids() -> None:
    gen, _ = make(start=(EPOCH_MS - 5000) / 1000)
    ids = [gen.next_id() for _ in range(3)]
    assert ids == sorted(ids)
    assert all(parse_id(s).ms == EPOCH_MS for s in ids)


# --- next_ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 100, 4095, 4096, 4097, 10_000])
@pytest.mark.parametrize("already", [0, 1, 4000, 4096])
def test_next_ids_equals_n_calls_of_next_id_under_a_frozen_clock(n: int, already: int) -> None:
    batch_gen, _ = make()
    single_gen, _ = make()
    for _ in range(already):
        batch_gen.next_id()
        single_gen.next_id()
    batch = batch_gen.next_ids(n)
    assert list(batch) == [single_gen.next_id() for _ in range(n)]
    # Within one millisecond the ids are consecutive, and given as a range that says so.
    assert type(batch) is (range if n > 0 and already + n <= 4096 else list)
    # And both generators carry on from the same state.
    assert batch_gen.next_id() == single_gen.next_id()


def test_next_ids_refuses_a_negative_count() -> None:
    gen, _ = make()
    with pytest.raises(ValueError, match="^cannot mint ids"):
        gen.next_ids(-1)


# One step of a clock/generator scenario: (kind, amount).
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.integers(0, 5)),  # milliseconds
        st.tuples(st.just("back"), st.integers(1, 3000)),  # milliseconds
        st.tuples(st.just("mint"), st.integers(0, 5000)),  # ids
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(steps=_steps)
def test_next_ids_and_next_id_agree_and_stay_increasing_under_any_clock(
    steps: list[tuple[str, int]],
) -> None:
    batch_gen, batch_clock = make()
    single_gen, single_clock = make()
    minted: list[int] = []
    for kind, amount in steps:
        for clock in (batch_clock, single_clock):
            if kind == "advance":
                clock.advance(amount / 1000)
            elif kind == "back":
                clock.set(clock.time() - amount / 1000)
        if kind == "mint":
            batch = batch_gen.next_ids(amount)
            assert list(batch) == [single_gen.next_id() for _ in range(amount)]
            minted += batch
    assert all(a < b for a, b in zip(minted, minted[1:], strict=False))


# --- several nodes ----------------------------------------------------------------------------


def test_every_distinct_datacenter_worker_pair_mints_disjoint_ids() -> None:
    clock = FakeClock()  # one frozen clock: the worst case, every node in the same millisecond
    seen: set[int] = set()
    total = 0
    for dc in range(32):
        for worker in range(32):
            gen = SnowflakeGenerator(dc, worker, clock)
            ids = gen.next_ids(20)
            seen.update(ids)
            total += len(ids)
    assert len(seen) == total


# --- range scans ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    offset_ms=st.integers(1, MAX_TIME - 1),
    dc=st.integers(0, 31),
    worker=st.integers(0, 31),
    already=st.integers(0, MAX_SEQUENCE),
)
def test_min_and_max_id_for_ms_bracket_exactly_the_ids_of_that_millisecond(
    offset_ms: int, dc: int, worker: int, already: int
) -> None:
    unix_ms = EPOCH_MS + offset_ms
    gen = SnowflakeGenerator(dc, worker, FakeClock(unix_ms / 1000))
    gen.next_ids(already)
    snowflake = gen.next_id()
    assert parse_id(snowflake).ms == unix_ms
    assert min_id_for_ms(unix_ms) <= snowflake <= max_id_for_ms(unix_ms)
    assert max_id_for_ms(unix_ms - 1) < snowflake < min_id_for_ms(unix_ms + 1)
    assert max_id_for_ms(unix_ms - 1) + 1 == min_id_for_ms(unix_ms)


def test_min_id_for_ms_is_monotonic_and_clamped_to_the_representable_range() -> None:
    assert min_id_for_ms(0) == 0
    assert min_id_for_ms(EPOCH_MS) == 0
    assert min_id_for_ms(EPOCH_MS + 1) == 1 << 22
    assert min_id_for_ms(10**20) == MAX_TIME << 22
    assert max_id_for_ms(10**20) == 2**63 - 1
    samples = [EPOCH_MS + k for k in (0, 1, 2, 1000, 86_400_000, 10**12)]
    assert [min_id_for_ms(m) for m in samples] == sorted({min_id_for_ms(m) for m in samples})


# --- the fake clock the suite relies on -------------------------------------------------------


def test_fake_clock_keeps_exact_milliseconds() -> None:
    clock = FakeClock(1_700_000_000.123)
    assert clock.wall_ms() == 1_700_000_000_123
    assert clock.time() == 1_700_000_000.123
    for _ in range(1000):
        clock.advance(0.001)
    assert clock.wall_ms() == 1_700_000_001_123


def test_fake_clock_set_moves_only_the_wall_clock_and_advance_refuses_going_back() -> None:
    clock = FakeClock(1000.0, monotonic_start=50.0)
    clock.advance(2.5)
    assert (clock.time(), clock.monotonic()) == (1002.5, 52.5)
    clock.set(900.0)
    assert (clock.time(), clock.monotonic()) == (900.0, 52.5)
    with pytest.raises(ValueError):
        clock.advance(-1.0)
