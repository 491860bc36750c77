"""The rejected-bodies log: what was refused, and why, for an operator to inspect and replay.

SPEC §3: a rejected request is not silently dropped. Its reason and up to `body_bytes` of its
body are appended as one JSON line to `rejected/rejected-<unix ms>.ndjson`:

    {"at": 1700000000.123, "reason": "invalid_event", "errors": [{"index": 3, ...}],
     "remote": "10.0.0.7", "path": "/api/events", "body": "...", "truncated": false,
     "size": 5120}

`body` holds the body as text when it is valid UTF-8 (a multi-byte character cut by the
truncation is dropped whole); otherwise `body_b64` holds it in base64, so a line is always valid
JSON and the exact bytes can be replayed.

Bounded: a file is rotated once it reaches `max_file_bytes`, and beyond `max_files` files the
oldest are deleted, so the directory holds at most about `max_files * max_file_bytes` bytes
(plus one line: a single line larger than a file's budget is still written whole).

Best effort by contract: recording must never turn a 400 into a 500, so `record` never raises.
A failure is counted in `failures` and logged once until a record succeeds again.

Known limits: the worker processes share the directory. Two workers that rotate within the same
millisecond append to the same file (O_APPEND keeps each line whole). A worker pruning old
files may delete the file another worker is writing; that worker notices the unlinked file
after its next write (fstat: no links) and writes the line again into a new file.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import orjson

from collector.clock import Clock

logger = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^rejected-(\d+)\.ndjson$")
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


def rejected_file_name(wall_ms: int) -> str:
    return f"rejected-{wall_ms}.ndjson"


def body_fields(body: bytes, limit: int) -> dict[str, Any]:
    """The body part of a rejected line: `body` or `body_b64`, `truncated`, `size`."""
    kept = body[:limit]
    truncated = len(body) > limit
    fields: dict[str, Any] = {}
    try:
        # Not final when truncated: an incomplete character at the cut is left out, not an error.
        fields["body"] = codecs.getincrementaldecoder("utf-8")().decode(kept, final=not truncated)
    except UnicodeDecodeError:
        fields["body_b64"] = base64.b64encode(kept).decode("ascii")
    fields["truncated"] = truncated
    fields["size"] = len(body)
    return fields


class RejectedLog:
    """Appends rejected request bodies to bounded, rotated NDJSON files.

    Args:
        directory: where the `rejected-<unix ms>.ndjson` files go (created on first use).
        max_file_bytes: rotate the current file once it holds this many bytes.
        max_files: keep at most this many files; the oldest are deleted first.
        body_bytes: keep at most this many bytes of each body.
        clock: `time()` stamps each line, `wall_ms()` names the files.
    """

    def __init__(
        self,
        directory: Path,
        max_file_bytes: int,
        max_files: int,
        body_bytes: int,
        clock: Clock,
    ) -> None:
        if max_file_bytes <= 0 or max_files <= 0 or body_bytes < 0:
            raise ValueError("max_file_bytes and max_files must be positive, body_bytes >= 0")
        self.directory = directory
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.body_bytes = body_bytes
        self._clock = clock
        self._fd = -1
        self._size = 0
        self._last_ms = 0
        self._prune_due = False
        """A file was rotated in and the oldest are pruned after its first line."""
        self._failing = False
        self.recorded = 0
        """Lines written."""
        self.failures = 0
        """Records lost to an error (disk full, directory not writable ...)."""

    def record(
        self,
        reason: str,
        body: bytes,
        *,
        errors: list[dict[str, Any]] | None = None,
        remote: str = "",
        path: str = "",
    ) -> None:
        """Append one rejected request. Never raises.

        Args:
            reason: the short error code the client got (e.g. "invalid_event").
            body: the request body, decoded if it was gzip; as received when it could not
                be decoded (the reason then says why: bad_gzip, unsupported_encoding).
            errors: the per-event errors of the 400, if any.
            remote: the client address.
            path: the request path.
        """
        try:
            line = self._encode(reason, body, errors, remote, path)
            self._append(line)
        except Exception as exc:  # by contract: the request is answered whatever happens here
            self._failed(exc)
            return
        self.recorded += 1
        if self._failing:
            self._failing = False
            logger.warning("rejected-bodies log %s is writable again", self.directory)

    def close(self) -> None:
        self._close_file()

    def _encode(
        self,
        reason: str,
        body: bytes,
        errors: list[dict[str, Any]] | None,
        remote: str,
        path: str,
    ) -> bytes:
        entry: dict[str, Any] = {
            "at": self._clock.time(),
            "reason": reason,
            "errors": errors or [],
            "remote": remote,
            "path": path,
        }
        entry.update(body_fields(body, self.body_bytes))
        return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS) + b"\n"

    def _append(self, line: bytes) -> None:
        # Two attempts: the second one runs only when the first landed in a file that had been
        # deleted (pruned by another worker, or the directory removed), into a fresh file.
        for _ in range(2):
            if self._fd < 0 or self._size >= self.max_file_bytes:
                self._rotate()
                self._prune_due = True
            before = os.fstat(self._fd).st_size
            try:
                _write_all(self._fd, line)
            except OSError:
                # A disk-full write may have put part of the line in: cut it, so that every
                # line stays valid JSON for whoever replays the file.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, before)
                raise
            st = os.fstat(self._fd)
            self._size = st.st_size
            if st.st_nlink > 0:
                if self._prune_due:
                    # Only once a line is in the new file: failing writes (a full disk) must
                    # not replace the history with empty files, one per rejected request.
                    self._prune()
                    self._prune_due = False
                return
            self._close_file()
        raise OSError(f"rejected file in {self.directory} keeps disappearing")

    def _rotate(self) -> None:
        self._close_file()
        self.directory.mkdir(parents=True, exist_ok=True)
        # Strictly increasing names even when the clock stands still or steps back.
        wall_ms = max(self._clock.wall_ms(), self._last_ms + 1)
        self._last_ms = wall_ms
        self._fd = os.open(self.directory / rejected_file_name(wall_ms), _OPEN_FLAGS, 0o644)
        self._size = os.fstat(self._fd).st_size

    def _prune(self) -> None:
        """Delete the oldest files beyond `max_files` (the current one is the newest)."""
        numbered: list[tuple[int, str]] = []
        for name in os.listdir(self.directory):
            m = _NAME_RE.match(name)
            if m is not None:
                numbered.append((int(m.group(1)), name))
        numbered.sort()
        for _, name in numbered[: max(0, len(numbered) - self.max_files)]:
            with contextlib.suppress(FileNotFoundError):  # another worker pruned it first
                (self.directory / name).unlink()

    def _close_file(self) -> None:
        fd, self._fd = self._fd, -1
        self._size = 0
        if fd >= 0:
            try:
                os.close(fd)
            except OSError as exc:
                logger.debug("closing a rejected-bodies file failed: %s", exc)

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        # Kept while it is still there (a full disk: the next record retries the same file,
        # no new empty one); a file that is gone is replaced next time.
        try:
            gone = self._fd >= 0 and os.fstat(self._fd).st_nlink == 0
        except OSError:
            gone = True
        if gone:
            self._close_file()
        if not self._failing:
            self._failing = True
            logger.warning(
                "cannot record a rejected body in %s (recording is best effort; further "
                "failures are counted, not logged): %s", self.directory, exc,
            )


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError("write made no progress")
        view = view[n:]
