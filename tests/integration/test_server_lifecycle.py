"""Start, stop, restart and several workers of the real collector (issue 2 items 2, 5, 6).

- SIGTERM is a graceful stop: listeners close, idle connections close, a request in flight is
  finished and answered, the segments are sealed, and the process exits 0.
- `--workers 2`: two processes share the port (SO_REUSEPORT); each mints ids with its own
  Snowflake worker bits and writes its own segment files.
- After `kill -9`, a restart on the same data directory seals the orphaned `.open` segment,
  cutting a torn last line, and keeps every acknowledged event.
- The startup banner tells the user where the collector listens, where its data is and what
  the read token is (printed once, at creation).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.fixtures import rawhttp
from tests.fixtures.rawhttp import (
    RawConnection,
    child_pids,
    read_segments,
    request_bytes,
    snowflake_worker,
    wait_started,
    worker_pids,
)
from tests.fixtures.server import ServerProcess

rawconn = rawhttp.rawconn  # the fixture, for this module
Connect = Callable[..., RawConnection]
Start = Callable[..., ServerProcess]


def post(conn: RawConnection, events: list[dict[str, object]]) -> list[str]:
    resp = conn.exchange(request_bytes("POST", "/api/events", orjson.dumps(events)))
    assert resp.status == 202, resp.body
    return resp.json()["ids"]  # type: ignore[no-any-return]


def all_lines(data_dir: Path) -> dict[str, dict[str, object]]:
    lines: dict[str, dict[str, object]] = {}
    for seg in read_segments(data_dir):
        for line in seg.lines:
            assert line["id"] not in lines, f"id {line['id']} stored twice"
            lines[str(line["id"])] = line
    return lines


def test_sigterm_finishes_in_flight_requests_and_seals(start_server: Start,
                                                       rawconn: Connect) -> None:
    server = start_server()
    wait_started(server)
    before = post(rawconn(server.port), [{"event_type": "before"}] * 3)
    assert any(not s.sealed for s in read_segments(server.data_dir)), "no active segment"

    idle = rawconn(server.port)
    assert idle.exchange(request_bytes("GET", "/healthz")).status == 200
    body = orjson.dumps({"event_type": "in-flight"})
    in_flight = rawconn(server.port)
    in_flight.send(request_bytes("POST", "/api/events", headers={
        "Content-Length": str(len(body)), "Expect": "100-continue"}))
    # The 100 comes once the worker has parsed the head: from then on the request is in
    # flight (before, a SIGTERM could find the connection still idle and close it).
    assert in_flight.read_response().status == 100
    in_flight.send(body[:7])

    server.proc.send_signal(signal.SIGTERM)
    # The idle connection is closed once the worker starts draining, which is after its
    # listener was closed: from here on the stop is in progress.
    assert idle.wait_closed(timeout=15.0), "idle connection not closed on SIGTERM"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()

    in_flight.send(body[7:])
    resp = in_flight.read_response()
    assert resp.status == 202, resp.body
    assert resp.closes, "a response during shutdown must announce the close"
    assert in_flight.wait_closed()
    (late,) = resp.json()["ids"]

    assert server.proc.wait(timeout=30) == 0
    segments = read_segments(server.data_dir)
    assert segments and all(s.sealed for s in segments), [s.path.name for s in segments]
    assert all(s.torn_tail == b"" for s in segments)
    lines = all_lines(server.data_dir)
    assert set(before) | {late} <= set(lines)
    assert lines[late]["event_type"] == "in-flight"
    assert "segments sealed" in server.log()


def test_two_workers_share_the_port_with_their_own_ids_and_files(start_server: Start,
                                                                 rawconn: Connect) -> None:
    server = start_server(args=["--workers", "2"])
    wait_started(server)
    assert len(worker_pids(server)) == 2
    ids_by_worker: dict[int, list[str]] = {0: [], 1: []}
    health_workers: set[int] = set()
    # SO_REUSEPORT spreads new connections over the two listeners; 200 connections all
    # landing on one of two workers would be a broken distribution (odds 2**-199).
    for i in range(200):
        conn = rawconn(server.port)
        health_workers.add(conn.exchange(request_bytes("GET", "/healthz")).json()["worker"])
        for sid in post(conn, [{"event_type": "w", "params": {"i": i}}] * 2):
            ids_by_worker[snowflake_worker(sid)].append(sid)
        conn.close()
        if i >= 20 and all(ids_by_worker.values()) and len(health_workers) == 2:
            break
    assert health_workers == {0, 1}
    assert all(ids_by_worker.values()), "one worker got no request"
    for ids in ids_by_worker.values():  # strictly increasing per worker
        assert [int(i) for i in ids] == sorted({int(i) for i in ids})

    # SIGINT stops gracefully too.
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(timeout=30) == 0

    segments = read_segments(server.data_dir)
    assert all(s.sealed for s in segments)
    owners = {snowflake_worker(s.first_id) for s in segments}
    assert owners == {0, 1}, "each worker writes its own segment files"
    for seg in segments:
        assert {snowflake_worker(line["id"]) for line in seg.lines} == \
            {snowflake_worker(seg.first_id)}, f"{seg.path.name} mixes workers"
        assert seg.lines[0]["id"] == str(seg.first_id)
    lines = all_lines(server.data_dir)
    assert {i for ids in ids_by_worker.values() for i in ids} <= set(lines)


def test_restart_after_kill_recovers_a_torn_tail(start_server: Start, rawconn: Connect) -> None:
    server = start_server()
    acked = post(rawconn(server.port), [{"event_type": "pre-crash", "params": {"i": i}}
                                        for i in range(10)])
    server.kill()
    (open_seg,) = [s for s in read_segments(server.data_dir) if not s.sealed]
    intact = open_seg.path.read_bytes()
    torn = b'{"id":"1","event_type":"half-writ'
    with open(open_seg.path, "ab") as f:
        f.write(torn)

    log_before = len(server.log())
    again = start_server(data_dir=server.data_dir)
    banner = wait_started(again, since=log_before)
    # The operator is told which file was recovered and how many bytes were cut.
    name = re.escape(open_seg.path.name)
    assert re.search(rf"recovered segment \S*{name}\D*{len(torn)} torn bytes", banner), banner

    sealed_path = open_seg.path.with_name(open_seg.path.name.removesuffix(".open"))
    assert not open_seg.path.exists()
    assert sealed_path.read_bytes() == intact, "recovery must keep every complete line"
    lines = all_lines(again.data_dir)
    assert set(acked) <= set(lines)

    after = post(rawconn(again.port), [{"event_type": "post-crash"}])
    assert int(after[0]) > max(int(i) for i in acked)
    # A restart does not print the token again, only where it is kept.
    assert again.read_token not in banner
    assert f"read token  in {again.data_dir.resolve() / 'read_token'}" in banner
    assert again.stop() == 0


def test_killed_worker_is_restarted_and_recovers_its_segment(start_server: Start,
                                                             rawconn: Connect) -> None:
    server = start_server()
    wait_started(server)
    acked = post(rawconn(server.port), [{"event_type": "before-kill"}] * 5)
    (old_pid,) = worker_pids(server)
    (open_seg,) = [s for s in read_segments(server.data_dir) if not s.sealed]
    os.kill(old_pid, signal.SIGKILL)

    guard = time.monotonic() + 30  # the supervisor restarts it after a short backoff
    while True:
        assert time.monotonic() < guard, f"the worker was not restarted:\n{server.log()}"
        pids = worker_pids(server)
        if pids and pids != [old_pid]:
            try:
                if server.request("GET", "/healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
        time.sleep(0.05)
    assert server.proc.poll() is None, "the supervisor must survive a worker's death"
    # The new worker has the same Snowflake worker number, so it owns and recovers the file.
    assert not open_seg.path.exists()
    assert open_seg.path.with_name(open_seg.path.name.removesuffix(".open")).exists()
    after = post(rawconn(server.port), [{"event_type": "after-kill"}])
    assert int(after[0]) > max(int(i) for i in acked)
    assert server.stop() == 0
    assert set(acked) | set(after) <= set(all_lines(server.data_dir))


def test_startup_banner_shows_address_data_dir_and_token(start_server: Start) -> None:
    server = start_server()
    log = wait_started(server)
    assert f"listening   http://127.0.0.1:{server.port}" in log
    assert f"data        {server.data_dir.resolve()}" in log
    token = server.read_token
    assert len(token) >= 32
    assert re.search(rf"read token\s+{re.escape(token)}\s", log), log
    assert (server.data_dir / "read_token").stat().st_mode & 0o777 == 0o600


def test_sigterm_during_startup_stops_cleanly(start_server: Start) -> None:
    """A stop requested while the workers are still starting (systemd stopping a unit that
    is starting, a user's Ctrl-C) must not leave orphaned workers behind."""
    server = start_server(wait=False)
    deadline = time.monotonic() + 30
    while not (workers := worker_pids(server)):
        assert server.proc.poll() is None, server.log()
        assert time.monotonic() < deadline, "no worker process was started"
        time.sleep(0.01)
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(timeout=30)
    alive = [pid for pid in workers if _alive(pid)]
    assert alive == [], f"worker processes {alive} outlived their supervisor"
    assert code == 0, f"supervisor exited with {code}:\n{server.log()}"


def _alive(pid: int) -> bool:
    guard = time.monotonic() + 15  # a worker that is stopping gets time to finish
    while time.monotonic() < guard:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        if state == "Z":  # exited; its parent has not reaped it yet
            return False
        time.sleep(0.05)
    return True


def test_relative_data_dir_with_embedded_redis_and_loader(start_server: Start,
                                                          tmp_path: Path) -> None:
    """`make run`: the default `data` is relative to where the collector starts. The embedded
    redis-server changes into its own directory while reading its arguments, so every path it
    is given must be absolute (a relative log file once made it refuse to start)."""
    workdir = tmp_path / "w"  # short: the Redis socket path must fit in sun_path
    workdir.mkdir()
    server = start_server(cwd=workdir, data_dir=workdir / "data",
                          env={"COLLECTOR_REDIS_ENABLED": "true",
                               "COLLECTOR_LOADER_EMBEDDED": "true"})
    log = wait_started(server)
    assert f"data        {(workdir / 'data').resolve()}" in log
    assert (workdir / "data" / "redis" / "redis.log").exists()
    status, body = server.json("POST", "/api/events", {"event_type": "rel_dir", "ts": None})
    assert status == 202, body
    deadline = time.monotonic() + 20
    stats: dict[str, object] = {}
    events: dict[str, object] = {}
    while time.monotonic() < deadline:
        _, stats = server.json("GET", "/api/stats/rel_dir")
        _, events = server.json("GET", "/api/events", auth=True)
        if stats["total"] == 1 and events["total"] == 1:
            break
        time.sleep(0.2)
    assert stats["total"] == 1, stats  # counted in the embedded Redis
    assert events["total"] == 1, events  # and loaded into the store


def test_the_log_level_reaches_every_child(start_server: Start) -> None:
    """`collector --log-level DEBUG serve` used to log DEBUG in the supervisor only."""
    server = start_server(args=["--log-level", "DEBUG"],
                          env={"COLLECTOR_LOADER_EMBEDDED": "true"})
    wait_started(server)
    cmdlines = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                for pid, _ in child_pids(server.proc.pid)]
    children = [c for c in cmdlines if b"_worker" in c or b"loader" in c]
    assert len(children) == 2, cmdlines
    for argv in children:
        assert argv[argv.index(b"--log-level") + 1] == b"DEBUG", argv


