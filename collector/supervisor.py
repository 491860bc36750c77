"""`collector serve`: the supervisor process.

It owns nothing on the request path. It prepares the data directory and the read token, starts
the embedded redis-server (when no `redis.url` is set), the loader child (unless
`loader.embedded = false`) and N worker processes that share the port through SO_REUSEPORT,
then watches them: a worker or the loader that dies is restarted, and so is Redis.

Children get their settings through the environment (`COLLECTOR_*`), the same mechanism users
have, so a child computes exactly the configuration the supervisor printed.

Stopping (SIGTERM or SIGINT): workers first (they stop accepting, finish in-flight requests and
seal their segments), then the loader (it finishes its batch), then Redis. A second signal
kills everything at once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from collector import __version__
from collector.auth import ensure_read_token
from collector.config import Config
from collector.embedded_redis import EmbeddedRedis
from collector.metrics_files import clear_snapshots
from collector.procutil import die_with_parent
from loader.lock import LoaderLock, LockHeld

log = logging.getLogger(__name__)

READY_TIMEOUT = 30.0
EXIT_LOCKED = 75
"""The loader's exit code when another loader already holds the data directory's lock."""
RESTART_BACKOFF_MAX = 10.0


@dataclass(slots=True)
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)
    pass_fds: tuple[int, ...] = ()
    """Descriptors the child keeps open: the serve lock, so that it outlives the supervisor
    for as long as any child still writes (a flock belongs to the open file)."""

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, preexec_fn=die_with_parent,
                                     pass_fds=self.pass_fds)
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)


_BIND_HINTS = {
    errno.EADDRINUSE: "another collector or server listens there; stop it, or choose "
                      "another --port",
    errno.EACCES: "ports below 1024 need root; choose another --port",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address; check --host",
}


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on, before any worker starts.

    The workers bind with SO_REUSEPORT when there are several, and Linux lets any other
    process that sets it too share the port: a second collector (another data directory)
    would silently take part of the traffic, with the same worker ids. A bind without
    SO_REUSEPORT fails while anyone listens there.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            hint = _BIND_HINTS.get(e.errno or 0, "check --host and --port")
            raise SystemExit(f"cannot listen on {host}:{port}: {e.strerror}; {hint}") from None


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Supervisor:
    def __init__(self, cfg: Config, config_file: str | None, *,
                 hold_fds: tuple[int, ...] = ()) -> None:
        self.cfg = cfg
        self.config_file = config_file
        self.hold_fds = hold_fds
        self.workers: list[Child] = []
        self.loader: Child | None = None
        self.redis: EmbeddedRedis | None = None
        self.stopping = 0
        self.port = cfg.server.port

    # -- start ----------------------------------------------------------------------------------

    def _child_env(self, redis_url: str) -> dict[str, str]:
        cfg = self.cfg
        env = dict(os.environ)
        # Ctrl-C in a terminal signals the whole process group; a supervised child leaves it to
        # the supervisor, which stops the children in order with SIGTERM.
        env["COLLECTOR_SUPERVISED"] = "1"
        env["COLLECTOR_DATA_DIR"] = str(Path(cfg.data_dir).resolve())
        env["COLLECTOR_SERVER_HOST"] = cfg.server.host
        env["COLLECTOR_SERVER_PORT"] = str(self.port)
        env["COLLECTOR_SERVER_WORKERS"] = str(cfg.server.workers)
        if redis_url:
            env["COLLECTOR_REDIS_URL"] = redis_url
        if self.config_file:
            env["COLLECTOR_CONFIG"] = str(Path(self.config_file).resolve())
        return env

    def start(self) -> None:
        cfg = self.cfg
        cfg.data_path.mkdir(parents=True, exist_ok=True)
        cfg.run_path.mkdir(parents=True, exist_ok=True)
        for stale in cfg.run_path.glob("ready-*"):
            stale.unlink()
        clear_snapshots(cfg.run_path)  # a new run counts from zero (see metrics_files)
        seal_orphans(cfg)
        if self.port != 0:
            _check_port_free(cfg.server.host, self.port)
        token, created = ensure_read_token(cfg)
        redis_url = cfg.redis.url
        if not cfg.stats_enabled:
            redis_url = ""
        elif not redis_url:
            self.redis = EmbeddedRedis(cfg.data_path, cfg.run_path)
            self.redis.start()
            redis_url = self.redis.url
        if self.port == 0:
            self.port = _free_port(cfg.server.host)
        env = self._child_env(redis_url)
        # The children log at the supervisor's level (`collector --log-level DEBUG serve`).
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        exe = [sys.executable, "-m", "collector", "--log-level", level]
        if cfg.loader.embedded:
            self.loader = Child("loader", [*exe, "loader"], env, pass_fds=self.hold_fds)
            self.loader.start()
        for i in range(cfg.server.workers):
            ready = cfg.run_path / f"ready-{i}"
            child = Child(f"worker {i}",
                          [*exe, "_worker", "--index", str(i), "--ready-file", str(ready)], env,
                          pass_fds=self.hold_fds)
            child.start()
            self.workers.append(child)
        self._wait_ready()
        if not self.stopping:
            self._banner(token, created, redis_url)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        pending = {i for i in range(len(self.workers))}
        while pending:
            if self.stopping:
                return
            for i in list(pending):
                if (self.cfg.run_path / f"ready-{i}").exists():
                    pending.discard(i)
                elif not self.workers[i].alive():
                    proc = self.workers[i].proc
                    code = proc.returncode if proc is not None else None
                    self.stop()
                    raise SystemExit(f"worker {i} exited during startup (code {code}); "
                                     "see its log above")
            if time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"workers {sorted(pending)} did not start within "
                                 f"{READY_TIMEOUT:.0f} s")
            time.sleep(0.02)

    def _banner(self, token: str | None, created: bool, redis_url: str) -> None:
        cfg = self.cfg
        host = cfg.server.host
        shown = f"[{host}]" if ":" in host else host
        data = Path(cfg.data_dir).resolve()
        lines = [
            f"collector {__version__}",
            f"  listening   http://{shown}:{self.port}  ({cfg.server.workers} worker"
            f"{'s' if cfg.server.workers != 1 else ''}, durability={cfg.segments.durability})",
            f"  data        {data}",
            f"  segments    {cfg.segments_path.resolve()}",
            f"  store       {cfg.store.backend}: "
            + (str(cfg.sqlite_file.resolve()) if cfg.store.backend == "sqlite"
               else cfg.store.mongodb_uri),
            f"  redis       {'embedded ' if self.redis else ''}{redis_url or 'off'}",
            f"  loader      {self._loader_line()}",
        ]
        if token is None:
            lines.append("  reads       open to anyone (auth.open_reads = true)")
        elif created:
            lines.append(f"  read token  {token}")
            lines.append(f"              (generated now, kept in {cfg.read_token_file.resolve()})")
        else:
            lines.append(f"  read token  in {cfg.read_token_file.resolve()}"
                         if not cfg.auth.read_token else "  read token  from the configuration")
        lines.append("  try         curl -d '{\"event_type\":\"hello\"}' "
                     f"http://{shown}:{self.port}/api/events")
        print("\n".join(lines), flush=True)

    def _loader_line(self) -> str:
        if self.loader is not None and self.loader.proc is not None:
            return f"embedded (pid {self.loader.proc.pid})"
        return "not started here (loader.embedded = false): run `collector loader`"

    # -- watch ----------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Before any child starts, so a signal during startup stops cleanly too."""

        def on_signal(signum: int, frame: object) -> None:
            self.stopping += 1
            if self.stopping > 1:
                log.warning("second signal: killing everything now")
                self.kill_all()
                os._exit(1)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # (under nohup: keep it so)
            signal.signal(signal.SIGHUP, on_signal)  # the terminal closed: stop as for SIGTERM

    def watch(self) -> int:
        while not self.stopping:
            self._check_children()
            time.sleep(0.5)
        log.info("stopping: workers first, then the loader, then redis")
        self.stop()
        return 0

    def _check_children(self) -> None:
        now = time.monotonic()
        children = [*self.workers, *([self.loader] if self.loader else [])]
        for child in children:
            if child.alive() or self.stopping:
                continue
            if child.next_start == 0.0:
                code = child.proc.returncode if child.proc else None
                delay = min(RESTART_BACKOFF_MAX, 0.5 * (2 ** min(child.restarts, 5)))
                if now - child.started_at > 60:
                    delay = 0.5  # it had been running fine for a while: restart promptly
                if child is self.loader and code == EXIT_LOCKED:
                    delay = RESTART_BACKOFF_MAX
                    log.error("another loader holds the lock on this data directory; "
                              "retrying every %.0f s", delay)
                log.error("%s exited (code %s); restarting in %.1f s", child.name, code, delay)
                child.next_start = now + delay
            elif now >= child.next_start:
                child.restarts += 1
                child.next_start = 0.0
                child.start()
        if self.redis is not None and not self.stopping:
            try:
                if self.redis.check_and_restart():
                    log.error("embedded redis-server had died; restarted it")
            except Exception:
                log.exception("embedded redis-server could not be restarted")

    # -- stop -----------------------------------------------------------------------------------

    def stop(self) -> None:
        timeout = self.cfg.server.shutdown_timeout + 5
        self._stop_group(self.workers, timeout)
        if self.loader is not None:
            self._stop_group([self.loader], 30.0)
        if self.redis is not None:
            try:
                self.redis.stop()
            except Exception:
                log.exception("embedded redis-server did not stop cleanly")
        for ready in self.cfg.run_path.glob("ready-*"):
            ready.unlink(missing_ok=True)

    def _stop_group(self, children: list[Child], timeout: float) -> None:
        for c in children:
            c.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for c in children:
            if c.proc is None:
                continue
            try:
                c.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s did not stop in %.0f s; killing it", c.name, timeout)
                c.proc.kill()
                c.proc.wait()

    def kill_all(self) -> None:
        for c in [*self.workers, *([self.loader] if self.loader else [])]:
            c.signal(signal.SIGKILL)
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.stop(timeout=2.0)


