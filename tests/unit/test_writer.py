"""The group-commit writer on real files: acknowledgement, batching, rotation, failures, probes.

Fsync is replaced by `GatedFsync`, which really fsyncs but counts calls, can fail with EIO, and
can be held in flight until the test releases it, so the tests decide what happens while an
fsync runs instead of racing it. Time is a FakeClock; no test sleeps or asserts on timing.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector.errors import StorageUnavailable
from collector.storage.segment import FileOps, segment_name
from collector.storage.segment_log import SegmentLog, list_segments
from collector.storage.writer import SegmentWriter
from tests.fakes import FakeClock

DATACENTER, WORKER = 1, 2


def snowflake(n: int) -> int:
    return ((1_000_000 + n) << 22) | (DATACENTER << 17) | (WORKER << 12)


def line(n: int) -> bytes:
    return f'{{"id":"{snowflake(n)}","event_type":"e{n}"}}\n'.encode()


class GatedFsync:
    """An fsync that counts calls, may fail, and can be held until `release()`."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.started = threading.Event()
        self._gate = threading.Event()
        self._gate.set()
        self._lock = threading.Lock()

    def hold(self) -> None:
        self.started.clear()
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, 10), "no fsync started"

    def __call__(self, fd: int) -> None:
        with self._lock:
            self.calls += 1
        self.started.set()
        if not self._gate.wait(10):
            raise AssertionError("the test never released the fsync")
        if self.fail:
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)


class DiskFullWrite:
    """os.write until `full`; then writes half of the data and raises ENOSPC, like a real disk."""

    def __init__(self) -> None:
        self.full = False

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        if not self.full:
            return os.write(fd, data)
        os.write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")


def make_writer(
    directory: Path,
    clock: FakeClock,
    durability: str,
    *,
    ops: FileOps | None = None,
    roll_bytes: int = 1 << 20,
    roll_seconds: float = 60.0,
    fsync_max_delay: float = 0.0,
    probe_interval: float = 1.0,
) -> SegmentWriter:
    log = SegmentLog(
        directory, DATACENTER, WORKER, roll_bytes, roll_seconds, clock, ops=ops or FileOps()
    )
    log.recover()
    return SegmentWriter(
        log, durability, asyncio.get_running_loop(), clock,
        fsync_max_delay=fsync_max_delay, probe_interval=probe_interval,
    )


async def settle(futures: list[asyncio.Future[None] | None]) -> list[BaseException | None]:
    """Wait for the writer's verdict on every future; a future never resolved fails the test."""
    waiting = [f for f in futures if f is not None]
    assert len(waiting) == len(futures), "fsync durability returns a future per write"
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 10)
    return [r if isinstance(r, BaseException) else None for r in results]


async def wait_until(done: Callable[[], bool], what: str, guard: float = 10.0) -> None:
    """Poll `done` on the loop until it holds; fail after `guard` seconds of wall time. Seal
    and fsync jobs run real fsyncs in the executor, which a busy disk can hold for seconds (a
    fixed number of short sleeps ran out under CI-like disk load, 8 times in 15)."""
    deadline = time.monotonic() + guard
    while not done():
        assert time.monotonic() < deadline, f"{what} did not happen within {guard} s"
        await asyncio.sleep(0.01)


def stored(directory: Path) -> bytes:
    return b"".join(info.path.read_bytes() for info in list_segments(directory))


def open_files(directory: Path) -> list[str]:
    return [info.path.name for info in list_segments(directory) if not info.sealed]


@pytest.fixture
def seg_dir(tmp_path: Path) -> Path:
    return tmp_path / "segments"


# --- durability "os" ----------------------------------------------------------------------------