def test_a_second_serve_on_the_same_data_directory_is_refused(start_server: Start,
                                                               rawconn: Connect) -> None:
    """It used to start: it killed the first one's embedded Redis as an orphan, sealed its open
    segment under it and minted the same ids into the same stream (acknowledged events lost)."""
    first = start_server(env={"COLLECTOR_REDIS_ENABLED": "true"})
    wait_started(first)
    redis_pid = (first.data_dir / "run" / "redis.pid").read_text().strip()
    second = start_server(data_dir=first.data_dir, wait=False)
    assert second.proc.wait(30) == 75
    assert "another collector serve (pid" in second.log()
    assert "own --data-dir" in second.log()
    assert (first.data_dir / "run" / "redis.pid").read_text().strip() == redis_pid
    assert Path(f"/proc/{redis_pid}").exists(), "the first server's Redis was stopped"
    post(rawconn(first.port), [{"event_type": "still_served"}])


def test_the_serve_lock_lasts_while_an_orphaned_worker_finishes(start_server: Start,
                                                                 rawconn: Connect) -> None:
    """The workers hold the lock too: after the supervisor is killed, a worker finishing an
    in-flight request (up to shutdown_timeout) must not meet a new worker 0 on its stream."""
    first = start_server()
    wait_started(first)
    (worker,) = worker_pids(first)
    slow = rawconn(first.port)
    slow.send(b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
              b"Expect: 100-continue\r\n\r\n")
    assert slow.read_response().status == 100  # the worker has the request in hand
    slow.send(b"{")
    os.kill(first.proc.pid, signal.SIGKILL)  # the supervisor only
    first.proc.wait()
    second = start_server(data_dir=first.data_dir, wait=False)
    assert second.proc.wait(30) == 75, second.log()
    assert Path(f"/proc/{worker}").exists(), "the worker was gone: the test proves nothing"


