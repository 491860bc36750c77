"""The segments of one worker in a shared directory: the active segment, rolls and recovery.

Several worker processes (and, after a merge, several collectors) share one segment directory.
They never coordinate: each file is named by the Snowflake id of its first event, and the
datacenter and worker bits of that id say which writer owns it. A `SegmentLog` only ever creates,
seals or recovers files whose first id carries its own (datacenter, worker) pair; everything
else in the directory belongs to someone else and is left alone.

The log holds at most one active (`.open`) segment, created lazily by the first append after a
roll so that its name is the id of its first event. Rolling seals it; the next append opens the
next one. The roll decision is a pure function of size, age and limits (`should_roll`), with the
age taken from the injected clock.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from collector.clock import Clock
from collector.errors import StorageUnavailable
from collector.storage.segment import (
    DEFAULT_OPS,
    FileOps,
    Segment,
    parse_segment_name,
    recover_open_segment,
    segment_name,
)

_DATACENTER_SHIFT = 17
_WORKER_SHIFT = 12
_NODE_MASK = 0x1F


def id_node(snowflake: int) -> tuple[int, int]:
    """`(datacenter, worker)` of a Snowflake id (SPEC §4: 41 ms | 5 dc | 5 worker | 12 seq)."""
    return (snowflake >> _DATACENTER_SHIFT) & _NODE_MASK, (snowflake >> _WORKER_SHIFT) & _NODE_MASK


def open_segments(directory: Path) -> list[tuple[Path, int]]:
    """The `.open` segments in `directory` with their first id, in name (so id) order.

    Raises:
        OSError: the directory cannot be listed.
    """
    found = []
    for name in sorted(os.listdir(directory)):
        parsed = parse_segment_name(name)
        if parsed is not None and not parsed[1]:
            found.append((directory / name, parsed[0]))
    return found


def should_roll(
    size: int, age: float, roll_bytes: int, roll_seconds: float
) -> bool:
    """Whether the active segment must be sealed now.

    By size so that files stay a size the loader reads in long sequential runs and retention
    deletes in useful steps; by age so that a quiet collector still seals at least every
    `roll_seconds` and the loader's `.open` tail stays short. An empty segment never rolls by
    age: sealing it would only make an empty file.
    """
    if size >= roll_bytes:
        return True
    return size > 0 and age >= roll_seconds


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """One segment file as listed in the directory (any worker's)."""

    path: Path
    first_id: int
    sealed: bool
    size: int

    @property
    def datacenter_id(self) -> int:
        return id_node(self.first_id)[0]

    @property
    def worker_id(self) -> int:
        return id_node(self.first_id)[1]


def list_segments(directory: Path) -> list[SegmentInfo]:
    """Every segment file in `directory`, of every worker, in id (= time) order.

    Other files are ignored, and so is a missing directory (no segments yet). A file renamed
    from `.open` to sealed between the listing and its stat is skipped: the caller lists again
    on its next poll and finds it under its sealed name.
    """
    infos: list[SegmentInfo] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return infos
    for entry in entries:
        parsed = parse_segment_name(entry.name)
        if parsed is None:
            continue
        try:
            size = entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
        infos.append(SegmentInfo(Path(entry.path), parsed[0], parsed[1], size))
    infos.sort(key=lambda info: info.first_id)
    return infos


class SegmentLog:
    """The segments of ONE worker: at most one active segment, rolled by size or age.

    Args:
        directory: the shared segment directory.
        datacenter_id, worker_id: the Snowflake node of this writer; only files whose first id
            carries this pair are touched.
        roll_bytes, roll_seconds: seal the active segment once it reaches this size or age.
        clock: gives `monotonic()` for segment ages.
        ops: the write/fsync system calls (tests inject failures).
    """

    def __init__(
        self,
        directory: Path,
        datacenter_id: int,
        worker_id: int,
        roll_bytes: int,
        roll_seconds: float,
        clock: Clock,
        *,
        ops: FileOps = DEFAULT_OPS,
    ) -> None:
        if not (0 <= datacenter_id <= _NODE_MASK and 0 <= worker_id <= _NODE_MASK):
            raise ValueError(
                f"datacenter_id and worker_id must be 0..31, got {datacenter_id}, {worker_id}"
            )
        if roll_bytes <= 0 or roll_seconds <= 0:
            raise ValueError("roll_bytes and roll_seconds must be positive")
        self.directory = directory
        self.node = (datacenter_id, worker_id)
        self.roll_bytes = roll_bytes
        self.roll_seconds = roll_seconds
        self._clock = clock
        self._ops = ops
        self.active: Segment | None = None
        self.rolls = 0
        """Segments sealed by `append`/`maybe_roll`/`seal_active`."""

    def owns(self, first_id: int) -> bool:
        """Whether a segment starting at `first_id` was written by this worker."""
        return id_node(first_id) == self.node

    def recover(self) -> list[tuple[Path, int]]:
        """Seal this worker's leftover `.open` segments (not the active one).

        Called at startup, before the first append, and by the writer's probe after a storage
        error abandoned a segment. Creates the directory when it is missing.

        Returns:
            One `(.open path found, bytes removed)` per recovered file; a file that held no
            complete line was deleted rather than sealed.

        Raises:
            StorageUnavailable: the directory cannot be created or a file cannot be recovered.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            found = open_segments(self.directory)
        except OSError as exc:
            raise StorageUnavailable(
                f"cannot use segment directory {self.directory}: {exc.strerror or exc}"
            ) from exc
        active = self.active.path if self.active is not None else None
        recovered: list[tuple[Path, int]] = []
        for path, first_id in found:
            if not self.owns(first_id) or path == active:
                continue
            _, removed = recover_open_segment(path)
            recovered.append((path, removed))
        return recovered

    def append(self, data: bytes, first_id: int, *, roll: bool = True) -> None:
        """Append complete lines whose first event has id `first_id`.

        Opens a segment named `first_id` when none is active. With `roll` (the default), seals
        the segment afterwards if it reached `roll_bytes`; the group-commit writer passes
        `roll=False` and rolls itself so a seal never races its in-flight fsync.

        Raises:
            StorageUnavailable: creating, writing or sealing failed. A failed write leaves no
                partial line; the segment stays active and the caller decides what to do.
            ValueError: `first_id` belongs to another worker (a wiring bug).
        """
        segment = self.active
        if segment is None:
            if not self.owns(first_id):
                raise ValueError(
                    f"cannot open segment {segment_name(first_id, False)}: its id belongs to "
                    f"node {id_node(first_id)}, this log is node {self.node}"
                )
            segment = self.active = Segment.create(
                self.directory, first_id, self._clock, self._ops
            )
        segment.append(data)
        if roll and segment.size >= self.roll_bytes:
            self.seal_active()

    def due_for_roll(self) -> bool:
        """Whether the active segment should be sealed now (size or age)."""
        segment = self.active
        if segment is None:
            return False
        age = self._clock.monotonic() - segment.opened_at
        return should_roll(segment.size, age, self.roll_bytes, self.roll_seconds)

    def maybe_roll(self) -> bool:
        """Seal the active segment if it is due; return whether it was sealed.

        Raises:
            StorageUnavailable: sealing failed (the segment is detached and left `.open`).
        """
        if not self.due_for_roll():
            return False
        self.seal_active()
        return True

    def detach_active(self) -> Segment | None:
        """Forget the active segment without closing it and hand it to the caller.

        The next append opens a new segment. The group-commit writer uses this to seal in its
        own serialized path, after any fsync that is still running on the descriptor.
        """
        segment, self.active = self.active, None
        return segment

    def seal_active(self) -> Path | None:
        """Seal the active segment, if any, and return its sealed path.

        The segment is detached first, so even when sealing fails the next append starts a
        fresh segment instead of writing to a closed one.

        Raises:
            StorageUnavailable: sealing failed; the file keeps its `.open` name for recovery.
        """
        segment = self.detach_active()
        if segment is None:
            return None
        sealed = segment.seal()
        self.rolls += 1
        return sealed

    def probe(self) -> None:
        """Check that the directory takes durable writes again after a storage error.

        Creates the directory if it was removed, seals this worker's abandoned `.open` files
        (so the loader is not left waiting on them) and writes, syncs and deletes a small probe
        file through the same write/fsync calls as segment data.

        Raises:
            StorageUnavailable: any of it failed.
        """
        self.recover()
        path = self.directory / f".probe-{self.node[0]}-{self.node[1]}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                if self._ops.write(fd, b"\n") != 1:
                    raise OSError(0, "short write")
                self._ops.fsync(fd)
            finally:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        except OSError as exc:
            raise StorageUnavailable(
                f"segment directory {self.directory} is not writable: {exc.strerror or exc}"
            ) from exc

    def close(self) -> None:
        """Seal the active segment (graceful shutdown).

        Raises:
            StorageUnavailable: sealing failed; the file is left `.open` for the next start.
        """
        self.seal_active()
