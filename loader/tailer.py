"""Read whole lines from the segment streams, after a position.

Theory of operation. The segment directory holds `<20-digit first id>.ndjson.open` files being
written and `<20-digit first id>.ndjson` files sealed by a rename. Each writer (one
(datacenter, worker) pair, see checkpoint.stream_of) owns its own files, so the directory is a
set of independent streams, each ordered by first id. `Tailer.read(positions, max_lines)` walks
the streams from the given positions and returns at most `max_lines` whole lines together with
the positions just after them; it never changes a position itself, so the caller can commit the
lines and only then adopt the new positions (or retry from the old ones after a failure).

Invariants:
- Only whole lines are returned: bytes after the last "\n" of an `.open` file are left for a
  later call, because the writer may still be appending to that line. A sealed file always ends
  with "\n"; should one not (damaged by hand), its tail is returned as a last line rather than
  wedging the stream forever; the caller's parser rejects it if it is not a valid event.
- A stream moves to its next segment only when the current one is sealed and fully read.
- A file is opened by the name the listing last saw; when that fails it is tried under the other
  name, because an `.open` file may be sealed (renamed) at any moment. A file descriptor keeps
  reading the same inode across the rename, so a read in progress is unaffected.
- A segment that has vanished under both names (deleted by an operator) is skipped, with a
  warning, once a later segment of its stream exists; until then the stream waits.
- A stream never moves past a segment that a listing missed because it was being created or
  sealed while the directory was read: the move to a next segment at the head of a stream
  takes the earliest next segment of three listings (`Tailer._next_after`).

Known limit: a segment whose first id is below its stream's position (a writer restarted with
its clock stepped back far enough to reuse older ids) is not loaded: it is behind the cursor.

The directory listing is cached and refreshed when a stream needs news (end of a file, a missing
file) or every `refresh_interval` seconds, so a large backlog is not slowed down by listing
thousands of files per batch.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from collector.clock import Clock
from collector.storage.segment import parse_segment_name, segment_name
from loader.checkpoint import Position, StreamKey, stream_of

log = logging.getLogger(__name__)

CONFIRM_WINDOW = 600.0
"""Seconds: a next segment written to this recently before the listing may have been created
while the one before it was being sealed (see Tailer._next_after). Far longer than a seal
(an fsync of one segment) takes."""
MIN_CHUNK = 64 * 1024
MAX_CHUNK = 16 * 1024 * 1024


@dataclass(slots=True)
class SegmentRef:
    first_id: int
    sealed: bool
    size: int
    mtime: float

    def name(self, sealed: bool | None = None) -> str:
        return segment_name(self.first_id, self.sealed if sealed is None else sealed)


def scan(directory: Path) -> dict[StreamKey, list[SegmentRef]]:
    """The segments of each stream in first-id order. When both names of one segment are seen
    (a rename between two directory reads) the sealed one wins.

    Not a snapshot: a segment renamed (sealed) while the directory is read may be missing
    from the result under both names. See `Tailer._next_after` for how that is dealt with."""
    found: dict[int, SegmentRef] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return {}
    for entry in entries:
        parsed = parse_segment_name(entry.name)
        if parsed is None:
            continue
        first_id, sealed = parsed
        try:
            st = entry.stat()
            size, mtime = st.st_size, st.st_mtime
        except FileNotFoundError:
            # Renamed (sealed) or deleted since the directory was read. Kept: left out, a
            # segment being sealed would look absent, and the stream would move past it.
            # Opening tries both names; one deleted for good is skipped as vanished. (Its
            # mtime: now, as it just changed; finite, for the lag figures.)
            size, mtime = 0, time.time()
        prev = found.get(first_id)
        if prev is None or (sealed and not prev.sealed):
            found[first_id] = SegmentRef(first_id, sealed, size, mtime)
    streams: dict[StreamKey, list[SegmentRef]] = {}
    for first_id in sorted(found):
        streams.setdefault(stream_of(first_id), []).append(found[first_id])
    return streams


def _names_after(directory: Path, key: StreamKey, after: int, before: int
                 ) -> list[tuple[int, bool]]:
    """(first id, sealed) of the earliest segment of stream `key` between `after` and `before`
    (exclusive) in a names-only listing: [] or one pair."""
    best: tuple[int, bool] | None = None
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        parsed = parse_segment_name(name)
        if parsed is None:
            continue
        first_id, sealed = parsed
        if after < first_id < before and stream_of(first_id) == key and (
                best is None or first_id < best[0] or (first_id == best[0] and sealed)):
            best = (first_id, sealed)
    return [] if best is None else [best]


@dataclass(slots=True)
class Batch:
    lines: list[bytes]
    positions: dict[StreamKey, Position]
    """Every stream's position after the returned lines (unchanged streams included)."""
    streams: dict[StreamKey, int] = field(default_factory=dict)
    """Lines returned per stream."""

    @property
    def moved(self) -> bool:
        return bool(self.lines)