def test_two_data_directories_sharing_a_segment_directory_are_refused(
        start_server: Start, tmp_path: Path) -> None:
    """segments.dir may be absolute: two data directories can name the same one, and their
    worker 0s would mint the same ids into it."""
    shared = {"COLLECTOR_SEGMENTS_DIR": str(tmp_path / "shared-segments")}
    first = start_server(env=shared)
    wait_started(first)
    second = start_server(env=shared, data_dir=tmp_path / "other", wait=False)
    assert second.proc.wait(30) == 75, second.log()
    assert "shared-segments/.serve.lock" in second.log()
    assert first.request("GET", "/healthz")[0] == 200


def test_a_second_collector_on_the_same_port_is_refused(start_server: Start,
                                                        tmp_path: Path) -> None:
    """Several workers bind with SO_REUSEPORT, which let a second collector (another data
    directory, the same worker ids) silently take part of the port's traffic."""
    first = start_server(args=["--workers", "2"])
    wait_started(first)
    second = start_server(data_dir=tmp_path / "other", port=first.port, wait=False,
                          args=["--workers", "2"])
    assert second.proc.wait(30) != 0
    assert f"cannot listen on 127.0.0.1:{first.port}" in second.log(), second.log()
    assert "another collector or server listens there" in second.log()
    assert "Traceback" not in second.log()
    assert not list((tmp_path / "other").glob("run/ready-*")), "a worker of it started"
    assert first.request("GET", "/healthz")[0] == 200