EXIT_IN_USE = 75
"""`collector serve`'s exit status when another one already serves the data directory."""


def seal_orphans(cfg: Config) -> int:
    """Seal the `.open` segments of worker numbers this run does not start; how many.

    Each worker recovers its own leftovers at startup. After a crash, a restart with fewer
    workers (or another worker_id or datacenter_id) left the others' `.open` files for ever:
    never sealed, their torn tail never cut, never deleted by retention (an audit). The
    supervisor holds serve.lock on these directories, so no other collector writes them.
    """
    from collector.errors import StorageUnavailable
    from collector.storage.segment import recover_open_segment
    from collector.storage.segment_log import id_node, open_segments

    s = cfg.server
    ours = {(s.datacenter_id, w) for w in range(s.worker_id, s.worker_id + s.workers)}
    try:
        found = open_segments(cfg.segments_path)
    except FileNotFoundError:
        return 0
    sealed = 0
    for path, first_id in found:
        if id_node(first_id) in ours:
            continue
        try:
            sealed_path, removed = recover_open_segment(path)
        except StorageUnavailable as e:
            log.error("%s; it stays open", e)
            continue
        sealed += 1
        log.info("sealed %s, left open by a worker this run does not start (%d bytes of torn "
                 "tail removed)", sealed_path or path, removed)
    return sealed


