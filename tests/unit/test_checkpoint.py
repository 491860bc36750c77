"""The loader's durable position: round trip, atomic replacement, refusal of a foreign file;
the order of insert and save in a commit, and positions kept by the store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from loader.checkpoint import (
    Checkpoint,
    Committed,
    Position,
    PositionStore,
    StoreCheckpoint,
    parse_stream_name,
    stream_name,
    stream_of,
)
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


class FakeStore:
    """Records what the checkpoint asks of a store."""

    def __init__(self, cp_path: Path | None = None, fail: bool = False) -> None:
        self.cp_path = cp_path
        self.fail = fail
        self.batches: list[list[Any]] = []
        self.file_at_insert: list[bytes | None] = []
        self.positions: dict[Any, Position] = {}
        self.synced = 0

    def insert_batch(self, events: list[Any]) -> int:
        if self.cp_path is not None:
            self.file_at_insert.append(self.cp_path.read_bytes() if self.cp_path.exists()
                                       else None)
        if self.fail:
            raise OSError("store down")
        self.batches.append(events)
        return len(events) - 1

    def insert_parsed(self, objects: list[Any], *, is_event: Any,
                      positions: Any = None) -> Committed:
        if self.fail:
            raise OSError("store down")
        events = [o for o in objects if is_event(o)]
        self.batches.append(events)
        if positions is not None:
            self.positions = dict(positions)
        return Committed([e["id"] for e in events], len(events), len(objects) - len(events))

    def load_positions(self) -> dict[Any, Position]:
        return dict(self.positions)

    def save_positions(self, positions: Any) -> None:
        self.positions = dict(positions)

    def sync(self) -> None:
        self.synced += 1


def is_event(o: Any) -> bool:
    return isinstance(o, dict) and "id" in o


def test_file_checkpoint_commits_the_events_then_the_positions(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "cp.json")
    cp.save({(0, 1): Position(5, 10)})
    before = cp.path.read_bytes()
    store = FakeStore(cp.path)
    done = cp.commit(store, [{"id": "1"}, 7, {"id": "2"}], {(0, 1): Position(5, 99)},  # type: ignore[arg-type]
                     is_event)
    assert done == Committed(["1", "2"], 1, 1)
    assert store.batches == [[{"id": "1"}, {"id": "2"}]]
    assert store.file_at_insert == [before]  # still the old position while inserting
    assert cp.load() == {(0, 1): Position(5, 99)}


def test_file_checkpoint_keeps_its_position_when_the_insert_fails(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "cp.json")
    cp.save({(0, 1): Position(5, 10)})
    with pytest.raises(OSError):
        cp.commit(FakeStore(fail=True), [{"id": "1"}], {(0, 1): Position(5, 99)},  # type: ignore[arg-type]
                  is_event)
    assert cp.load() == {(0, 1): Position(5, 10)}


def test_store_checkpoint_hands_the_positions_to_the_batch(tmp_path: Path) -> None:
    store = FakeStore()
    cp = StoreCheckpoint(store, "fake store")
    assert isinstance(store, PositionStore) and cp.load() == {}
    done = cp.commit(store, [{"id": "1"}, None], {(0, 1): Position(5, 99)}, is_event)
    assert done == Committed(["1"], 1, 1)
    assert cp.load() == {(0, 1): Position(5, 99)}
    cp.save({(0, 1): Position(6, 0)})
    assert store.positions == {(0, 1): Position(6, 0)}
    cp.sync()
    assert store.synced == 1 and cp.describe() == "fake store"
    with pytest.raises(ValueError, match="another store"):
        cp.commit(FakeStore(), [], {}, is_event)
    assert not (tmp_path / "cp.json").exists()
