"""One NDJSON segment file: the unit of the durable log (SPEC §5).

Theory of operation
-------------------
A segment is an append-only file of complete NDJSON lines, named by the Snowflake id of its first
event, zero-padded to 20 digits so that `ls` order is id order (Kafka's LogSegment naming). The
lifecycle is carried by the suffix, so that any reader can tell from the name alone whether the
file may still grow:

    <id>.ndjson.open   being written by exactly one worker process; may grow; its tail may be
                       torn if that process crashed
    <id>.ndjson        sealed: fsynced, immutable, every line complete

`Segment.create` opens the file with O_EXCL|O_APPEND; its first fsync syncs the directory, so
the name itself survives power loss. `append` hands one request's worth of lines to the kernel
with a single write (retrying short writes), and `seal` makes the file durable and immutable:
fsync, close, rename to the sealed name, fsync the directory.

Invariants
----------
* A segment never ends in a partial line once `append` has returned or raised: a failed append
  truncates the file back to the size it had before the call (the AOF rule in Redis: on a short
  or failed write, undo the partial write, refuse further writes, answer an error).
* A sealed segment is never written again.
* Only the owning worker ever writes, seals or recovers an `.open` file.

Known limits
------------
* If the undo itself fails (the disk is gone), a torn line may remain at the tail. The writer
  abandons such a segment and `recover_open_segment` cuts the torn line before it is sealed.
* Recovery trusts everything up to the last newline. A power loss on a filesystem that does not
  order data before size updates can leave NUL bytes or garbage in the middle of a file; the
  loader has to skip lines that do not parse.
* A crash in the middle of one write can leave a prefix of a request's lines (each complete)
  that was never acknowledged. The client retries and those events are stored twice unless the
  client sent an `event_id`: the log is at-least-once for unacknowledged requests.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from collector.clock import Clock
from collector.errors import StorageUnavailable

logger = logging.getLogger(__name__)

SEALED_SUFFIX = ".ndjson"
OPEN_SUFFIX = ".ndjson.open"
_NAME_RE = re.compile(r"^(\d{20})\.ndjson(\.open)?$")
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
_FILE_MODE = 0o644
_RECOVER_CHUNK = 64 * 1024


def segment_name(first_id: int, sealed: bool) -> str:
    """The file name of the segment whose first event has id `first_id`.

    Twenty digits hold any unsigned 64-bit value, so names sort like the ids they carry.
    """
    return f"{first_id:020d}{SEALED_SUFFIX if sealed else OPEN_SUFFIX}"


def parse_segment_name(name: str) -> tuple[int, bool] | None:
    """`(first_id, sealed)` for a segment file name, None for any other file."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return int(m.group(1)), m.group(2) is None


@dataclass(frozen=True, slots=True)
class FileOps:
    """The system calls through which segment data reaches the disk.

    Production uses the real `os.write` and `os.fsync`; tests pass replacements to simulate a
    full disk, a failing fsync or a slow one, and to count fsyncs. Directory fsyncs, opens and
    renames do not go through here: they are not on the paths tests need to break.
    """

    write: Callable[[int, bytes | memoryview], int] = os.write
    fsync: Callable[[int], None] = os.fsync


DEFAULT_OPS = FileOps()


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries (a create, a rename, an unlink) durable.

    Raises:
        OSError: the directory cannot be opened or synced.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


