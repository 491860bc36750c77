"""storage_problem: /healthz says 503 for a full disk or a read-only mount before a write fails."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from collector.storage.health import storage_problem


def fake_statvfs(monkeypatch: pytest.MonkeyPatch, *, free_blocks: int, flags: int = 0) -> None:
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(
        f_flag=flags, f_bavail=free_blocks, f_bfree=free_blocks, f_blocks=10**6,
        f_frsize=4096))


def test_a_writable_disk_with_room_is_fine(tmp_path: Path) -> None:
    assert storage_problem(tmp_path) is None


def test_a_full_disk_is_reported_with_what_is_free(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fake_statvfs(monkeypatch, free_blocks=10)
    reason = storage_problem(tmp_path)
    assert reason is not None and "is full (40960 bytes free)" in reason
    fake_statvfs(monkeypatch, free_blocks=50)  # 200 KiB: still takes most requests
    assert storage_problem(tmp_path) is None


def test_a_read_only_mount_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_statvfs(monkeypatch, free_blocks=10**6, flags=os.ST_RDONLY)
    reason = storage_problem(tmp_path)
    assert reason is not None and "read-only filesystem" in reason


def test_a_directory_not_created_yet_is_judged_by_its_parent(tmp_path: Path) -> None:
    assert storage_problem(tmp_path / "segments" / "deeper") is None


def test_a_filesystem_that_reports_no_sizes_is_not_called_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(
        f_flag=0, f_bavail=0, f_bfree=0, f_blocks=0, f_frsize=4096))
    assert storage_problem(tmp_path) is None


def test_root_counts_the_blocks_reserved_for_it(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(
        f_flag=0, f_bavail=0, f_bfree=10**5, f_blocks=10**6, f_frsize=4096))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert storage_problem(tmp_path) is None
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert storage_problem(tmp_path) is not None
