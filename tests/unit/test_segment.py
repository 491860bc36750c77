"""One segment file: naming, append, seal, failure undo and crash recovery (real files)."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.errors import StorageUnavailable
from collector.storage.segment import (
    FileOps,
    Segment,
    parse_segment_name,
    recover_open_segment,
    segment_name,
)
from tests.fakes import FakeClock

MAX_ID = 2**63 - 1


def lines(*events: str) -> bytes:
    return b"".join(f'{{"event_type":"{e}"}}\n'.encode() for e in events)


# --- names --------------------------------------------------------------------------------------


def test_segment_name_is_zero_padded_to_20_digits() -> None:
    assert segment_name(42, sealed=True) == "00000000000000000042.ndjson"
    assert segment_name(42, sealed=False) == "00000000000000000042.ndjson.open"


@given(st.integers(min_value=0, max_value=MAX_ID), st.booleans())
def test_parse_segment_name_round_trips(first_id: int, sealed: bool) -> None:
    assert parse_segment_name(segment_name(first_id, sealed)) == (first_id, sealed)


@given(st.lists(st.integers(min_value=0, max_value=MAX_ID), unique=True, min_size=2))
def test_name_order_is_id_order(ids: list[int]) -> None:
    names = sorted(segment_name(i, sealed=True) for i in ids)
    assert [parse_segment_name(n) for n in names] == [(i, True) for i in sorted(ids)]


@pytest.mark.parametrize(
    "name",
    ["42.ndjson", "00000000000000000042.json", "00000000000000000042.ndjson.tmp",
     ".probe-0-0", "rejected-1700000000000.ndjson", "0000000000000000004x.ndjson"],
)
def test_parse_segment_name_ignores_other_files(name: str) -> None:
    assert parse_segment_name(name) is None


# --- append and seal ----------------------------------------------------------------------------


def test_append_then_seal_renames_open_to_sealed(tmp_path: Path) -> None:
    segment = Segment.create(tmp_path, 7, FakeClock())
    assert segment.path == tmp_path / segment_name(7, sealed=False)
    segment.append(lines("a"))
    segment.append(lines("b", "c"))
    assert segment.size == len(lines("a", "b", "c"))
    assert segment.path.read_bytes() == lines("a", "b", "c")

    sealed = segment.seal()

    assert sealed == tmp_path / segment_name(7, sealed=True)
    assert sealed.read_bytes() == lines("a", "b", "c")
    assert not (tmp_path / segment_name(7, sealed=False)).exists()
    assert segment.closed
    with pytest.raises(StorageUnavailable):
        segment.append(lines("d"))


def test_create_records_the_monotonic_open_time(tmp_path: Path) -> None:
    clock = FakeClock(monotonic_start=500.0)
    assert Segment.create(tmp_path, 1, clock).opened_at == 500.0


def test_create_refuses_an_existing_name(tmp_path: Path) -> None:
    (tmp_path / segment_name(9, sealed=False)).write_bytes(lines("old"))
    with pytest.raises(StorageUnavailable):
        Segment.create(tmp_path, 9, FakeClock())
    assert (tmp_path / segment_name(9, sealed=False)).read_bytes() == lines("old")


def test_create_in_missing_directory_is_storage_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailable, match="cannot create segment"):
        Segment.create(tmp_path / "gone", 1, FakeClock())


def test_short_writes_are_retried_until_complete(tmp_path: Path) -> None:
    calls: list[int] = []

    def dribble(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        return os.write(fd, bytes(data[:3]))

    segment = Segment.create(tmp_path, 1, FakeClock(), FileOps(write=dribble))
    data = lines("alpha", "beta")
    segment.append(data)

    assert segment.path.read_bytes() == data
    assert len(calls) == -(-len(data) // 3)


def test_disk_full_mid_write_truncates_back_to_previous_size(tmp_path: Path) -> None:
    full = False

    def write(fd: int, data: bytes | memoryview) -> int:
        if not full:
            return os.write(fd, data)
        # Like a real disk filling up: part of the data lands, then ENOSPC.
        os.write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    segment = Segment.create(tmp_path, 1, FakeClock(), FileOps(write=write))
    segment.append(lines("kept"))
    full = True

    with pytest.raises(StorageUnavailable, match="No space left"):
        segment.append(lines("lost-1", "lost-2"))

    assert segment.size == len(lines("kept"))
    assert segment.path.read_bytes() == lines("kept")


def test_write_that_makes_no_progress_is_undone(tmp_path: Path) -> None:
    def stuck(fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, bytes(data[:5])) if len(data) > 5 else 0

    segment = Segment.create(tmp_path, 1, FakeClock(), FileOps(write=stuck))
    with pytest.raises(StorageUnavailable):
        segment.append(lines("never"))
    assert segment.path.read_bytes() == b""


def test_append_to_an_unlinked_file_is_storage_unavailable(tmp_path: Path) -> None:
    segment = Segment.create(tmp_path, 1, FakeClock())
    segment.path.unlink()
    with pytest.raises(StorageUnavailable, match="deleted"):
        segment.append(lines("orphan"))


def test_fsync_of_an_unlinked_file_is_storage_unavailable(tmp_path: Path) -> None:
    segment = Segment.create(tmp_path, 1, FakeClock())
    segment.append(lines("a"))
    segment.path.unlink()
    with pytest.raises(StorageUnavailable, match="deleted"):
        segment.fsync()


def test_failed_fsync_on_seal_closes_and_keeps_open_name(tmp_path: Path) -> None:
    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    segment = Segment.create(tmp_path, 3, FakeClock(), FileOps(fsync=broken))
    segment.append(lines("a"))
    with pytest.raises(StorageUnavailable, match="Input/output error"):
        segment.seal()
    assert segment.closed
    assert (tmp_path / segment_name(3, sealed=False)).exists()
    assert not (tmp_path / segment_name(3, sealed=True)).exists()


# --- recovery -----------------------------------------------------------------------------------


def test_recover_cuts_a_torn_tail_and_seals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = lines("a", "b", "c")
    torn = b'{"event_type":"d","par'
    path = tmp_path / segment_name(11, sealed=False)
    path.write_bytes(good + torn)

    with caplog.at_level(logging.WARNING):
        sealed, removed = recover_open_segment(path)

    assert sealed == tmp_path / segment_name(11, sealed=True)
    assert removed == len(torn)
    assert sealed.read_bytes() == good
    assert not path.exists()
    assert f"removed {len(torn)} bytes" in caplog.text


def test_recover_finds_the_last_newline_across_read_chunks(tmp_path: Path) -> None:
    good = lines("a") * 10
    torn = b"x" * (200 * 1024)  # much longer than one backward read
    path = tmp_path / segment_name(12, sealed=False)
    path.write_bytes(good + torn)

    sealed, removed = recover_open_segment(path)

    assert removed == len(torn)
    assert sealed is not None
    assert sealed.read_bytes() == good


def test_recover_intact_file_removes_nothing(tmp_path: Path) -> None:
    path = tmp_path / segment_name(13, sealed=False)
    path.write_bytes(lines("a", "b"))
    sealed, removed = recover_open_segment(path)
    assert removed == 0
    assert sealed is not None
    assert sealed.read_bytes() == lines("a", "b")


@pytest.mark.parametrize("content", [b"", b'{"event_type":"no newline'])
def test_recover_deletes_a_file_without_a_complete_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / segment_name(14, sealed=False)
    path.write_bytes(content)

    sealed, removed = recover_open_segment(path)

    assert sealed is None
    assert removed == len(content)
    assert list(tmp_path.iterdir()) == []


def test_recover_refuses_a_sealed_name(tmp_path: Path) -> None:
    path = tmp_path / segment_name(15, sealed=True)
    path.write_bytes(lines("a"))
    with pytest.raises(ValueError):
        recover_open_segment(path)
    assert path.read_bytes() == lines("a")
