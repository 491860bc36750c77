"""Storage failures of the real collector: 503, nothing half-written, recovery (issue 2 item 5).

Three ways the segment storage breaks under a running server:

- the segment directory is removed (and, for a while, cannot be recreated);
- the disk is full: a 1 MiB tmpfs mounted on the segment directory (needs CAP_SYS_ADMIN;
  skipped, saying so, where mounting is not permitted);
- a file grows past the worker's RLIMIT_FSIZE (writes fail with EFBIG; Python ignores
  SIGXFSZ), set on the running worker with prlimit: this one runs anywhere.

In every case each request either gets a 202 and all its events are in the segments exactly
once, or gets a 503 (`storage_unavailable`, with Retry-After) and none of its events is in any
segment; every line of every segment parses and no file ends in a partial line. Events carry
an event_id so a refused request can be proven absent.
"""

from __future__ import annotations

import contextlib
import itertools
import resource
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Set
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from tests.fixtures import rawhttp
from tests.fixtures.rawhttp import (
    RawConnection,
    RawResponse,
    read_segments,
    request_bytes,
    worker_pids,
)
from tests.fixtures.server import ServerProcess

rawconn = rawhttp.rawconn  # the fixture, for this module
Connect = Callable[..., RawConnection]
Start = Callable[..., ServerProcess]
KIB = 1024
RECOVERY_GUARD = 15.0
"""Seconds a test keeps retrying for the server to accept writes again (a hang guard; the
writer probes the storage about once a second)."""


@dataclass
class Ledger:
    """What the server answered for every event sent, by event_id."""

    conn: RawConnection
    accepted: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    _seq: Iterator[int] = field(default_factory=itertools.count)

    def post(self, n: int = 1, pad: int = 0) -> RawResponse:
        marks = [f"e{next(self._seq)}" for _ in range(n)]
        events = [{"event_type": "disk", "event_id": m, "params": {"pad": "p" * pad}}
                  for m in marks]
        resp = self.conn.exchange(request_bytes("POST", "/api/events", orjson.dumps(events)))
        if resp.status == 202:
            assert resp.json()["accepted"] == n
            self.accepted.update(marks)
        elif resp.status == 503:
            body = resp.json()
            assert body["error"] == "storage_unavailable", body
            assert "retry" in body["message"].lower(), body
            assert resp.header("retry-after") is not None
            self.refused.update(marks)
        else:
            raise AssertionError(f"unexpected {resp.status}: {resp.body[:300]!r}")
        return resp

    def until(self, status: int, *, n: int = 1, pad: int = 0, tries: int = 1000,
              guard: float = RECOVERY_GUARD) -> RawResponse:
        """Post until the server answers `status`; fail after `tries` posts or `guard` s."""
        deadline = time.monotonic() + guard
        for _ in range(tries):
            resp = self.post(n, pad)
            if resp.status == status:
                return resp
            if time.monotonic() > deadline:
                break
            if resp.status == 503:
                time.sleep(0.05)
        raise AssertionError(f"the server never answered {status}")

    def check_segments(self, data_dir: Path, *, lost_ok: Set[str] = frozenset()) -> None:
        """Accepted exactly once (except `lost_ok`, deleted by the test), refused never."""
        counts: dict[str, int] = {}
        for seg in read_segments(data_dir):  # fails on a line that does not parse
            assert seg.torn_tail == b"", f"{seg.path.name} ends in a partial line"
            for line in seg.lines:
                mark = str(line.get("event_id"))
                counts[mark] = counts.get(mark, 0) + 1
        half_written = sorted(m for m in self.refused if m in counts)
        assert half_written == [], f"events of refused requests were stored: {half_written[:5]}"
        twice = sorted(m for m, c in counts.items() if c > 1)
        assert twice == [], f"events stored twice: {twice[:5]}"
        lost = sorted(self.accepted - lost_ok - set(counts))
        assert lost == [], f"acknowledged events missing: {lost[:5]}"


