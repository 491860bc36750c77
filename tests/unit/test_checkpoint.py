"""The loader's durable position: round trip, atomic replacement, refusal of a foreign file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loader.checkpoint import Checkpoint, Position, parse_stream_name, stream_name, stream_of
from tests.fixtures.store import make_id


def test_missing_file_means_no_positions(tmp_path: Path) -> None:
    assert Checkpoint(tmp_path / "cp.json").load() == {}


def test_round_trip_keeps_every_stream(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "sub" / "cp.json")
    positions = {(0, 0): Position(make_id(1_700_000_000_000), 123),
                 (3, 31): Position(make_id(1_700_000_000_001, 3, 31), 0)}
    cp.save(positions)
    assert Checkpoint(cp.path).load() == positions


def test_save_replaces_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "cp.json")
    cp.save({(0, 1): Position(5, 10)})
    cp.save({(0, 1): Position(5, 20)})
    assert cp.load() == {(0, 1): Position(5, 20)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cp.json"]


def test_failed_save_leaves_the_previous_position(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cp = Checkpoint(tmp_path / "cp.json")
    cp.save({(0, 1): Position(5, 10)})

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        cp.save({(0, 1): Position(5, 99)})
    monkeypatch.undo()
    # The rename is the commit point: before it, readers still see the old file, whole.
    assert cp.load() == {(0, 1): Position(5, 10)}


def test_torn_temporary_file_is_ignored(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "cp.json")
    cp.save({(0, 1): Position(5, 10)})
    (tmp_path / "cp.json.tmp").write_bytes(b'{"version": 1, "streams": {"0-1": {"segm')
    assert cp.load() == {(0, 1): Position(5, 10)}


def test_unreadable_checkpoint_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "cp.json"
    path.write_text("not json")
    with pytest.raises(ValueError, match="move it away"):
        Checkpoint(path).load()


def test_stream_of_reads_datacenter_and_worker_bits() -> None:
    for dc, worker in [(0, 0), (1, 2), (31, 31), (17, 4)]:
        assert stream_of(make_id(1_700_000_000_123, dc, worker, seq=4095)) == (dc, worker)


def test_stream_names_round_trip() -> None:
    assert parse_stream_name(stream_name((3, 17))) == (3, 17)
