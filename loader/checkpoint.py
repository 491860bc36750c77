"""The loader's durable position: one (segment, byte offset) per stream.

A stream is the ordered sequence of segment files of one writer, identified by the
(datacenter, worker) bits of the Snowflake IDs in its file names: several collector worker
processes write into one directory, each its own files, so IDs only increase within a stream.
The position names the segment by its first ID and counts the bytes of whole lines already
loaded from it.

Invariant: the file is replaced only after the batch it describes is committed to the store, so
it never points past a committed event; it may point before some (a crash between the commit
and the rename), and the replay of those lines inserts nothing because the store is idempotent
on the Snowflake ID. Replacement is atomic (write a temporary file, fsync it, rename it over the
old one): a reader sees the old position or the new one, never a torn file. The directory is
not fsynced after the rename: if a power loss forgets the rename, the old position comes back,
and replaying from an older position is always safe; that saves one fsync per batch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

StreamKey = tuple[int, int]
"""(datacenter, worker) of a segment stream."""

FORMAT_VERSION = 1


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
