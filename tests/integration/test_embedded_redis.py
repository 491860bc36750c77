"""EmbeddedRedis: the supervised redis-server of `collector serve` (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from collector.embedded_redis import EmbeddedRedis, ping_unix

HANG_GUARD = 15.0


def gone(pid: int) -> bool:
    """True when no process (not even a zombie) has this pid."""
    return not Path(f"/proc/{pid}").exists()


def wait_gone(pid: int) -> bool:
    give_up = time.monotonic() + HANG_GUARD
    while not gone(pid) and time.monotonic() < give_up:
        time.sleep(0.01)
    return gone(pid)


@pytest.fixture
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("emb")  # short: the socket path must fit in sun_path
    return base / "data", base / "data" / "run"


@pytest.fixture
def embedded(dirs: tuple[Path, Path]) -> Iterator[EmbeddedRedis]:
    er = EmbeddedRedis(*dirs)
    try:
        yield er
    finally:
        er.stop(timeout=5)


def client(er: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(er.url, decode_responses=True)


def test_start_answers_on_the_unix_socket_only(embedded: EmbeddedRedis,
                                               dirs: tuple[Path, Path]) -> None:
    embedded.start()
    data, run = dirs
    assert embedded.url == f"unix://{run / 'redis.sock'}"
    r = client(embedded)
    try:
        assert r.ping()
        cfg = r.config_get("*")
        assert cfg["port"] == "0"  # no TCP listener
        assert cfg["appendonly"] == "yes"
        assert cfg["dir"] == str(data / "redis")
    finally:
        r.close()
    assert (run / "redis.pid").read_text().strip() == str(embedded.pid)


def test_stop_leaves_no_process_and_keeps_the_data(embedded: EmbeddedRedis) -> None:
    embedded.start()
    pid = embedded.pid
    assert pid is not None
    r = client(embedded)
    r.hset("k", "f", 41)
    r.hincrby("k", "f", 1)
    r.close()
    embedded.stop()
    assert wait_gone(pid)
    assert embedded.pid is None
    assert not embedded.socket_path.exists()
    assert not embedded.pid_file.exists()

    embedded.start()  # persistence: the counters survive a restart of the collector
    r = client(embedded)
    try:
        assert r.hget("k", "f") == "42"
    finally:
        r.close()


def test_stop_is_idempotent(embedded: EmbeddedRedis) -> None:
    embedded.stop()  # never started: nothing to do
    embedded.start()
    embedded.stop()
    embedded.stop()
    assert embedded.pid is None


def test_killed_server_is_restarted(embedded: EmbeddedRedis) -> None:
    embedded.start()
    assert embedded.check_and_restart() is False  # alive: nothing to do
    first = embedded.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert wait_gone_or_zombie(first)
    # A zombie thread-group leader is not reapable until redis-server's other threads have
    # exited too, so the first checks may still see it alive; the supervisor checks every
    # second, and so does this, until the death is seen (bounded by HANG_GUARD).
    give_up = time.monotonic() + HANG_GUARD
    while not embedded.check_and_restart():
        assert time.monotonic() < give_up, "the killed redis-server was never noticed"
        time.sleep(0.01)
    assert embedded.pid not in (None, first)
    assert wait_gone(first)  # the dead one was reaped, not left a zombie
    assert ping_unix(embedded.socket_path)
    assert embedded.check_and_restart() is False


def wait_gone_or_zombie(pid: int) -> bool:
    give_up = time.monotonic() + HANG_GUARD
    while time.monotonic() < give_up:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.01)
    return False


def test_check_before_start_is_an_error(embedded: EmbeddedRedis) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        embedded.check_and_restart()


def test_orphan_of_a_killed_supervisor_is_stopped_at_next_start(
        dirs: tuple[Path, Path]) -> None:
    # A supervisor SIGKILLed leaves its redis-server running (own session). The next
    # supervisor finds it through the pid file and stops it before starting its own.
    first = EmbeddedRedis(*dirs)
    first.start()
    orphan = first.pid
    assert orphan is not None
    second = EmbeddedRedis(*dirs)  # a new supervisor: knows nothing but the files
    try:
        second.start()
        assert wait_gone_or_zombie(orphan)
        assert second.pid != orphan
        assert ping_unix(second.socket_path)
    finally:
        second.stop(timeout=5)
        first.stop(timeout=5)  # reaps the orphan's zombie (it is our child in this test)
    assert wait_gone(orphan)


def test_stale_pid_file_of_another_process_is_ignored(dirs: tuple[Path, Path]) -> None:
    data, run = dirs
    run.mkdir(parents=True)
    other = subprocess.Popen(["sleep", "30"])
    try:
        (run / "redis.pid").write_text(f"{other.pid}\n")
        er = EmbeddedRedis(data, run)
        er.start()
        try:
            assert other.poll() is None  # not a redis-server of ours: left alone
        finally:
            er.stop(timeout=5)
    finally:
        other.kill()
        other.wait()


def test_start_failure_says_why(dirs: tuple[Path, Path]) -> None:
    data, run = dirs
    (data / "redis").mkdir(parents=True)
    (data / "redis" / "appendonly.aof").write_bytes(b"*garbage that is not an AOF\r\n")
    er = EmbeddedRedis(data, run)
    try:
        with pytest.raises(RuntimeError, match="exited with status"):
            er.start(timeout=HANG_GUARD)
        assert er.pid is None
    finally:
        er.stop(timeout=5)


def test_socket_path_too_long_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    er = EmbeddedRedis(deep, deep / "run")
    with pytest.raises(RuntimeError, match="longer than"):
        er.start()
    assert er.pid is None


def test_relative_directories_work(tmp_path_factory: pytest.TempPathFactory,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """redis-server changes into --dir while reading its arguments: relative paths given to
    it after that would point under data/redis/ (its log file: it refused to start)."""
    monkeypatch.chdir(tmp_path_factory.mktemp("rel"))
    er = EmbeddedRedis(Path("data"), Path("data") / "run")
    try:
        er.start()
        r = client(er)
        try:
            assert r.ping()
            assert r.config_get("logfile")["logfile"] == str(Path("data/redis/redis.log")
                                                             .absolute())
        finally:
            r.close()
    finally:
        er.stop(timeout=5)