def test_segment_directory_removed_while_running(start_server: Start, rawconn: Connect) -> None:
    server = start_server()
    ledger = Ledger(rawconn(server.port))
    for _ in range(5):
        assert ledger.post(3).status == 202
    deleted = set(ledger.accepted)  # their files go with the directory

    segments = server.data_dir / "segments"
    shutil.rmtree(segments)
    # A file in its place: the directory cannot even be recreated until it is removed.
    segments.write_bytes(b"not a directory")
    assert ledger.post(3).status == 503, "a write into a deleted segment was acknowledged"
    for _ in range(3):
        assert ledger.post(2).status == 503
    status, _, body = server.request("GET", "/healthz")
    assert status == 503
    health = orjson.loads(body)
    assert health["status"] == "unavailable" and health["reason"], health
    assert health["error"] == "storage_unavailable" and health["message"], health  # SPEC §3

    segments.unlink()
    ledger.until(202, n=2)
    for _ in range(5):
        assert ledger.post(4).status == 202
    assert server.request("GET", "/healthz")[0] == 200
    assert server.stop() == 0
    ledger.check_segments(server.data_dir, lost_ok=deleted)
    assert ledger.refused and ledger.accepted - deleted


# --- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A data dir whose `segments/` is a 1 MiB tmpfs; skipped where mounting is not allowed."""
    data_dir = tmp_path / "disk"
    mountpoint = data_dir / "segments"
    mountpoint.mkdir(parents=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs",
                               str(mountpoint)], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no `mount` command to create a small tmpfs")
    if proc.returncode != 0:
        pytest.skip("mounting a 1 MiB tmpfs needs CAP_SYS_ADMIN (root), which this user "
                    f"lacks: {proc.stderr.strip()}")
    try:
        yield data_dir
    finally:
        done = subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, timeout=30)


def test_disk_full_answers_503_and_recovers(tiny_disk: Path, start_server: Start,
                                            rawconn: Connect) -> None:
    filler = tiny_disk / "segments" / "filler"
    with open(filler, "wb") as f:  # leave about 200 KiB of the 1 MiB free
        f.write(b"\0" * (824 * KIB))
    server = start_server(data_dir=tiny_disk)
    try:
        ledger = Ledger(rawconn(server.port))
        assert ledger.post(5, pad=100).status == 202
        # ~30 KiB per request: the disk fills within a few requests.
        ledger.until(503, n=30, pad=1000, tries=40)
        for _ in range(3):  # still full: still refused (or accepted only if it fits whole)
            ledger.post(30, pad=1000)
        filler.unlink()
        ledger.until(202, n=30, pad=1000)
        for _ in range(3):
            assert ledger.post(10, pad=100).status == 202
        assert server.stop() == 0
    finally:
        server.kill()  # the tmpfs is unmounted after this test: nothing may hold it open
    ledger.check_segments(server.data_dir)
    assert ledger.refused, "the disk never filled up"


# --- RLIMIT_FSIZE -------------------------------------------------------------------------------


def test_file_size_limit_answers_503_and_recovers(start_server: Start, rawconn: Connect) -> None:
    limit = 256 * KIB
    server = start_server()
    (pid,) = worker_pids(server)
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, hard))
    ledger = Ledger(rawconn(server.port))
    # 256 KiB at ~30 KiB per request: the active segment hits the limit within 10 requests.
    ledger.until(503, n=30, pad=1000, tries=20)
    # Once the probe has run, the writer starts a new segment, which is under the limit.
    ledger.until(202, n=30, pad=1000)
    for _ in range(12):  # enough to hit the limit in the new segment as well
        ledger.post(30, pad=1000)
    assert worker_pids(server) == [pid], "the worker died (SIGXFSZ?) instead of answering 503"
    with contextlib.suppress(ProcessLookupError):
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
    assert server.stop() == 0
    segments = read_segments(server.data_dir)
    assert len(segments) >= 2
    assert all(s.path.stat().st_size <= limit for s in segments)
    ledger.check_segments(server.data_dir)
    assert ledger.refused and ledger.accepted
