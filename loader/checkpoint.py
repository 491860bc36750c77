"""The loader's durable position: one (segment, byte offset) per stream.

A stream is the ordered sequence of segment files of one writer, identified by the
(datacenter, worker) bits of the Snowflake IDs in its file names: several collector worker
processes write into one directory, each its own files, so IDs only increase within a stream.
The position names the segment by its first ID and counts the bytes of whole lines already
loaded from it.

Invariant: a position is never durable ahead of the events before it, so it never points past
a committed event. It may point before some; the replay of those lines inserts nothing because
the store is idempotent on the Snowflake ID. Two places keep it:

- `StoreCheckpoint`: in the event store itself, written in the transaction that inserts the
  batch (the SQLite store's loader_position table). Events and position commit or vanish
  together, whatever the crash, so the store needs no fsync per commit (see
  loader/stores/sqlite.py, "Durability").
- `Checkpoint`: a JSON file beside the data, for stores without such transactions (MongoDB).
  It is replaced only after the batch is committed. Replacement is atomic (write a temporary
  file, fsync it, rename it over the old one): a reader sees the old position or the new one,
  never a torn file. The directory is not fsynced after the rename: if a power loss forgets the
  rename, the old position comes back, and replaying from an older position is always safe;
  that saves one fsync per batch.

Both offer the same methods to the daemon: `load`, `save` (positions alone), `commit` (a batch
and the positions after it), `sync` and `describe`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

import orjson

if TYPE_CHECKING:
    from loader.stores.base import EventStore

StreamKey = tuple[int, int]
"""(datacenter, worker) of a segment stream."""

FORMAT_VERSION = 1

IsEvent = Callable[[Any], bool]
"""The loader's rule for a parsed segment line that is a loadable event (daemon.is_event)."""


class Committed(NamedTuple):
    """What committing one batch of parsed lines did."""

    ids: list[Any]
    """Snowflake ids (decimal strings or ints) of the events loaded, in the order inserted."""
    inserted: int
    """How many of them were new to the store."""
    bad: int
    """Parsed objects that were not events (skipped)."""


@dataclass(frozen=True, slots=True, order=True)
class Position:
    segment: int
    """First Snowflake ID of the segment (its file name)."""
    offset: int
    """Bytes of whole lines loaded from that segment; always just after a newline (or 0)."""


def stream_of(snowflake: int) -> StreamKey:
    """(datacenter, worker) bits of a Snowflake ID (SPEC §4: 5 + 5 bits above the sequence)."""
    return (snowflake >> 17) & 31, (snowflake >> 12) & 31


def stream_name(key: StreamKey) -> str:
    return f"{key[0]}-{key[1]}"


def parse_stream_name(name: str) -> StreamKey:
    dc, _, worker = name.partition("-")
    return int(dc), int(worker)


class Checkpoint:
    """Load and atomically replace the positions file.

    Not shared between processes: the loader lock (loader/lock.py) makes the daemon its only
    writer.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return str(self.path)

    def commit(self, store: EventStore, objects: list[Any], positions: Mapping[StreamKey, Position],
               is_event: IsEvent) -> Committed:
        """Insert the events among `objects` (parsed lines), then save the positions after
        them: the file never runs ahead of the store."""
        events = [e for e in objects if is_event(e)]
        inserted = store.insert_batch(events) if events else 0
        self.save(positions)
        return Committed([e["id"] for e in events], inserted, len(objects) - len(events))

    def sync(self) -> None:
        """Nothing to do: each save is fsynced, and it only follows commits of the store."""

    def load(self) -> dict[StreamKey, Position]:
        """The saved positions; empty when there is no file yet.

        Raises:
            ValueError: the file exists but is not a positions file (it is never torn by the
                loader itself, so this means someone else wrote it: refuse rather than reload
                everything or skip data silently).
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            doc = orjson.loads(raw)
            streams = doc["streams"]
            return {
                parse_stream_name(name): Position(int(p["segment"]), int(p["offset"]))
                for name, p in streams.items()
            }
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"loader checkpoint {self.path} is unreadable ({e}); move it away to reload "
                "every segment still on disk (the store ignores events it already holds)"
            ) from None

    def save(self, positions: Mapping[StreamKey, Position]) -> None:
        """Atomically replace the file with `positions` (data fsynced before the rename)."""
        doc = {
            "version": FORMAT_VERSION,
            "streams": {
                stream_name(k): {"segment": f"{p.segment:020d}", "offset": p.offset}
                for k, p in sorted(positions.items())
            },
        }
        data = orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)


@runtime_checkable
class PositionStore(Protocol):
    """An event store that keeps the loader's positions in its own transactions."""

    def insert_parsed(self, objects: list[Any], *, is_event: IsEvent | None,
                      positions: Mapping[StreamKey, Position] | None = None) -> Committed: ...

    def load_positions(self) -> dict[StreamKey, Position]: ...

    def save_positions(self, positions: Mapping[StreamKey, Position]) -> None: ...

    def sync(self) -> None: ...


class StoreCheckpoint:
    """The positions kept by the event store, committed with each batch (module docstring)."""

    def __init__(self, store: PositionStore, where: str) -> None:
        self.store = store
        self._where = where

    def describe(self) -> str:
        return self._where

    def load(self) -> dict[StreamKey, Position]:
        return self.store.load_positions()

    def save(self, positions: Mapping[StreamKey, Position]) -> None:
        self.store.save_positions(positions)

    def commit(self, store: object, objects: list[Any], positions: Mapping[StreamKey, Position],
               is_event: IsEvent) -> Committed:
        """Insert the events among `objects` and the positions after them in one transaction.
        `store` must be the store this checkpoint lives in."""
        if store is not self.store:
            raise ValueError("cannot commit: the positions live in another store")
        return self.store.insert_parsed(objects, is_event=is_event, positions=positions)

    def sync(self) -> None:
        """Make the committed batches and positions survive a power loss."""
        self.store.sync()