async def test_os_mode_acknowledges_synchronously_without_threads(
    seg_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_threads(*args: Any) -> None:
        raise AssertionError("os durability must not use the executor to acknowledge")

    monkeypatch.setattr(asyncio.get_running_loop(), "run_in_executor", no_threads)
    writer = make_writer(seg_dir, FakeClock(), "os")

    assert writer.write(line(0), snowflake(0)) is None
    assert writer.write(line(1) + line(2), snowflake(1)) is None

    assert (seg_dir / segment_name(snowflake(0), sealed=False)).read_bytes() == (
        line(0) + line(1) + line(2)
    )
    assert writer.bytes_written == len(line(0) + line(1) + line(2))


async def test_os_mode_rolls_by_size_and_seals_off_the_loop(seg_dir: Path) -> None:
    writer = make_writer(seg_dir, FakeClock(), "os", roll_bytes=2 * len(line(0)))
    for n in range(5):
        assert writer.write(line(n), snowflake(n)) is None  # acknowledged at once
    # The full segments are detached at once (new writes go to a new file) and sealed by a
    # commit job in the executor, not on the loop thread.
    assert [i.sealed for i in list_segments(seg_dir)] == [False, False, False]
    await wait_until(lambda: writer.segments_rolled == 2, "sealing the two full segments")

    infos = list_segments(seg_dir)
    assert [(i.first_id, i.sealed) for i in infos] == [
        (snowflake(0), True), (snowflake(2), True), (snowflake(4), False),
    ]
    assert writer.segments_rolled == 2
    assert stored(seg_dir) == b"".join(line(n) for n in range(5))


@pytest.mark.parametrize("durability", ["os", "fsync"])
async def test_tick_rolls_by_age(seg_dir: Path, durability: str) -> None:
    clock = FakeClock()
    writer = make_writer(seg_dir, clock, durability, roll_seconds=60.0)
    writer.write(line(0), snowflake(0))

    clock.advance(59.0)
    writer.tick()
    await asyncio.sleep(0)
    assert open_files(seg_dir) == [segment_name(snowflake(0), sealed=False)]

    clock.advance(1.0)
    writer.tick()
    await writer.close()  # waits for the fsync-mode seal job; nothing left to seal after it
    assert [(i.first_id, i.sealed) for i in list_segments(seg_dir)] == [(snowflake(0), True)]
    assert writer.segments_rolled == 1


# --- durability "fsync": group commit -----------------------------------------------------------


async def test_fsync_mode_concurrent_writes_share_one_fsync(seg_dir: Path) -> None:
    fsync = GatedFsync()
    writer = make_writer(seg_dir, FakeClock(), "fsync", ops=FileOps(fsync=fsync))

    futures = [writer.write(line(n), snowflake(n)) for n in range(100)]
    assert await settle(futures) == [None] * 100

    assert fsync.calls == 1
    assert writer.fsyncs == 1
    assert stored(seg_dir) == b"".join(line(n) for n in range(100))


async def test_fsync_mode_gathers_during_max_delay(seg_dir: Path) -> None:
    fsync = GatedFsync()
    writer = make_writer(
        seg_dir, FakeClock(), "fsync", ops=FileOps(fsync=fsync), fsync_max_delay=0.001
    )
    futures = [writer.write(line(n), snowflake(n)) for n in range(10)]
    assert await settle(futures) == [None] * 10
    assert fsync.calls == 1


async def test_fsync_mode_acknowledges_only_after_the_fsync_completes(seg_dir: Path) -> None:
    fsync = GatedFsync()
    writer = make_writer(seg_dir, FakeClock(), "fsync", ops=FileOps(fsync=fsync))
    fsync.hold()

    future = writer.write(line(0), snowflake(0))
    assert future is not None
    await fsync.wait_started()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not future.done()

    fsync.release()
    assert await settle([future]) == [None]
    assert fsync.calls == 1


async def test_writes_during_an_inflight_fsync_share_the_next_one(seg_dir: Path) -> None:
    fsync = GatedFsync()
    writer = make_writer(seg_dir, FakeClock(), "fsync", ops=FileOps(fsync=fsync))
    fsync.hold()
    first = writer.write(line(0), snowflake(0))
    await fsync.wait_started()

    later = [writer.write(line(n), snowflake(n)) for n in range(1, 21)]
    fsync.release()
    assert await settle([first, *later]) == [None] * 21

    assert fsync.calls == 2
    assert writer.fsyncs == 2


async def test_fsync_error_fails_every_waiter_and_refuses_writes(seg_dir: Path) -> None:
    fsync = GatedFsync()
    writer = make_writer(seg_dir, FakeClock(), "fsync", ops=FileOps(fsync=fsync))
    fsync.hold()
    covered = [writer.write(line(n), snowflake(n)) for n in range(3)]
    await fsync.wait_started()
    # Appended while the failing fsync runs: an fsync error may have dropped these pages too.
    during = [writer.write(line(n), snowflake(n)) for n in range(3, 5)]
    fsync.fail = True
    fsync.release()

    results = await settle(covered + during)

    assert all(isinstance(r, StorageUnavailable) for r in results)
    assert not writer.available
    assert writer.last_error is not None and "Input/output error" in writer.last_error
    calls, size = fsync.calls, len(stored(seg_dir))
    with pytest.raises(StorageUnavailable, match="unavailable"):
        writer.write(line(9), snowflake(9))
    assert (fsync.calls, len(stored(seg_dir))) == (calls, size)  # refused without touching disk
    assert writer.writes_refused == 1


async def test_rotation_during_a_pending_fsync_keeps_every_byte(seg_dir: Path) -> None:
    fsync = GatedFsync()
    writer = make_writer(
        seg_dir, FakeClock(), "fsync", ops=FileOps(fsync=fsync), roll_bytes=3 * len(line(0))
    )
    fsync.hold()
    futures = [writer.write(line(0), snowflake(0))]
    await fsync.wait_started()  # an fsync on the first segment is now in flight
    # Fill the first segment past roll_bytes and start the second, all during that fsync.
    futures += [writer.write(line(n), snowflake(n)) for n in range(1, 5)]
    fsync.release()
    assert await settle(futures) == [None] * 5
    await writer.close()

    infos = list_segments(seg_dir)
    assert [(i.first_id, i.sealed) for i in infos] == [(snowflake(0), True), (snowflake(3), True)]
    assert infos[0].path.read_bytes() == line(0) + line(1) + line(2)
    assert infos[1].path.read_bytes() == line(3) + line(4)


# --- failures and the unavailable state ---------------------------------------------------------


async def test_disk_full_leaves_no_partial_write_and_refuses(seg_dir: Path) -> None:
    write = DiskFullWrite()
    writer = make_writer(seg_dir, FakeClock(), "os", ops=FileOps(write=write))
    writer.write(line(0), snowflake(0))
    write.full = True

    with pytest.raises(StorageUnavailable, match="No space left"):
        writer.write(line(1) + line(2), snowflake(1))

    assert stored(seg_dir) == line(0)
    assert not writer.available
    assert writer.write_errors == 1
    with pytest.raises(StorageUnavailable):
        writer.write(line(3), snowflake(3))
    assert stored(seg_dir) == line(0)


async def test_disk_full_in_fsync_mode_still_commits_earlier_requests(seg_dir: Path) -> None:
    write = DiskFullWrite()
    writer = make_writer(seg_dir, FakeClock(), "fsync", ops=FileOps(write=write))
    earlier = writer.write(line(0), snowflake(0))
    write.full = True
    with pytest.raises(StorageUnavailable):
        writer.write(line(1), snowflake(1))

    # Its bytes were appended whole before the disk filled: the seal makes them durable.
    assert await settle([earlier]) == [None]
    assert [(i.first_id, i.sealed) for i in list_segments(seg_dir)] == [(snowflake(0), True)]
    assert stored(seg_dir) == line(0)


async def test_removed_directory_is_unavailable_until_a_probe_succeeds(seg_dir: Path) -> None:
    clock = FakeClock()
    writer = make_writer(seg_dir, clock, "os", probe_interval=1.0)
    writer.write(line(0), snowflake(0))
    shutil.rmtree(seg_dir)

    with pytest.raises(StorageUnavailable, match="deleted"):
        writer.write(line(1), snowflake(1))
    assert not writer.available

    seg_dir.mkdir()
    clock.advance(0.5)
    with pytest.raises(StorageUnavailable):  # no probe before probe_interval has passed
        writer.write(line(2), snowflake(2))
    assert list(seg_dir.iterdir()) == []

    clock.advance(0.5)
    assert writer.write(line(3), snowflake(3)) is None
    assert writer.available and writer.last_error is None
    assert (seg_dir / segment_name(snowflake(3), sealed=False)).read_bytes() == line(3)


async def test_tick_probe_recreates_a_removed_directory(seg_dir: Path) -> None:
    clock = FakeClock()
    writer = make_writer(seg_dir, clock, "os", probe_interval=1.0)
    writer.write(line(0), snowflake(0))
    shutil.rmtree(seg_dir)
    with pytest.raises(StorageUnavailable):
        writer.write(line(1), snowflake(1))

    writer.tick()
    assert not writer.available
    clock.advance(1.0)
    writer.tick()

    assert writer.available
    assert seg_dir.is_dir()


@pytest.mark.parametrize("durability", ["os", "fsync"])
async def test_a_moved_directory_is_noticed_by_the_tick(seg_dir: Path, durability: str) -> None:
    """A rename keeps the open file's link count: appends would go on into a directory the
    loader does not read. The tick compares the segment's path with the open file."""
    clock = FakeClock()
    writer = make_writer(seg_dir, clock, durability, probe_interval=1.0)
    first = writer.write(line(0), snowflake(0))
    if first is not None:
        assert await settle([first]) == [None]
    writer.tick()
    assert writer.available  # nothing moved yet: the check passes
    moved = seg_dir.with_name("moved")
    seg_dir.rename(moved)

    writer.tick()
    assert not writer.available and "moved or removed" in (writer.last_error or "")
    with pytest.raises(StorageUnavailable):
        writer.write(line(1), snowflake(1))
    deadline = time.monotonic() + 10.0  # (real fsyncs: see wait_until)
    while time.monotonic() < deadline:  # (fsync: the probe waits for the seal job of the moved
        clock.advance(1.0)  # segment, whose failure, its path being gone, restarts the probe
        writer.tick()  # interval) the probe makes the configured directory again
        if writer.available:
            break
        await asyncio.sleep(0.01)
    assert writer.available and seg_dir.is_dir()
    later = writer.write(line(2), snowflake(2))
    if later is not None:
        assert await settle([later]) == [None]
    assert stored(seg_dir) == line(2)
    assert stored(moved) == line(0)  # acknowledged before the move: where the operator put it


async def test_a_replaced_directory_is_noticed_by_the_tick(seg_dir: Path) -> None:
    writer = make_writer(seg_dir, FakeClock(), "os", probe_interval=1.0)
    writer.write(line(0), snowflake(0))
    seg_dir.rename(seg_dir.with_name("old"))
    seg_dir.mkdir()
    (seg_dir / segment_name(snowflake(0), sealed=False)).write_bytes(b"")  # same name, new file
    writer.tick()
    assert not writer.available and "another file" in (writer.last_error or "")


async def test_a_directory_swapped_for_a_copy_fails_the_waiting_requests(seg_dir: Path) -> None:
    """The copy holds the segment's name but not the bytes appended after the copy was made:
    sealing it would acknowledge them. The seal renames only the file it wrote."""
    writer = make_writer(seg_dir, FakeClock(), "fsync", fsync_max_delay=2.0)
    waiting = writer.write(line(0), snowflake(0))  # appended; its commit starts in 2 s
    copy = seg_dir.with_name("copy")
    shutil.copytree(seg_dir, copy)
    seg_dir.rename(seg_dir.with_name("original"))
    copy.rename(seg_dir)
    writer.tick()
    (result,) = await settle([waiting])
    assert isinstance(result, StorageUnavailable), result
    assert open_files(seg_dir) == [segment_name(snowflake(0), sealed=False)]  # not sealed


async def test_fsync_of_a_segment_deleted_under_us_fails_its_waiters(seg_dir: Path) -> None:
    fsync = GatedFsync()
    writer = make_writer(seg_dir, FakeClock(), "fsync", ops=FileOps(fsync=fsync))
    fsync.hold()
    future = writer.write(line(0), snowflake(0))
    await fsync.wait_started()
    shutil.rmtree(seg_dir)
    fsync.release()

    [error] = await settle([future])
    assert isinstance(error, StorageUnavailable) and "deleted" in str(error)
    assert not writer.available


async def test_probe_seals_the_abandoned_segment(seg_dir: Path) -> None:
    fsync = GatedFsync()
    clock = FakeClock()
    writer = make_writer(seg_dir, clock, "fsync", ops=FileOps(fsync=fsync))
    fsync.fail = True
    [error] = await settle([writer.write(line(0), snowflake(0))])
    assert isinstance(error, StorageUnavailable)
    assert open_files(seg_dir) == [segment_name(snowflake(0), sealed=False)]

    fsync.fail = False
    clock.advance(1.0)
    writer.tick()

    assert writer.available
    assert open_files(seg_dir) == []


async def test_storage_error_is_logged_once_per_incident(
    seg_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    writer = make_writer(seg_dir, clock, "os", probe_interval=1.0)
    caplog.set_level(logging.WARNING, logger="collector.storage")

    def fail_once_more() -> None:
        writer.write(line(0), snowflake(0))
        shutil.rmtree(seg_dir)
        seg_dir.parent.joinpath("segments").write_bytes(b"a file where the directory was")
        with pytest.raises(StorageUnavailable):
            writer.write(line(1), snowflake(1))

    fail_once_more()
    for _ in range(3):  # refused writes and failed probes log nothing new
        with pytest.raises(StorageUnavailable):
            writer.write(line(2), snowflake(2))
        clock.advance(1.0)
        writer.tick()
    assert not writer.available
    assert [r.levelno for r in caplog.records] == [logging.ERROR]

    seg_dir.unlink()
    clock.advance(1.0)
    writer.tick()
    assert writer.available
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.WARNING]

    fail_once_more()  # a new incident is logged again
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.WARNING, logging.ERROR]


