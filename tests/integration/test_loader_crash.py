"""kill -9 the loader in the middle of a large load, restart it: every event exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from loader.status import read_status
from loader.stores.sqlite import SQLiteStore
from tests.fixtures.store import StreamWriter, loader_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
EVENTS_PER_SEGMENT = 20_000


def start_loader(data_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("COLLECTOR_CONFIG", None)
    # cwd is the data dir so that no conf/collector.toml of the checkout is picked up; the
    # log goes to a file so that a killed process leaves no pipe behind.
    with open(data_dir / "loader.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "loader", "--data-dir", str(data_dir)],
                                cwd=data_dir, env=env, stdout=subprocess.DEVNULL, stderr=log)


def loaded(data_dir: Path) -> int:
    status = read_status(loader_config(data_dir))
    return int(status["events_loaded"]) if status else 0


def wait_until(cond: object, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if proc.poll() is not None:
            raise AssertionError(f"loader exited {proc.returncode}; see its log")
        if time.monotonic() > deadline:
            raise AssertionError("the loader made no progress in time")
        time.sleep(0.02)


def segment_ids(directory: Path) -> list[int]:
    ids = []
    for path in sorted(directory.iterdir()):
        for line in path.read_bytes().splitlines():
            ids.append(int(orjson.loads(line)["id"]))
    return ids


def test_sigkill_mid_load_then_restart_loads_every_event_once(tmp_path: Path) -> None:
    segments = tmp_path / "segments"
    writers = [StreamWriter(segments, worker=1), StreamWriter(segments, datacenter=2, worker=9)]
    for w in writers:
        for _ in range(5):
            w.write(w.events(EVENTS_PER_SEGMENT))
        w.write(w.events(1_000), sealed=False)  # the live segment of each writer
    expected = segment_ids(segments)
    assert len(expected) == 2 * (5 * EVENTS_PER_SEGMENT + 1_000) == len(set(expected))

    proc = start_loader(tmp_path)
    try:
        # Kill twice: once early, once well into the load (the status is written once a
        # second, so the loader is usually killed in the middle of a batch).
        wait_until(lambda: loaded(tmp_path) >= 20_000, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        before = loaded(tmp_path)
        proc = start_loader(tmp_path)
        wait_until(lambda: loaded(tmp_path) >= 40_000, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc = start_loader(tmp_path)
        wait_until(lambda: (s := read_status(loader_config(tmp_path))) is not None
                   and s["pid"] == proc.pid and s["lag_bytes"] == 0, proc, timeout=300)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # warm stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert before >= 20_000

    store = SQLiteStore(tmp_path / "events.db", readonly=True)
    try:
        assert store.count() == len(expected)
        total, _ = store.query_events(page=1, limit=1, start=None, end=None, event_types=None)
        assert total == len(expected)
        assert sum(n for _, _, n in store.daily_stats(None, None, None)) == len(expected)
    finally:
        store.close()
    import sqlite3

    con = sqlite3.connect(tmp_path / "events.db")
    try:
        stored = [row[0] for row in con.execute("SELECT id FROM events ORDER BY id")]
    finally:
        con.close()
    assert stored == sorted(expected)

    # The analytics tables: after the kills, every event with a user is summarized exactly
    # once or still queued for the pass (which a warm stop may leave undone); finishing the
    # pass must fold each in once.
    writer = SQLiteStore(tmp_path / "events.db")
    try:
        while writer.summarize_pending():
            pass
        assert writer._writer is not None
        with_user, summarized, copies = writer._writer.execute(
            "SELECT (SELECT COUNT(*) FROM events WHERE user_id IS NOT NULL), "
            "(SELECT SUM(n) FROM user_hours), (SELECT COUNT(*) FROM user_hour_events)"
        ).fetchone()
        assert with_user == summarized == copies == len(expected)
    finally:
        writer.close()
