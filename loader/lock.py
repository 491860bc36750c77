"""One loader per data directory: an exclusive `flock` on `data/run/loader.lock`. (The same
lock, on `data/run/serve.lock`, keeps a second `collector serve` off a directory in use.)

Two loaders on one directory would not corrupt the store (inserts are idempotent on the
Snowflake ID) but they would race on the checkpoint and on retention, and one could delete a
segment the other has not loaded. The kernel releases a flock when its holder dies, even by
SIGKILL, so a crashed loader never leaves a stale lock behind. The holder's pid is written into
the file for the message the second loader prints.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class LockHeld(Exception):
    """Another process holds the lock."""

    def __init__(self, path: Path, holder: str, role: str = "loader") -> None:
        super().__init__(
            f"another {role} (pid {holder or 'unknown'}) holds {path}; only one {role} may run "
            "per data directory"
        )
        self.path = path
        self.holder = holder


class LoaderLock:
    def __init__(self, path: Path, role: str = "loader") -> None:
        self.path = path
        self.role = role
        self._fd: int | None = None

    def acquire(self, *, blocking: bool = False) -> None:
        """Take the lock, waiting for it when `blocking`.

        Raises:
            LockHeld: not blocking and another process holds it.
        """
        if self._fd is not None:
            raise RuntimeError(f"cannot acquire the {self.role} lock: already held by this "
                               "process")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise LockHeld(self.path, holder, self.role) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def fileno(self) -> int:
        """The locked descriptor (to hand to child processes, which then hold the lock too)."""
        if self._fd is None:
            raise RuntimeError(f"the {self.role} lock is not held")
        return self._fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        # Unlocking is closing; the pid is left in the file (harmless: it is only a hint).
        os.close(fd)

    def __enter__(self) -> LoaderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