async def test_several_failures_of_one_incident_log_one_error(
    seg_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write, fsync = DiskFullWrite(), GatedFsync()
    writer = make_writer(seg_dir, FakeClock(), "fsync", ops=FileOps(write=write, fsync=fsync))
    caplog.set_level(logging.WARNING, logger="collector.storage")
    earlier = writer.write(line(0), snowflake(0))
    write.full = fsync.fail = True

    with pytest.raises(StorageUnavailable):  # failure 1: the append
        writer.write(line(1), snowflake(1))
    [error] = await settle([earlier])  # failure 2: the seal that should have covered line 0

    assert isinstance(error, StorageUnavailable)
    assert writer.write_errors == 2
    assert [r.levelno for r in caplog.records] == [logging.ERROR]


# --- shutdown -----------------------------------------------------------------------------------


@pytest.mark.parametrize("durability", ["os", "fsync"])
async def test_close_seals_and_resolves_pending_writes(seg_dir: Path, durability: str) -> None:
    writer = make_writer(seg_dir, FakeClock(), durability, fsync_max_delay=10.0)
    futures = [writer.write(line(n), snowflake(n)) for n in range(3)]

    await writer.close()

    pending = [f for f in futures if f is not None]
    assert all(f.done() and f.exception() is None for f in pending)
    assert [(i.first_id, i.sealed) for i in list_segments(seg_dir)] == [(snowflake(0), True)]
    assert stored(seg_dir) == line(0) + line(1) + line(2)
    assert not writer.available
    with pytest.raises(StorageUnavailable, match="closed"):
        writer.write(line(3), snowflake(3))


async def test_close_waits_for_the_fsync_in_flight(seg_dir: Path) -> None:
    fsync = GatedFsync()
    writer = make_writer(seg_dir, FakeClock(), "fsync", ops=FileOps(fsync=fsync))
    fsync.hold()
    first = writer.write(line(0), snowflake(0))
    await fsync.wait_started()
    closing = asyncio.ensure_future(writer.close())
    await asyncio.sleep(0)
    assert not closing.done()

    fsync.release()
    await closing

    assert first is not None and first.done() and first.exception() is None
    assert [(i.first_id, i.sealed) for i in list_segments(seg_dir)] == [(snowflake(0), True)]


async def test_unknown_durability_is_rejected(seg_dir: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        make_writer(seg_dir, FakeClock(), "always")


# --- submit: one shared append per event-loop iteration -----------------------------------------


class CountingWrite:
    """os.write that counts its calls (the syscalls the coalescing is there to save)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        self.calls += 1
        return os.write(fd, data)


def verdicts() -> tuple[list[Any], Any]:
    """A list that records each `done(error)` call, and the factory of such callbacks."""
    seen: list[Any] = []

    def done_for(n: int) -> Any:
        return lambda error: seen.append((n, error))

    return seen, done_for


@pytest.mark.parametrize("durability", ["os", "fsync"])
async def test_submit_appends_one_iterations_requests_with_one_write(
    seg_dir: Path, durability: str
) -> None:
    counting = CountingWrite()
    writer = make_writer(seg_dir, FakeClock(), durability, ops=FileOps(write=counting))
    seen, done_for = verdicts()
    for n in range(10):
        writer.submit(line(n), snowflake(n), done_for(n))
    assert seen == [] and counting.calls == 0  # nothing is acknowledged before it is written

    await wait_until(lambda: len(seen) == 10, "acknowledging the ten requests")

    assert seen == [(n, None) for n in range(10)]  # each once, in submission order
    assert counting.calls == 1
    assert stored(seg_dir) == b"".join(line(n) for n in range(10))
    assert writer.bytes_written == len(stored(seg_dir))


async def test_write_after_submit_keeps_the_file_in_call_order(seg_dir: Path) -> None:
    writer = make_writer(seg_dir, FakeClock(), "os")
    seen, done_for = verdicts()
    writer.submit(line(0), snowflake(0), done_for(0))
    assert writer.write(line(1), snowflake(1)) is None
    await asyncio.sleep(0)
    assert seen == [(0, None)]
    assert stored(seg_dir) == line(0) + line(1)


async def test_a_failed_shared_append_fails_every_request_in_it_and_stores_nothing(
    seg_dir: Path,
) -> None:
    disk = DiskFullWrite()
    writer = make_writer(seg_dir, FakeClock(), "os", ops=FileOps(write=disk))
    writer.write(line(0), snowflake(0))
    disk.full = True
    seen, done_for = verdicts()
    for n in range(1, 4):
        writer.submit(line(n), snowflake(n), done_for(n))
    await asyncio.sleep(0)

    assert [n for n, _ in seen] == [1, 2, 3]
    assert all(isinstance(error, StorageUnavailable) for _, error in seen)
    assert stored(seg_dir) == line(0)  # the half-written shared append was cut off
    with pytest.raises(StorageUnavailable):  # and the writer refuses at once meanwhile
        writer.submit(line(4), snowflake(4), done_for(4))


async def test_close_appends_what_was_submitted_before_sealing(seg_dir: Path) -> None:
    writer = make_writer(seg_dir, FakeClock(), "os")
    seen, done_for = verdicts()
    writer.submit(line(0), snowflake(0), done_for(0))
    await writer.close()

    assert seen == [(0, None)]
    assert [i.sealed for i in list_segments(seg_dir)] == [True]
    assert stored(seg_dir) == line(0)


async def test_a_failing_callback_does_not_starve_the_others(
    seg_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = make_writer(seg_dir, FakeClock(), "os")
    seen, done_for = verdicts()

    def broken(error: Any) -> None:
        raise RuntimeError("bug in a callback")

    writer.submit(line(0), snowflake(0), broken)
    writer.submit(line(1), snowflake(1), done_for(1))
    with caplog.at_level(logging.ERROR):
        await asyncio.sleep(0)
    assert seen == [(1, None)]
    assert "callback failed" in caplog.text


async def test_flush_if_queued_answers_before_the_iteration_ends_once_enough_wait(
    seg_dir: Path,
) -> None:
    writer = make_writer(seg_dir, FakeClock(), "os")
    seen, done_for = verdicts()
    for n in range(3):
        writer.submit(line(n), snowflake(n), done_for(n))
    writer.flush_if_queued(4)
    assert seen == []  # three waiting: not enough
    writer.submit(line(3), snowflake(3), done_for(3))
    writer.flush_if_queued(4)
    assert seen == [(n, None) for n in range(4)]  # appended and answered right here
    assert stored(seg_dir) == b"".join(line(n) for n in range(4))
    await asyncio.sleep(0)  # the flush scheduled by the first submit finds nothing to do
    assert len(seen) == 4 and stored(seg_dir) == b"".join(line(n) for n in range(4))


async def test_a_bug_in_the_shared_append_still_answers_every_request(
    seg_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    writer = make_writer(seg_dir, FakeClock(), "os")
    seen, done_for = verdicts()

    def broken(data: bytes, first_id: int) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(writer, "_append", broken)
    writer.submit(line(0), snowflake(0), done_for(0))
    writer.submit(line(1), snowflake(1), done_for(1))
    with caplog.at_level(logging.ERROR):
        await asyncio.sleep(0)
    assert [n for n, _ in seen] == [0, 1]
    assert all(isinstance(error, StorageUnavailable) for _, error in seen)
    assert "failed unexpectedly" in caplog.text
