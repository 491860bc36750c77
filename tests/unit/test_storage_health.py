"""storage_problem: /healthz says 503 for a full disk or a read-only mount before a write fails."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from collector.storage.health import storage_problem


def fake_statvfs(monkeypatch: pytest.MonkeyPatch, *, free_blocks: int, flags: int = 0) -> None:
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(
        f_flag=flags, f_bavail=free_blocks, f_frsize=4096))


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
