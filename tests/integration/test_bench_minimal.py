"""bench/reference_minimal.py, the yardstick of rows m and n, does the work it is credited with.

Its figures are read against the collector's (a/m, d/n): a yardstick that answered 202 without
parsing or appending would flatter itself and shame the collector. So: over one keep-alive
connection, it stores every event of a single and of a batch request as one NDJSON line each,
and refuses a body that is not JSON or an event without a string event_type.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.fixtures.rawhttp import RawConnection
from tests.fixtures.server import ROOT, free_port


def _post(body: bytes) -> bytes:
    return (b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body))


@pytest.fixture
def minimal(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = free_port()
    events = tmp_path / "events.ndjson"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "reference_minimal.py"), "--port", str(port)],
        env={**os.environ, "BENCH_EVENTS_FILE": str(events)}, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                RawConnection.open(port).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port, events
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_stores_each_event_of_single_and_batch_requests(minimal: tuple[int, Path]) -> None:
    port, events = minimal
    one = {"event_type": "signup", "params": {"user_id": 1}}
    batch = [{"event_type": f"t{i}", "ts": 1_700_000_000 + i} for i in range(100)]
    conn = RawConnection.open(port)
    conn.send(_post(orjson.dumps(one)) + _post(orjson.dumps(batch)))
    responses = conn.read_responses(2)
    conn.close()
    assert [r.status for r in responses] == [202, 202]
    lines = events.read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == [one, *batch]


@pytest.mark.parametrize("body", [b"{not json", b'{"params": {}}', b'[{"event_type": 7}]'])
def test_refuses_what_is_not_an_event(minimal: tuple[int, Path], body: bytes) -> None:
    port, events = minimal
    conn = RawConnection.open(port)
    conn.send(_post(body))
    assert conn.read_responses(1)[0].status == 400
    conn.close()
    assert not events.exists() or events.read_bytes() == b""
