"""The segments of one worker: lazy open, rolls by size and age, recovery, listing (real files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.errors import StorageUnavailable
from collector.storage.segment import segment_name
from collector.storage.segment_log import (
    SegmentLog,
    id_node,
    list_segments,
    should_roll,
)
from tests.fakes import FakeClock


def snowflake(ms: int, datacenter: int = 1, worker: int = 2, seq: int = 0) -> int:
    """An id laid out as SPEC §4 says, built independently of collector.snowflake."""
    return (ms << 22) | (datacenter << 17) | (worker << 12) | seq


def line(n: int) -> bytes:
    return f'{{"id":"{n}","event_type":"e"}}\n'.encode()


def make_log(
    directory: Path, clock: FakeClock, *, roll_bytes: int = 1 << 20, roll_seconds: float = 60.0,
    datacenter: int = 1, worker: int = 2,
) -> SegmentLog:
    return SegmentLog(directory, datacenter, worker, roll_bytes, roll_seconds, clock)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_id_node_extracts_datacenter_and_worker_bits() -> None:
    assert id_node(snowflake(123456, datacenter=31, worker=0, seq=4095)) == (31, 0)
    assert id_node(snowflake(123456, datacenter=0, worker=31, seq=4095)) == (0, 31)


@pytest.mark.parametrize(
    ("size", "age", "expected"),
    [(0, 0.0, False), (99, 59.9, False), (100, 0.0, True), (1, 60.0, True), (0, 600.0, False)],
)
def test_should_roll_by_size_or_by_age_if_not_empty(size: int, age: float, expected: bool) -> None:
    assert should_roll(size, age, roll_bytes=100, roll_seconds=60.0) is expected


def test_append_opens_a_segment_named_by_the_first_id(tmp_path: Path) -> None:
    log = make_log(tmp_path, FakeClock())
    first = snowflake(1000)
    log.append(line(1), first)
    log.append(line(2), snowflake(1001))

    assert log.active is not None
    assert names(tmp_path) == [segment_name(first, sealed=False)]
    assert (tmp_path / segment_name(first, sealed=False)).read_bytes() == line(1) + line(2)


def test_append_rolls_by_size(tmp_path: Path) -> None:
    log = make_log(tmp_path, FakeClock(), roll_bytes=2 * len(line(0)))
    ids = [snowflake(1000 + i) for i in range(5)]
    for i, sid in enumerate(ids):
        log.append(line(i), sid)

    # Rolled after the 2nd and 4th appends; the 5th line opened a third segment.
    assert names(tmp_path) == [
        segment_name(ids[0], sealed=True),
        segment_name(ids[2], sealed=True),
        segment_name(ids[4], sealed=False),
    ]
    assert log.rolls == 2
    assert (tmp_path / segment_name(ids[2], sealed=True)).read_bytes() == line(2) + line(3)


def test_append_without_roll_leaves_rolling_to_the_caller(tmp_path: Path) -> None:
    log = make_log(tmp_path, FakeClock(), roll_bytes=1)
    log.append(line(0), snowflake(1000), roll=False)
    assert log.active is not None
    assert log.due_for_roll()


def test_maybe_roll_by_age_follows_the_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    log = make_log(tmp_path, clock, roll_seconds=60.0)
    assert log.maybe_roll() is False  # nothing active

    first = snowflake(1000)
    log.append(line(0), first)
    clock.advance(59.0)
    assert log.maybe_roll() is False
    assert names(tmp_path) == [segment_name(first, sealed=False)]

    clock.advance(1.0)
    assert log.maybe_roll() is True
    assert log.active is None
    assert names(tmp_path) == [segment_name(first, sealed=True)]


def test_append_with_another_workers_id_is_refused(tmp_path: Path) -> None:
    log = make_log(tmp_path, FakeClock(), datacenter=1, worker=2)
    with pytest.raises(ValueError, match="belongs to node"):
        log.append(line(0), snowflake(1000, datacenter=1, worker=3))
    assert names(tmp_path) == []


def test_constructor_validates_node_and_limits(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SegmentLog(tmp_path, 32, 0, 100, 1.0, FakeClock())
    with pytest.raises(ValueError):
        SegmentLog(tmp_path, 0, 0, 0, 1.0, FakeClock())


def test_recover_creates_a_missing_directory(tmp_path: Path) -> None:
    directory = tmp_path / "data" / "segments"
    assert make_log(directory, FakeClock()).recover() == []
    assert directory.is_dir()


def test_recover_seals_only_this_workers_open_files(tmp_path: Path) -> None:
    mine = snowflake(1000, datacenter=1, worker=2)
    mine_empty = snowflake(1500, datacenter=1, worker=2)
    other_worker = snowflake(2000, datacenter=1, worker=3)
    other_dc = snowflake(3000, datacenter=0, worker=2)
    torn = line(1) + b'{"id":"2","eve'
    (tmp_path / segment_name(mine, sealed=False)).write_bytes(torn)
    (tmp_path / segment_name(mine_empty, sealed=False)).write_bytes(b"")
    (tmp_path / segment_name(other_worker, sealed=False)).write_bytes(torn)
    (tmp_path / segment_name(other_dc, sealed=False)).write_bytes(torn)

    recovered = make_log(tmp_path, FakeClock(), datacenter=1, worker=2).recover()

    assert recovered == [
        (tmp_path / segment_name(mine, sealed=False), len(torn) - len(line(1))),
        (tmp_path / segment_name(mine_empty, sealed=False), 0),
    ]
    assert (tmp_path / segment_name(mine, sealed=True)).read_bytes() == line(1)
    assert names(tmp_path) == sorted([
        segment_name(mine, sealed=True),
        segment_name(other_worker, sealed=False),
        segment_name(other_dc, sealed=False),
    ])
    # Other writers' files are byte for byte untouched, torn tail included.
    assert (tmp_path / segment_name(other_worker, sealed=False)).read_bytes() == torn
    assert (tmp_path / segment_name(other_dc, sealed=False)).read_bytes() == torn


def test_recover_leaves_the_active_segment_alone(tmp_path: Path) -> None:
    log = make_log(tmp_path, FakeClock())
    first = snowflake(1000)
    log.append(line(0), first)
    assert log.recover() == []
    assert log.active is not None
    assert names(tmp_path) == [segment_name(first, sealed=False)]


def test_close_seals_the_active_segment(tmp_path: Path) -> None:
    log = make_log(tmp_path, FakeClock())
    first = snowflake(1000)
    log.append(line(0), first)
    log.close()
    assert log.active is None
    assert names(tmp_path) == [segment_name(first, sealed=True)]


def test_probe_recreates_the_directory_and_seals_abandoned_files(tmp_path: Path) -> None:
    directory = tmp_path / "segments"
    log = make_log(directory, FakeClock())
    log.probe()
    assert directory.is_dir()
    abandoned = snowflake(1000)
    (directory / segment_name(abandoned, sealed=False)).write_bytes(line(0))

    log.probe()

    assert names(directory) == [segment_name(abandoned, sealed=True)]  # probe file removed


def test_probe_fails_when_the_path_is_not_a_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "segments"
    blocker.write_bytes(b"not a directory")
    with pytest.raises(StorageUnavailable):
        make_log(blocker, FakeClock()).probe()


def test_list_segments_sorts_by_id_across_workers_and_ignores_other_files(tmp_path: Path) -> None:
    a = snowflake(1000, worker=3)
    b = snowflake(1001, worker=1)
    c = snowflake(999_999, worker=2)
    (tmp_path / segment_name(c, sealed=False)).write_bytes(line(3))
    (tmp_path / segment_name(a, sealed=True)).write_bytes(line(1) + line(1))
    (tmp_path / segment_name(b, sealed=True)).write_bytes(line(2))
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".probe-1-2").write_bytes(b"\n")

    infos = list_segments(tmp_path)

    assert [(i.first_id, i.sealed, i.size) for i in infos] == [
        (a, True, 2 * len(line(1))),
        (b, True, len(line(2))),
        (c, False, len(line(3))),
    ]
    assert [i.worker_id for i in infos] == [3, 1, 2]
    assert infos[0].path == tmp_path / segment_name(a, sealed=True)


def test_list_segments_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert list_segments(tmp_path / "nope") == []