def serve(cfg: Config, config_file: str | None) -> int:
    # One supervisor per data directory, taken before anything touches it. A second one
    # would take the first one's embedded Redis for an orphan and kill it, seal its open
    # segment under it, and mint the same Snowflake ids into the same streams (acknowledged
    # events then share an id, and the store keeps one of each). A segment directory outside
    # the data directory (an absolute segments.dir) is locked too: two data directories may
    # share it.
    for directory in (cfg.segments_path, cfg.rejected_path):
        # Said here in one line: a worker would print a traceback, then "exited during
        # startup" (an audit, with segments/ a regular file).
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            what = "exists and is not a directory" if isinstance(e, FileExistsError) else \
                (e.strerror or str(e))
            print(f"collector serve: cannot use {directory} as a directory: {what}; move it "
                  "away or set segments.dir", file=sys.stderr)
            return 1
    paths = [cfg.run_path / "serve.lock"]
    if not cfg.segments_path.resolve().is_relative_to(cfg.data_path.resolve()):
        paths.append(cfg.segments_path / ".serve.lock")
    locks: list[LoaderLock] = []
    try:
        for path in paths:
            lock = LoaderLock(path, role="collector serve")
            try:
                lock.acquire()
            except LockHeld as e:
                print(f"collector serve: {e}; stop it first, or give this one its own "
                      "--data-dir (and segments.dir)", file=sys.stderr)
                return EXIT_IN_USE
            except OSError as e:
                print(f"collector serve: cannot lock {path}: {e.strerror or e}; check that "
                      "the data and segment directories are writable", file=sys.stderr)
                return 1
            locks.append(lock)
        sup = Supervisor(cfg, config_file, hold_fds=tuple(lock.fileno() for lock in locks))
        sup.install_signal_handlers()
        try:
            sup.start()
        except RuntimeError as e:  # the embedded Redis could not start (its message says why)
            sup.stop()
            print(f"collector serve: {e}", file=sys.stderr)
            return 1
        return sup.watch()
    finally:
        for lock in locks:
            lock.release()