class Tailer:
    """Reads the streams of one segment directory; see the module docstring.

    Not thread-safe: the loader reads from one thread.
    """

    def __init__(self, directory: Path, clock: Clock, *, refresh_interval: float = 1.0) -> None:
        self.directory = directory
        self._clock = clock
        self._refresh_interval = refresh_interval
        self._listing: dict[StreamKey, list[SegmentRef]] = {}
        self._listed_at: float | None = None
        self._listed_wall = 0.0
        """Wall-clock time at which the cached listing was started (file mtimes are wall)."""
        self._avg_line = 256.0
        self._rr = 0
        self.skipped_segments = 0

    # -- listing ----------------------------------------------------------------------------
    def refresh(self) -> None:
        self._listed_wall = self._clock.time()
        self._listing = scan(self.directory)
        self._listed_at = self._clock.monotonic()

    def listing(self) -> dict[StreamKey, list[SegmentRef]]:
        """The cached listing (refreshed first if it is older than the refresh interval)."""
        if self._listed_at is None or (
            self._clock.monotonic() - self._listed_at >= self._refresh_interval
        ):
            self.refresh()
        return self._listing

    def _find(self, key: StreamKey, segment: int) -> tuple[SegmentRef | None, SegmentRef | None]:
        """The listed segment `segment` of a stream and the one after it (None when unknown)."""
        segs = self._listing.get(key, [])
        for i, ref in enumerate(segs):
            if ref.first_id == segment:
                return ref, (segs[i + 1] if i + 1 < len(segs) else None)
            if ref.first_id > segment:
                return None, ref
        return None, None

    # -- reading ----------------------------------------------------------------------------
    def read(self, positions: Mapping[StreamKey, Position], max_lines: int) -> Batch:
        """Up to `max_lines` whole lines after `positions`, and the positions after them.

        Streams without a position start at their first segment. Each stream gets an equal
        share of the batch, and the room left by streams with less to read is shared among the
        others; they are visited from a rotating start. So one stream's backlog never starves
        the others, and with several busy streams a batch holds about the same stretch of time
        of each (the store inserts a batch in id order, so that its rows land after the rows
        already loaded instead of between them).
        """
        self.listing()
        out = Batch([], dict(positions))
        keys = sorted(set(self._listing) | set(positions))
        if not keys:
            return out
        self._rr = (self._rr + 1) % len(keys)
        busy = keys[self._rr:] + keys[: self._rr]
        refreshed = [False]
        # Rounds of equal shares of the room left, among the streams that filled theirs: each
        # round ends the read or drops a stream that had less to give.
        while busy and len(out.lines) < max_lines:
            share = -(-(max_lines - len(out.lines)) // len(busy))
            busy = [key for key in busy
                    if self._fill(key, out, min(max_lines, len(out.lines) + share), refreshed)]
        return out

    def _fill(self, key: StreamKey, out: Batch, limit: int, refreshed: list[bool]) -> bool:
        """Read one stream into `out` until it holds `limit` lines; True when the stream
        stopped only because of that limit. The directory is listed again at most once per
        read(), the first time a stream needs news (`refreshed` carries that)."""
        while len(out.lines) < limit:
            status = self._read_stream(key, out, limit)
            if status == "more":
                continue
            if status == "stale" and not refreshed[0]:
                self.refresh()
                refreshed[0] = True
                continue
            return status == "full"
        return True

    def _read_stream(self, key: StreamKey, out: Batch, max_lines: int) -> str:
        """Read one segment of one stream into `out`.

        Returns "more" when the stream moved to its next segment and can go on, "stale" when a
        fresher listing might let it go on (end of data, missing file), "full" when `out` is
        full, "idle" when it is at the end of what the listing knows to exist.
        """
        pos = out.positions.get(key)
        if pos is None:
            segs = self._listing.get(key)
            if not segs:
                return "idle"
            # The first segment too may be missing from a listing taken while it was sealed.
            first = self._next_after(key, -1, segs[0])
            assert first is not None  # (segs[0] is one of the candidates)
            pos = out.positions[key] = Position(first.first_id, 0)
        ref, nxt = self._find(key, pos.segment)
        opened = self._open(ref, pos.segment)
        if opened is None:
            if nxt is not None:
                log.warning("segment %020d vanished before it was fully loaded (offset %d); "
                            "going on with %020d", pos.segment, pos.offset, nxt.first_id)
                self.skipped_segments += 1
                out.positions[key] = Position(nxt.first_id, 0)
                return "more"
            return "stale"
        fd, sealed = opened
        try:
            size = os.fstat(fd).st_size
            want = max_lines - len(out.lines)
            lines, used = self._read_lines(fd, pos.offset, size, want, sealed)
        finally:
            os.close(fd)
        if ref is not None:
            ref.sealed = sealed
            ref.size = size
        if lines:
            out.lines.extend(lines)
            out.streams[key] = out.streams.get(key, 0) + len(lines)
            out.positions[key] = pos = Position(pos.segment, pos.offset + used)
        if len(out.lines) >= max_lines:
            return "full"
        if sealed and pos.offset >= size:
            nxt = self._next_after(key, pos.segment, nxt)
            if nxt is not None:
                out.positions[key] = Position(nxt.first_id, 0)
                return "more"
            return "stale"
        return "stale" if not lines else "idle"

    def _next_after(self, key: StreamKey, segment: int, nxt: SegmentRef | None
                    ) -> SegmentRef | None:
        """The segment to move to once `segment` is sealed and fully read (or the first one,
        `segment` -1): `nxt` of the listing, or an earlier one that the listing missed.

        A directory read is not a snapshot: a segment created or renamed (sealed) while the
        directory is read may be missing from it under both names, and the writer seals a
        segment after it has created the next one. So a listing of X (sealed), Z (new) may
        lack the Y between them: moving from X to Z would skip Y for good (an audit saw 4 of
        680 segments lost so). POSIX promises a listing every entry that exists throughout it,
        and Y changes name twice at most (created, sealed), so of three listings one after
        the other at least one holds Y: the earliest next segment of the three is the one.
        Only the head of a stream changes, so the two more listings are taken only when `nxt`
        is open or was written to within CONFIRM_WINDOW of the listing: at most twice per
        segment at the head, never per segment of an old backlog.
        """
        if nxt is None or (nxt.sealed and nxt.mtime < self._listed_wall - CONFIRM_WINDOW):
            return nxt
        for _ in range(2):
            # Names only: no stat per entry, which on a directory of thousands of segments
            # is most of a listing's cost (paid per segment of a recent backlog).
            for first_id, sealed in _names_after(self.directory, key, segment, nxt.first_id):
                nxt = SegmentRef(first_id, sealed, 0, self._listed_wall)
        return nxt

    def _open(self, ref: SegmentRef | None, segment: int) -> tuple[int, bool] | None:
        """An fd on the segment and whether it was opened under its sealed name.

        Tries the name last seen, then the other one: the `.open` file may have been renamed in
        between. Sealed is tried again last because the rename may happen between the two tries.
        """
        probe = SegmentRef(segment, False, 0, 0.0) if ref is None else ref
        order = [True] if probe.sealed else [False, True]
        if ref is None:
            order = [True, False, True]
        for sealed in order:
            try:
                return os.open(self.directory / probe.name(sealed), os.O_RDONLY), sealed
            except FileNotFoundError:
                continue
        return None

    def _read_lines(self, fd: int, offset: int, size: int, want: int,
                    sealed: bool) -> tuple[list[bytes], int]:
        """Up to `want` whole lines from `offset`, and the bytes they span (newlines included).

        Reads in chunks sized from the average line length seen so far, so a batch costs about
        one read call; bytes past the last whole line taken are read again next time (cheap:
        they are in the page cache) rather than cached, because an `.open` file's tail may be
        truncated by crash recovery before it is sealed.
        """
        lines: list[bytes] = []
        used = 0
        pending = b""
        at = offset
        while len(lines) < want:
            room = want - len(lines)
            chunk_size = int(min(MAX_CHUNK, max(MIN_CHUNK, room * self._avg_line * 1.2)))
            chunk = os.pread(fd, chunk_size, at)
            if not chunk:
                if sealed and pending:
                    log.error("sealed segment ends without a newline; reading its last %d bytes "
                              "as a line", len(pending))
                    lines.append(pending)
                    used += len(pending)
                break
            at += len(chunk)
            buf = pending + chunk if pending else chunk
            # At most `room` lines are cut out: what follows them stays in one piece.
            parts = buf.split(b"\n", room)
            rest = parts.pop()
            used += len(buf) - len(rest)
            lines.extend(parts)
            if len(parts) == room:
                break
            pending = rest
            if at >= size and not sealed:
                # The writer may append more while we read; what is past `size` now is picked up
                # by the next call. Stopping here bounds the work of one call.
                break
        if lines:
            self._avg_line = 0.9 * self._avg_line + 0.1 * (used / len(lines))
        return lines, used

    # -- lag --------------------------------------------------------------------------------
    def backlog(self, positions: Mapping[StreamKey, Position]) -> dict[StreamKey, int]:
        """Bytes not yet loaded per stream, from the cached listing's sizes."""
        out: dict[StreamKey, int] = {}
        for key, segs in self._listing.items():
            pos = positions.get(key)
            total = 0
            for ref in segs:
                if pos is None or ref.first_id > pos.segment:
                    total += ref.size
                elif ref.first_id == pos.segment:
                    total += max(0, ref.size - pos.offset)
            out[key] = total
        return out

    @property
    def average_line_bytes(self) -> float:
        return self._avg_line
