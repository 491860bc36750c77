"""`collector loader` run alone: what an operator sees when something outside it is wrong
(an audit found tracebacks, and a loader that exited and was restarted every few seconds
while its store could not be reached)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson

from collector.config import Config, with_overrides
from collector.metrics import merge_snapshots, render
from collector.metrics_files import loader_snapshot

ROOT = Path(__file__).resolve().parents[2]


def loader(data_dir: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    full.update(env)
    return subprocess.Popen([sys.executable, "-m", "collector", "loader", "--data-dir",
                             str(data_dir), *args], cwd=ROOT, env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_store_is_retried_counted_and_logged_in_one_line(tmp_path: Path) -> None:
    uri = f"mongodb://127.0.0.1:{closed_port()}/?serverSelectionTimeoutMS=200"
    proc = loader(tmp_path, COLLECTOR_STORE_BACKEND="mongodb", COLLECTOR_STORE_MONGODB_URI=uri,
                  COLLECTOR_LOADER_POLL_INTERVAL="0.2")
    status = tmp_path / "run" / "loader.json"
    try:
        deadline = time.monotonic() + 60  # (a slow machine's margin)
        errors = 0
        while time.monotonic() < deadline and errors < 2:
            time.sleep(0.2)
            assert proc.poll() is None, proc.communicate()
            if status.exists():
                errors = orjson.loads(status.read_bytes()).get("errors", 0)
        assert errors >= 2, "the loader should keep retrying and count its attempts"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "Traceback" not in err
    assert err.count("cannot open the event store") >= 2
    # The collector's /metrics shows the attempts.
    cfg = with_overrides(Config(), data_dir=str(tmp_path))
    text = render(merge_snapshots([loader_snapshot(cfg)]))
    assert "loader_errors_total" in text


def test_no_status_yet_means_loader_up_0(tmp_path: Path) -> None:
    cfg = with_overrides(Config(), data_dir=str(tmp_path))
    assert "loader_up 0\n" in render(merge_snapshots([loader_snapshot(cfg)]))


def test_a_metrics_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = loader(tmp_path, "--metrics-port", str(port))
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in err and f"cannot serve metrics on 127.0.0.1:{port}" in err


def test_a_bad_metrics_port_is_refused_by_the_flag(tmp_path: Path) -> None:
    proc = loader(tmp_path, "--metrics-port", "99999")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in err and "0-65535" in err


def test_the_server_selection_timeout_of_the_uri_is_kept() -> None:
    from loader.stores.mongo import SERVER_SELECTION_MS, MongoStore

    # readonly: no index to create, so nothing waits for the closed port
    given = MongoStore.from_uri(f"mongodb://127.0.0.1:{closed_port()}/?serverselectiontimeoutms"
                                "=200", "db", readonly=True)
    default = MongoStore.from_uri(f"mongodb://127.0.0.1:{closed_port()}/", "db", readonly=True)
    try:
        assert given._client.options.server_selection_timeout == 0.2
        assert default._client.options.server_selection_timeout == SERVER_SELECTION_MS / 1000
        # what the loader insists on stays whatever the URI says
        assert given._client.options.write_concern.document == {"w": "majority", "j": True}
    finally:
        given.close()
        default.close()
