"""The crash test of issue 2 item 7: kill -9 under load, restart, nothing acknowledged is lost.

Several connections post batches as fast as the server answers. Mid-stream the whole process
group (supervisor and workers) is killed with SIGKILL. The collector is then restarted on the
same data directory, which recovers the orphaned `.open` segments, and stopped gracefully so
that every segment is sealed. Then:

- every line of every segment parses, and no file ends in a torn line;
- every id that got a 202 is in the segments exactly once, with the event that was sent;
- no id is in the segments twice (events of requests that never got an answer may or may not
  be there: the log is at-least-once for unacknowledged requests, SPEC §5).

Run twice: durability "os" with one worker, and "fsync" (group commit) with two workers, whose
recoveries must each seal only their own files.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
import pytest

from tests.fixtures.rawhttp import (
    RawConnection,
    read_segments,
    request_bytes,
    snowflake_worker,
    wait_started,
)
from tests.fixtures.server import ServerProcess

Start = Callable[..., ServerProcess]

CLIENTS = 16
"""Keep-alive connections. With two workers the kernel spreads connections over their
listening sockets by a hash of each connection's addresses (SO_REUSEPORT), and the test
asserts that both workers served: with 6 connections all of them landed on one worker in 1
run of 32 (it happened in CI); with 16, 1 in 32,768."""
LOAD_SECONDS = 1.5
"""How long the load runs before the kill (the kill lands mid-stream whatever the speed)."""


@dataclass
class Client:
    """One keep-alive connection posting batches until the server disappears."""

    index: int
    port: int
    acked: dict[str, str] = field(default_factory=dict)
    """id -> event_id of every event whose request got a 202."""
    requests: int = 0
    cut_off: bool = False
    """The connection broke while a request was waiting for its answer."""
    error: BaseException | None = None

    def run(self, stop: threading.Event) -> None:
        rng = random.Random(self.index)
        try:
            conn = RawConnection.open(self.port, timeout=10.0)
        except OSError as exc:
            self.error = exc
            return
        with conn:
            while not stop.is_set():
                n = rng.randint(1, 40)
                marks = [f"c{self.index}-{self.requests}-{i}" for i in range(n)]
                events = [{"event_type": "crash", "event_id": m,
                           "params": {"pad": "x" * rng.randint(0, 300)}} for m in marks]
                try:
                    resp = conn.exchange(request_bytes("POST", "/api/events",
                                                       orjson.dumps(events)))
                except (OSError, ConnectionError):
                    self.cut_off = True
                    return
                except BaseException as exc:  # a hang guard or a parse failure: report it
                    self.error = exc
                    return
                self.requests += 1
                if resp.status != 202:
                    self.error = AssertionError(f"{resp.status}: {resp.body[:200]!r}")
                    return
                ids = resp.json()["ids"]
                self.acked.update(zip(ids, marks, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize(("durability", "workers"), [("os", 1), ("fsync", 2)])
def test_kill_9_under_load_loses_no_acknowledged_event(start_server: Start, durability: str,
                                                       workers: int) -> None:
    env = {"COLLECTOR_SEGMENTS_DURABILITY": durability,
           # Small segments so that rolls (and seals) happen during the load too.
           "COLLECTOR_SEGMENTS_ROLL_BYTES": str(256 * 1024)}
    server = start_server(env=env, args=["--workers", str(workers)])
    wait_started(server)

    stop = threading.Event()
    clients = [Client(i, server.port) for i in range(CLIENTS)]
    threads = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    time.sleep(LOAD_SECONDS)
    server.kill()  # SIGKILL to the whole process group, while the clients keep posting
    stop.set()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a client hung after the kill"

    errors = [c.error for c in clients if c.error is not None]
    assert not errors, errors
    assert any(c.cut_off for c in clients), "the kill did not land mid-stream"
    acked = {sid: mark for c in clients for sid, mark in c.acked.items()}
    assert len(acked) == sum(len(c.acked) for c in clients), "an id was acknowledged twice"
    assert len(acked) > 100, f"only {len(acked)} events were acknowledged before the kill"
    # The kill must have been a crash, not a graceful stop (which seals and logs it). An open
    # segment is usually left behind too, unless the kill fell between a roll and the next
    # append, so that is not asserted.
    assert "segments sealed" not in server.log()

    log_start = len(server.log())
    again = start_server(env=env, args=["--workers", str(workers)], data_dir=server.data_dir)
    wait_started(again, since=log_start)
    assert again.stop() == 0

    segments = read_segments(again.data_dir)  # fails on any line that does not parse
    assert all(s.sealed for s in segments), [s.path.name for s in segments if not s.sealed]
    assert [s.path.name for s in segments if s.torn_tail] == []
    stored: dict[str, str] = {}
    for seg in segments:
        owner = snowflake_worker(seg.first_id)
        for line in seg.lines:
            sid = line["id"]
            assert sid not in stored, f"id {sid} is in the segments twice"
            assert snowflake_worker(sid) == owner, f"{seg.path.name} holds another worker's id"
            stored[sid] = line.get("event_id", "")
    missing = sorted(set(acked) - set(stored))
    assert missing == [], f"{len(missing)} acknowledged events lost, e.g. {missing[:5]}"
    assert all(stored[sid] == mark for sid, mark in acked.items()), \
        "an acknowledged id holds another event"
    if workers > 1:
        assert {snowflake_worker(sid) for sid in acked} == set(range(workers))
