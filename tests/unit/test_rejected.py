"""The bounded rejected-bodies log: line format, truncation, encoding, rotation, never raising."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from collector.storage.rejected import RejectedLog
from tests.fakes import FakeClock


def make_log(
    directory: Path, clock: FakeClock, *, max_file_bytes: int = 1 << 20, max_files: int = 4,
    body_bytes: int = 1024,
) -> RejectedLog:
    return RejectedLog(directory, max_file_bytes, max_files, body_bytes, clock)


def files(directory: Path) -> list[Path]:
    return sorted(directory.glob("rejected-*.ndjson"), key=lambda p: int(p.stem.split("-")[1]))


def entries(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for p in files(directory) for line in p.read_bytes().splitlines()]


def test_record_writes_one_json_line_with_reason_and_body(tmp_path: Path) -> None:
    clock = FakeClock(start=1_700_000_000.25)
    log = make_log(tmp_path, clock)
    errors = [{"index": 0, "message": "event_type is required"}]

    log.record(
        "invalid_event", b'{"ts": 1}', errors=errors, remote="10.0.0.7", path="/api/events"
    )

    assert [p.name for p in files(tmp_path)] == [f"rejected-{clock.wall_ms()}.ndjson"]
    assert entries(tmp_path) == [{
        "at": 1_700_000_000.25, "reason": "invalid_event", "errors": errors,
        "remote": "10.0.0.7", "path": "/api/events", "body": '{"ts": 1}',
        "truncated": False, "size": 9,
    }]
    assert (log.recorded, log.failures) == (1, 0)


def test_non_utf8_body_is_kept_as_base64(tmp_path: Path) -> None:
    body = b"\x1f\x8b\x08\x00garbage\xff\xfe"
    log = make_log(tmp_path, FakeClock())
    log.record("bad_json", body)

    [entry] = entries(tmp_path)
    assert "body" not in entry
    assert base64.b64decode(entry["body_b64"]) == body
    assert entry["errors"] == []


def test_long_body_is_truncated_and_flagged(tmp_path: Path) -> None:
    body = b"x" * 5000
    log = make_log(tmp_path, FakeClock(), body_bytes=1000)
    log.record("too_large", body)

    [entry] = entries(tmp_path)
    assert entry["body"] == "x" * 1000
    assert entry["truncated"] is True
    assert entry["size"] == 5000


def test_truncation_inside_a_multibyte_character_keeps_text(tmp_path: Path) -> None:
    body = ("é" * 10).encode()  # 2 bytes each: a 5-byte cut splits the third character
    log = make_log(tmp_path, FakeClock(), body_bytes=5)
    log.record("invalid_event", body)

    [entry] = entries(tmp_path)
    assert entry["body"] == "éé"
    assert entry["truncated"] is True


def test_files_rotate_at_max_file_bytes_and_oldest_are_deleted(tmp_path: Path) -> None:
    clock = FakeClock()
    log = make_log(tmp_path, clock, max_file_bytes=300, max_files=3, body_bytes=100)
    for n in range(40):
        log.record("invalid_event", f"body number {n:03d}".encode())
        clock.advance(0.001)

    kept = files(tmp_path)
    assert len(kept) == 3
    assert all(p.stat().st_size < 300 + 200 for p in kept)  # at most one line over the budget
    bodies = [e["body"] for e in entries(tmp_path)]
    assert bodies[-1] == "body number 039"  # the newest survive ...
    assert "body number 000" not in bodies  # ... the oldest were deleted
    assert bodies == sorted(bodies)
    assert log.recorded == 40


def test_rotation_names_stay_unique_when_the_clock_stands_still(tmp_path: Path) -> None:
    log = make_log(tmp_path, FakeClock(), max_file_bytes=1, max_files=10)
    for n in range(3):
        log.record("invalid_event", str(n).encode())
    assert [e["body"] for e in entries(tmp_path)] == ["0", "1", "2"]
    assert len(files(tmp_path)) == 3


def test_a_file_deleted_by_another_worker_is_replaced(tmp_path: Path) -> None:
    log = make_log(tmp_path, FakeClock())
    log.record("invalid_event", b"first")
    for p in files(tmp_path):
        p.unlink()  # pruned by another worker

    log.record("invalid_event", b"second")

    assert [e["body"] for e in entries(tmp_path)] == ["second"]


def test_record_never_raises_and_counts_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "rejected"
    blocker.write_bytes(b"a file where the directory should be")
    log = make_log(blocker, FakeClock())

    with caplog.at_level(logging.WARNING, logger="collector.storage.rejected"):
        log.record("invalid_event", b"one")
        log.record("invalid_event", b"two")

    assert (log.recorded, log.failures) == (0, 2)
    assert len(caplog.records) == 1  # logged once, counted every time

    blocker.unlink()
    log.record("invalid_event", b"three")
    assert log.recorded == 1
    assert [e["body"] for e in entries(blocker)] == ["three"]


def test_unserialisable_error_details_are_stringified(tmp_path: Path) -> None:
    log = make_log(tmp_path, FakeClock())
    log.record("invalid_event", b"{}", errors=[{"index": 0, "value": Path("/x")}])
    [entry] = entries(tmp_path)
    assert entry["errors"] == [{"index": 0, "value": "/x"}]


def test_a_full_disk_leaves_no_torn_line_and_keeps_the_history(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    from collector.storage import rejected

    clock = FakeClock()
    log = make_log(tmp_path, clock, max_file_bytes=300, max_files=3, body_bytes=100)
    for n in range(12):
        log.record("invalid_event", f"body number {n:03d}".encode())
        clock.advance(0.001)
    history = entries(tmp_path)
    names = files(tmp_path)
    real_write = os.write

    def full_disk(fd: int, data: Any) -> int:
        if len(data) > 20:
            return real_write(fd, bytes(data)[:20])  # part of the line, then ENOSPC
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rejected.os, "write", full_disk)
    for n in range(10):
        log.record("invalid_event", f"lost {n}".encode())
        clock.advance(0.001)
    monkeypatch.undo()

    assert log.failures == 10
    assert entries(tmp_path) == history  # every line whole
    now = files(tmp_path)
    assert set(names) <= set(now)  # no file of the history pruned ...
    assert len(now) <= len(names) + 1  # ... for at most one new (empty) file
    log.record("invalid_event", b"after")
    assert entries(tmp_path)[-1]["body"] == "after"
    assert len(files(tmp_path)) == 3  # max_files again, once a line is in the new file