class Segment:
    """The open, append-only file of a segment, owned by one writer.

    Not thread-safe in general. The one concurrent use allowed is the group-commit writer's:
    the event-loop thread appends while one executor thread runs `fsync` (or `seal`, once the
    segment is no longer appended to) on the same descriptor.
    """

    __slots__ = ("directory", "first_id", "path", "opened_at", "_fd", "_size", "_ops",
                 "_dir_synced", "_names_checkable")

    def __init__(
        self, directory: Path, first_id: int, fd: int, opened_at: float, ops: FileOps
    ) -> None:
        self.directory = directory
        self.first_id = first_id
        self.path = directory / segment_name(first_id, sealed=False)
        self.opened_at = opened_at
        """`clock.monotonic()` at creation: the age-based roll measures from here."""
        self._fd = fd
        self._size = 0
        self._ops = ops
        self._dir_synced = False
        self._names_checkable = True
        """False where the path and the open file never compared equal (see create)."""

    @classmethod
    def create(
        cls, directory: Path, first_id: int, clock: Clock, ops: FileOps = DEFAULT_OPS
    ) -> Segment:
        """Create `<first_id>.ndjson.open` in `directory` and open it for appending.

        O_EXCL because an existing file with that name means an id was minted twice, and
        appending to it would interleave two writers. The directory is not fsynced here, on
        the event loop (with a busy disk a directory fsync waits for a journal commit, a stall
        of every connection); the first `fsync()` of the segment syncs the directory too, off
        the loop, so in "fsync" durability no acknowledged event is in a name that could be
        lost, and `seal()` syncs it after the rename.

        Raises:
            StorageUnavailable: the directory is missing or not writable, the disk is full, or
                the name already exists.
        """
        path = directory / segment_name(first_id, sealed=False)
        try:
            fd = os.open(path, _CREATE_FLAGS, _FILE_MODE)
        except OSError as exc:
            raise StorageUnavailable(f"cannot create segment {path}: {_describe(exc)}") from exc
        segment = cls(directory, first_id, fd, clock.monotonic(), ops)
        try:
            segment.check_named()
        except StorageUnavailable:
            # A filesystem whose stat and fstat disagree (some FUSE or overlay setups): the
            # check would fail at every tick and flap the writer, so it is off for this file.
            segment._names_checkable = False
            logger.warning("segment %s: stat and fstat disagree on this filesystem; a moved "
                           "segment directory will not be noticed", path)
        return segment

    @property
    def size(self) -> int:
        """Bytes appended so far (the file size, as this process wrote it)."""
        return self._size

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def append(self, data: bytes) -> None:
        """Hand `data` (complete lines) to the kernel: all of it, or none of it.

        One write in the common case, one fstat after it. The fstat catches the one failure a
        write cannot report: the file was unlinked under us (someone removed the directory), in
        which case the bytes land in an orphaned inode that no reader will ever see.

        Raises:
            StorageUnavailable: the write failed (ENOSPC, EIO, EDQUOT, EFBIG ...); the file was
                truncated back to its previous size first. Or the file no longer has a name.
        """
        fd = self._fd
        if fd < 0:
            raise StorageUnavailable(f"cannot append to {self.path.name}: segment is closed")
        before = self._size
        try:
            written = self._ops.write(fd, data)
            if written != len(data):
                self._write_rest(fd, data, written)
            nlink = os.fstat(fd).st_nlink
        except OSError as exc:
            self._undo(before)
            raise StorageUnavailable(
                f"cannot append to segment {self.path}: {_describe(exc)}"
            ) from exc
        self._size = before + len(data)
        if nlink == 0:
            raise StorageUnavailable(
                f"segment {self.path} was deleted while open (segment directory removed?)"
            )

    def check_named(self) -> None:
        """Raise unless the segment's path still names the open file.

        A removed directory shows in the file's link count (append checks it), but a renamed
        or replaced one does not: appends would go on into a file the loader never sees. The
        writer asks once a second.

        Raises:
            StorageUnavailable: the path is gone or names another file.
        """
        fd = self._fd
        if fd < 0 or not self._names_checkable:
            return
        try:
            named = os.stat(self.path)
            st = os.fstat(fd)
        except OSError as exc:
            raise StorageUnavailable(
                f"segment {self.path} is no longer there ({_describe(exc)}): was the segment "
                "directory moved or removed?") from exc
        if (named.st_dev, named.st_ino) != (st.st_dev, st.st_ino):
            raise StorageUnavailable(
                f"segment {self.path} now names another file: was the segment directory "
                "replaced?")

    def _write_rest(self, fd: int, data: bytes, written: int) -> None:
        # A regular file only writes short when the disk fills up or a signal lands mid-write;
        # retrying either finishes the job or surfaces the real error (ENOSPC) on the next call.
        view = memoryview(data)
        while written < len(data):
            n = self._ops.write(fd, view[written:])
            if n <= 0:
                raise OSError(errno.ENOSPC, "write made no progress (disk full?)")
            written += n

    def _undo(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)
        except OSError as exc:
            logger.error(
                "cannot truncate segment %s back to %d bytes after a failed write: %s; "
                "a torn line may remain until the segment is recovered",
                self.path, size, _describe(exc),
            )

    def fsync(self) -> None:
        """Make every byte appended before this call durable.

        Safe to call from an executor thread while the loop thread appends; bytes appended
        during the call may or may not be covered.

        Raises:
            StorageUnavailable: fsync failed, or the file no longer has a name (its bytes are
                durable nowhere a reader could find them).
        """
        fd = self._fd
        if fd < 0:
            raise StorageUnavailable(f"cannot fsync {self.path.name}: segment is closed")
        try:
            self._ops.fsync(fd)
            nlink = os.fstat(fd).st_nlink
            if not self._dir_synced and nlink:
                fsync_dir(self.directory)  # the new name too (see create)
                self._dir_synced = True
        except OSError as exc:
            raise StorageUnavailable(f"cannot fsync segment {self.path}: {_describe(exc)}") from exc
        if nlink == 0:
            raise StorageUnavailable(
                f"segment {self.path} was deleted while open (segment directory removed?)"
            )

    def seal(self) -> Path:
        """fsync, close, rename `.open` -> `.ndjson`, fsync the directory; return the new path.

        The descriptor is closed even when a step fails, and the file keeps its `.open` name if
        the data could not be synced, so that recovery (not a reader) decides what survives.

        Raises:
            StorageUnavailable: any step failed.
        """
        try:
            self.fsync()
            # Rename only the file written here: after the directory was swapped for a copy,
            # the name holds another file, and sealing it would stand for bytes it lacks.
            self.check_named()
        finally:
            self.close()
        sealed = self.directory / segment_name(self.first_id, sealed=True)
        try:
            os.rename(self.path, sealed)
            fsync_dir(self.directory)
        except OSError as exc:
            raise StorageUnavailable(f"cannot seal segment {self.path}: {_describe(exc)}") from exc
        self.path = sealed
        return sealed

    def close(self) -> None:
        """Close the descriptor without sealing (idempotent); the file stays `.open`."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError as exc:
                logger.warning("closing segment %s failed: %s", self.path, _describe(exc))


def recover_open_segment(path: Path) -> tuple[Path | None, int]:
    """Seal an `.open` segment left behind by a crash or an abandoned write.

    Everything after the last newline is a torn line (the write that was interrupted) and is
    cut off; what remains is a run of complete lines, which is fsynced and renamed to the sealed
    name. A file with no complete line is deleted. This is the only place where bytes that
    reached the disk are thrown away, so how many is logged.

    Returns:
        (the sealed path, or None when the file was deleted; the number of bytes removed).

    Raises:
        StorageUnavailable: the file cannot be read, truncated, synced or renamed.
    """
    parsed = parse_segment_name(path.name)
    if parsed is None or parsed[1]:
        raise ValueError(f"cannot recover {path}: not an open segment name")
    try:
        return _recover(path, parsed[0])
    except OSError as exc:
        raise StorageUnavailable(f"cannot recover segment {path}: {_describe(exc)}") from exc


def _recover(path: Path, first_id: int) -> tuple[Path | None, int]:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        keep = _complete_prefix_length(fd, size)
        if keep < size:
            os.ftruncate(fd, keep)
        if keep:
            os.fsync(fd)
    finally:
        os.close(fd)
    removed = size - keep
    if removed:
        logger.warning("segment %s: removed %d bytes of torn tail", path, removed)
    if keep == 0:
        path.unlink()
        fsync_dir(path.parent)
        return None, removed
    sealed = path.parent / segment_name(first_id, sealed=True)
    os.rename(path, sealed)
    fsync_dir(path.parent)
    return sealed, removed


def _complete_prefix_length(fd: int, size: int) -> int:
    """Length of the longest prefix that ends in b"\\n" (0 if there is none).

    Reads backwards in chunks: a torn tail is at most one request long, so this touches a few
    chunks, not the whole file.
    """
    end = size
    while end > 0:
        start = max(0, end - _RECOVER_CHUNK)
        chunk = os.pread(fd, end - start, start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        end = start
    return 0