def test_sighup_stops_the_collector_gracefully(start_server: Start) -> None:
    """A closed terminal sends SIGHUP: an ordered stop (segments sealed, exit 0), not death."""
    server = start_server(env={"COLLECTOR_REDIS_ENABLED": "true"})
    wait_started(server)
    assert server.request("POST", "/api/events", b'{"event_type": "x"}')[0] == 202
    redis_pid = int((server.data_dir / "run" / "redis.pid").read_text())
    os.killpg(server.proc.pid, signal.SIGHUP)  # the whole session, as a terminal does
    assert server.proc.wait(30) == 0, server.log()
    segments = list((server.data_dir / "segments").iterdir())
    assert segments and not [p for p in segments if p.name.endswith(".open")]
    assert not Path(f"/proc/{redis_pid}").exists() or _zombie(redis_pid)


def test_the_embedded_redis_stops_when_the_supervisor_is_killed(start_server: Start) -> None:
    server = start_server(env={"COLLECTOR_REDIS_ENABLED": "true"})
    wait_started(server)
    redis_pid = int((server.data_dir / "run" / "redis.pid").read_text())
    os.kill(server.proc.pid, signal.SIGKILL)  # the supervisor only
    server.proc.wait()
    deadline = time.monotonic() + 20
    while Path(f"/proc/{redis_pid}").exists() and not _zombie(redis_pid):
        assert time.monotonic() < deadline, "redis-server outlived its supervisor"
        time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return False


def test_metrics_counters_do_not_go_back_when_a_worker_is_restarted(
        start_server: Start) -> None:
    """The sum over the workers dropped by what a killed worker had counted (Prometheus reads
    a drop as a counter reset: a spike in rate())."""
    from tests.integration.test_server_ingest import metric, scrape

    server = start_server(args=["--workers", "2"])
    wait_started(server)
    for _ in range(40):  # fresh connections: SO_REUSEPORT spreads them over both workers
        assert server.request("POST", "/api/events", b'{"event_type": "x"}')[0] == 202
    run = server.data_dir / "run"
    def accepted(i: int) -> float:
        try:
            snap = orjson.loads((run / f"metrics-{i}.json").read_bytes())
        except FileNotFoundError:
            return 0.0
        return sum(v for _, v in snap["collector_events_accepted_total"]["values"])

    deadline = time.monotonic() + 10
    while accepted(0) + accepted(1) != 40:  # both workers' files written since the posts
        assert time.monotonic() < deadline, "the snapshots never added up to 40"
        time.sleep(0.2)
    assert metric(scrape(server), "collector_events_accepted_total") == 40
    counts = {i: accepted(i) for i in (0, 1)}
    victim = 0 if counts[0] else 1
    assert counts[victim] > 0
    (pid,) = [p for p, cmd in rawhttp.child_pids(server.proc.pid)
              if f"--index {victim}" in cmd]
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    deadline = time.monotonic() + 30
    while True:  # until the new worker has written its first snapshot
        pids = [p for p, cmd in rawhttp.child_pids(server.proc.pid)
                if f"--index {victim}" in cmd]
        snap = run / f"metrics-{victim}.json"
        if pids and pids != [pid] and snap.exists() and snap.stat().st_mtime > killed + 0.5:
            break
        assert time.monotonic() < deadline, "the worker was not restarted"
        time.sleep(0.1)
    for _ in range(20):  # either worker may answer: every answer must hold the 40
        assert metric(scrape(server), "collector_events_accepted_total") == 40
        time.sleep(0.1)


def test_an_embedded_redis_that_cannot_start_is_a_plain_message(start_server: Start,
                                                                 tmp_path: Path) -> None:
    """A data directory too long for a unix socket path gave a raw traceback."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = start_server(data_dir=deep, wait=False, env={"COLLECTOR_REDIS_ENABLED": "true"})
    assert_refused_in_one_line(server, "use a shorter --data-dir")


def assert_refused_in_one_line(server: ServerProcess, message: str) -> None:
    """`serve` exited 1 saying `message`, without a traceback."""
    assert server.proc.wait(30) == 1
    assert message in server.log()
    assert "Traceback" not in server.log()


def test_a_segment_directory_that_is_a_file_is_one_line(start_server: Start,
                                                       tmp_path: Path) -> None:
    data = tmp_path / "filed"
    data.mkdir()
    (data / "segments").write_text("not a directory")
    server = start_server(data_dir=data, wait=False)
    assert_refused_in_one_line(server, "segments as a directory: exists and is not a directory")


def test_open_segments_of_workers_that_no_longer_run_are_sealed(start_server: Start,
                                                               tmp_path: Path) -> None:
    # An audit: after a crash with --workers 2, a restart with one worker left worker 1's
    # .open file for ever (each worker recovers only its own).
    data = tmp_path / "fewer"
    segments = data / "segments"
    segments.mkdir(parents=True)
    first = ((1_700_000_000_000 - 1_451_606_400_000) << 22) | (1 << 12)  # worker 1, dc 0
    line = b'{"id":"%d","event_type":"a","ts":1,"params":{},"received_at":1}\n' % first
    open_path = segments / f"{first:020d}.ndjson.open"
    open_path.write_bytes(line + b'{"id":"17","event_ty')  # a torn tail
    server = start_server(data_dir=data)
    wait_started(server)
    assert not open_path.exists()
    assert (segments / f"{first:020d}.ndjson").read_bytes() == line
    assert server.stop() == 0
    assert not list(segments.glob("*.open"))
