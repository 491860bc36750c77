"""The loader daemon into a real SQLite file, and the query API handlers over it."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.config import Config
from collector.context import AppContext
from collector.http.message import Request
from collector.http.query_routes import routes
from collector.metrics import Metrics
from loader.analytics import userhours
from loader.checkpoint import Checkpoint, Position
from loader.daemon import EXIT_LOCKED, LoaderDaemon, checkpoint_path, is_event, main
from loader.lock import LoaderLock, LockHeld
from loader.status import fill_metrics, read_status
from loader.stores.base import user_text
from loader.stores.sqlite import SQLiteStore
from tests.fakes import FakeClock
from tests.fixtures.store import StreamWriter, event_line, loader_config, seal


def daemon_for(cfg: Config, clock: FakeClock) -> tuple[LoaderDaemon, SQLiteStore]:
    store = SQLiteStore(cfg.sqlite_file)
    return LoaderDaemon(cfg, store, clock), store


def all_ids(store: SQLiteStore) -> list[str]:
    total, events = store.query_events(page=1, limit=1000, start=None, end=None,
                                       event_types=None)
    assert total == len(events)
    return sorted(e["id"] for e in events)


def test_loads_in_batches_and_checkpoints_after_commit(data_dir: Path, stream: StreamWriter,
                                                        loader_clock: FakeClock) -> None:
    cfg = loader_config(data_dir, batch_size=7)
    events = stream.events(30)
    stream.write(events[:20])
    stream.write(events[20:], sealed=False)
    daemon, store = daemon_for(cfg, loader_clock)
    assert daemon.run_once() == 30
    assert all_ids(store) == sorted(e["id"] for e in events)
    assert daemon.counts["batches"] == 5  # 7 + 7 + 7 + 7 + 2
    saved = store.load_positions()  # committed with the last batch, in the store itself
    assert saved == daemon.positions
    assert saved[(0, 0)].segment == int(events[20]["id"])
    assert not checkpoint_path(cfg).exists()  # the JSON file is MongoDB's
    store.close()


def test_positions_commit_with_the_batch_or_not_at_all(
        data_dir: Path, stream: StreamWriter, loader_clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = loader_config(data_dir, batch_size=4)
    stream.write(stream.events(10))
    daemon, store = daemon_for(cfg, loader_clock)
    batch = daemon.tailer.read({}, 4)
    daemon._load(batch.lines, batch.positions, batch.streams)
    committed = store.load_positions()
    assert committed == batch.positions and store.count() == 4

    def fail(con: Any, ids: Any, min_ts: Any) -> None:  # the last step before the positions
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(userhours, "enqueue", fail)
    second = daemon.tailer.read(daemon.positions, 4)
    with pytest.raises(sqlite3.OperationalError):
        daemon._load(second.lines, second.positions, second.streams)
    # Neither the rows, nor their daily counts, nor the position moved.
    assert store.load_positions() == committed == daemon.positions
    assert store.count() == 4
    assert sum(n for _, _, n in store.daily_stats(None, None, None)) == 4
    monkeypatch.undo()
    assert daemon.run_once() == 6 and store.count() == 10
    store.close()


def test_restart_resumes_from_the_checkpoint(data_dir: Path, stream: StreamWriter,
                                             loader_clock: FakeClock) -> None:
    cfg = loader_config(data_dir)
    stream.write(stream.events(10))
    daemon, store = daemon_for(cfg, loader_clock)
    daemon.run_once()
    store.close()
    more = stream.events(5)
    stream.write(more)
    again, store = daemon_for(cfg, loader_clock)
    assert again.run_once() == 5  # only the new segment was read
    assert again.counts["events_inserted"] == 5
    assert store.count() == 15
    store.close()


def test_replay_from_a_stale_position_inserts_nothing_twice(
        data_dir: Path, stream: StreamWriter, loader_clock: FakeClock) -> None:
    cfg = loader_config(data_dir)
    stream.write(stream.events(25))
    daemon, store = daemon_for(cfg, loader_clock)
    daemon.run_once()
    # A position older than the store: MongoDB's file after a crash between the insert and
    # the rename, or a store restored from a backup newer than its positions.
    replay = LoaderDaemon(cfg, store, loader_clock)
    replay.positions = {}
    assert replay.run_once() == 25
    assert replay.counts["events_inserted"] == 0
    assert store.count() == 25
    assert store.daily_stats(None, None, None)[0][2] + sum(
        n for _, _, n in store.daily_stats(None, None, None)[1:]) == 25
    store.close()


def test_picks_up_new_lines_and_segments_while_running(data_dir: Path,
                                                       stream: StreamWriter) -> None:
    cfg = loader_config(data_dir, poll_interval=0.01)
    store = SQLiteStore(cfg.sqlite_file)
    daemon = LoaderDaemon(cfg, store, FakeClock())
    first = stream.events(3)
    path = stream.write(first, sealed=False)
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: daemon.counts["events_loaded"] == 3)
        second = stream.events(2)
        with open(path, "ab") as f:
            f.write(b"".join(event_line(e) for e in second))
        wait_for(lambda: daemon.counts["events_loaded"] == 5)
        seal(path)
        third = stream.events(4)
        stream.write(third)
        daemon.tailer._refresh_interval = 0  # the fake clock does not move: list every pass
        wait_for(lambda: daemon.counts["events_loaded"] == 9)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert all_ids(store) == sorted(e["id"] for e in first + second + third)
    store.close()


def wait_for(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_bad_lines_are_counted_and_skipped(data_dir: Path, stream: StreamWriter,
                                           loader_clock: FakeClock) -> None:
    cfg = loader_config(data_dir)
    good = stream.events(2)
    path = stream.directory / f"{int(good[0]['id']):020d}.ndjson"
    path.write_bytes(event_line(good[0]) + b"\x00\x00garbage\n" + event_line(good[1]))
    daemon, store = daemon_for(cfg, loader_clock)
    assert daemon.run_once() == 2
    assert daemon.counts["bad_lines"] == 1
    assert all_ids(store) == sorted(e["id"] for e in good)
    store.close()


def test_store_failure_keeps_the_position_and_retries(data_dir: Path, stream: StreamWriter,
                                                      loader_clock: FakeClock) -> None:
    cfg = loader_config(data_dir)
    events = stream.events(5)
    stream.write(events)
    daemon, store = daemon_for(cfg, loader_clock)
    real = store.insert_parsed

    def failing(objects: list[Any], **kw: Any) -> Any:
        raise OSError("disk full")

    store.insert_parsed = failing  # type: ignore[method-assign]
    with pytest.raises(OSError):
        daemon.run_once()
    assert daemon.positions == {} and store.load_positions() == {}
    store.insert_parsed = real  # type: ignore[method-assign]
    assert daemon.run_once() == 5
    assert store.count() == 5
    store.close()


# -- retention ---------------------------------------------------------------------------------
def age(path: Path, seconds: float, now: float) -> None:
    os.utime(path, (now - seconds, now - seconds))


def test_retention_deletes_only_old_fully_loaded_sealed_segments(
        data_dir: Path, loader_clock: FakeClock) -> None:
    cfg = loader_config(data_dir, retention_days=1.0, batch_size=4)
    now = loader_clock.time()
    w = StreamWriter(data_dir / "segments")
    loaded_old = w.write(w.events(3))
    loaded_young = w.write(w.events(3))
    partly = w.write(w.events(6))
    open_old = w.write(w.events(2), sealed=False)
    other = StreamWriter(data_dir / "segments", worker=5)
    never_loaded = other.write(other.events(2))
    for p in (loaded_old, partly, open_old, never_loaded):
        age(p, 3 * 86_400, now)
    age(loaded_young, 3_600, now)
    daemon, store = daemon_for(cfg, loader_clock)
    # Committed: stream 0-0 up to the middle of `partly`; nothing of stream 0-5.
    daemon.positions = {(0, 0): Position(int(partly.name[:20]), 10)}
    assert daemon.apply_retention() == 1
    assert not loaded_old.exists()
    assert loaded_young.exists() and partly.exists() and open_old.exists()
    assert never_loaded.exists()
    store.close()


def test_retention_keeps_the_segment_of_the_position_until_the_stream_moves_on(
        data_dir: Path, stream: StreamWriter, loader_clock: FakeClock) -> None:
    cfg = loader_config(data_dir, retention_days=0.5)
    first = stream.write(stream.events(3))
    age(first, 86_400, loader_clock.time())
    daemon, store = daemon_for(cfg, loader_clock)
    daemon.run_once()  # fully read, but the stream has nothing newer yet
    assert first.exists() and daemon.apply_retention() == 0
    stream.write(stream.events(2))
    loader_clock.advance(120)  # next listing and next retention sweep are due
    assert daemon.run_once() == 2  # the pass applies retention after loading
    assert not first.exists()
    assert daemon.counts["segments_deleted"] == 1 and store.count() == 5
    assert daemon.tailer.skipped_segments == 0
    store.close()


def wipe(cfg: Config) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{cfg.sqlite_file}{suffix}").unlink(missing_ok=True)


def test_a_wiped_store_takes_its_positions_along(
        data_dir: Path, stream: StreamWriter, loader_clock: FakeClock) -> None:
    cfg = loader_config(data_dir)
    stream.write(stream.events(4))
    daemon, store = daemon_for(cfg, loader_clock)
    daemon.run_once()
    store.close()
    wipe(cfg)
    again, store = daemon_for(cfg, loader_clock)
    assert again.positions == {} and not again.start_over_if_store_is_empty()
    assert again.run_once() == 4 and store.count() == 4
    store.close()


def test_positions_file_over_an_emptied_store_loads_everything_again(
        data_dir: Path, stream: StreamWriter, loader_clock: FakeClock) -> None:
    """The JSON file (MongoDB's) outlives a wiped store; the daemon notices at start."""
    cfg = loader_config(data_dir)
    stream.write(stream.events(4))
    store = SQLiteStore(cfg.sqlite_file)
    daemon = LoaderDaemon(cfg, store, loader_clock,
                          checkpoint=Checkpoint(checkpoint_path(cfg)))
    daemon.run_once()
    assert Checkpoint(checkpoint_path(cfg)).load() == daemon.positions
    store.close()
    wipe(cfg)
    store = SQLiteStore(cfg.sqlite_file)
    again = LoaderDaemon(cfg, store, loader_clock, checkpoint=Checkpoint(checkpoint_path(cfg)))
    assert again.run_once() == 0  # the file says: all loaded
    assert again.start_over_if_store_is_empty()
    assert again.run_once() == 4 and store.count() == 4
    assert not again.start_over_if_store_is_empty()  # not empty any more
    store.close()


def test_retention_makes_the_store_durable_before_deleting(
        data_dir: Path, stream: StreamWriter, loader_clock: FakeClock) -> None:
    cfg = loader_config(data_dir, retention_days=0.5)
    old = stream.write(stream.events(3))
    age(old, 86_400, loader_clock.time())
    stream.write(stream.events(2))
    daemon, store = daemon_for(cfg, loader_clock)
    seen: list[bool] = []
    real_sync = store.sync

    def sync() -> None:
        seen.append(old.exists())  # the segment is still there when the barrier runs
        real_sync()

    store.sync = sync  # type: ignore[method-assign]
    assert daemon.run_once() == 5  # loads both segments, then applies retention
    assert not old.exists() and daemon.counts["segments_deleted"] == 1
    assert seen == [True]
    assert daemon.apply_retention() == 0 and seen == [True]  # nothing to delete: no fsync
    store.close()


def test_readers_in_threads_see_whole_batches_while_the_loader_writes(tmp_path: Path) -> None:
    writer = SQLiteStore(tmp_path / "events.db")
    reader = SQLiteStore(tmp_path / "events.db", readonly=True)
    w = StreamWriter(tmp_path)
    batches = [w.events(100, ts=1_700_000_000 + i) for i in range(40)]
    errors: list[BaseException] = []
    seen: list[int] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                total, events = reader.query_events(page=1, limit=50, start=None, end=None,
                                                    event_types=["click"])
                everything, _ = reader.query_events(page=1, limit=1, start=None, end=None,
                                                    event_types=None)
                assert everything % 100 == 0  # a batch is visible whole or not at all
                assert len(events) == min(50, total)
                seen.append(everything)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for batch in batches:
            writer.insert_batch(batch)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert seen and reader.count() == 4000
    reader.close()
    writer.close()


# -- one loader per data directory -------------------------------------------------------------
def test_second_loader_exits_while_the_first_holds_the_lock(
        data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = loader_config(data_dir)
    lock = LoaderLock(cfg.run_path / "loader.lock")
    lock.acquire()
    try:
        assert main(cfg) == EXIT_LOCKED
        assert f"pid {os.getpid()}" in capsys.readouterr().err
        with pytest.raises(LockHeld):
            LoaderLock(cfg.run_path / "loader.lock").acquire()
    finally:
        lock.release()
    other = LoaderLock(cfg.run_path / "loader.lock")
    other.acquire()  # released: free again
    other.release()


# -- status and metrics ------------------------------------------------------------------------
def test_status_file_reports_positions_lag_and_counts(data_dir: Path, stream: StreamWriter,
                                                      loader_clock: FakeClock) -> None:
    cfg = loader_config(data_dir, batch_size=4)
    stream.write(stream.events(6))
    daemon, store = daemon_for(cfg, loader_clock)
    batch = daemon.tailer.read({}, 4)
    daemon._load(batch.lines, batch.positions, batch.streams)
    stop = threading.Event()
    stop.set()
    daemon.run(stop, status_file=cfg.run_path / "loader.json")
    status = read_status(cfg)
    assert status is not None
    assert status["events_loaded"] == 4 and status["batches"] == 1
    assert status["lag_bytes"] > 0 and status["lag_events"] >= 1
    assert status["streams"]["0-0"]["offset"] == daemon.positions[(0, 0)].offset
    metrics = Metrics()
    fill_metrics(metrics, status, loader_clock.time())
    assert metrics.get("loader_up") == 1
    assert metrics.get("loader_events_loaded_total") == 4
    assert metrics.get("loader_lag_bytes") == status["lag_bytes"]
    fill_metrics(metrics, status, loader_clock.time() + 60)
    assert metrics.get("loader_up") == 0
    # A stale status (the loader is down): its totals still hold, its last lag does not.
    stale = Metrics()
    fill_metrics(stale, status, loader_clock.time() + 60)
    snapshot = stale.snapshot()
    assert snapshot["loader_lag_bytes"]["values"] == []
    assert snapshot["loader_lag_events"]["values"] == []
    assert stale.get("loader_events_loaded_total") == 4
    store.close()


def test_main_serves_metrics_and_stops_on_sigterm(data_dir: Path, stream: StreamWriter) -> None:
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stream.write(stream.events(5))
    cfg = loader_config(data_dir, poll_interval=0.01)
    result: list[int] = []
    # Signal handlers need the main thread: run main() here and probe from a helper thread.
    text: list[str] = []
    done = threading.Event()

    def probe() -> None:
        try:
            wait_for(lambda: (read_status(cfg) or {}).get("events_loaded") == 5)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read()
                text.append(body.decode())
                if "loader_events_loaded_total 5" in text[-1]:
                    break
                time.sleep(0.05)
        finally:
            if not done.is_set():  # never signal pytest itself once main() has returned
                os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=probe)
    helper.start()
    try:
        result.append(main(cfg, metrics_port=port))
    finally:
        done.set()
        helper.join()
    assert result == [0]
    assert "loader_events_loaded_total 5" in text[-1]
    # Counters that never moved are there at zero (alerts see 0, not "no data").
    for zero in ("loader_errors_total 0", "loader_bad_lines_total 0",
                 "loader_segments_deleted_total 0", "loader_segments_skipped_total 0"):
        assert f"\n{zero}\n" in text[-1], zero
    assert "\nloader_batch_seconds_count " in text[-1]
    assert SQLiteStore(cfg.sqlite_file, readonly=True).count() == 5


# -- the query API handlers --------------------------------------------------------------------
TOKEN = "s3cret"


def request(method: str, path: str, body: bytes = b"", *, query: str = "",
            token: str | None = TOKEN, ctype: str = "application/json") -> Request:
    headers = [(b"content-type", ctype.encode())]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return Request(method, path, query, tuple(headers), body)


@pytest.fixture
async def api(data_dir: Path, stream: StreamWriter) -> Any:
    cfg = loader_config(data_dir)
    events = stream.events(30, types=("signup", "click", "view"))
    for i, e in enumerate(events):
        e["ts"] = 1_700_000_000 + i * 100
    stream.write(events)
    writer = SQLiteStore(cfg.sqlite_file)
    LoaderDaemon(cfg, writer, FakeClock()).run_once()
    writer.close()
    ctx = AppContext(config=cfg, clock=FakeClock(), loop=asyncio.get_running_loop(),
                     metrics=Metrics(), read_token=TOKEN)
    assert ctx.store is None  # routes() opens its own readonly store when the app has none
    handlers = {(r.method, r.path): r.handler for r in routes(ctx)}
    yield handlers, events
    ctx.store.close()


async def call(api: Any, req: Request) -> tuple[int, dict[str, Any]]:
    handlers, _ = api
    resp = await handlers[(req.method, req.path)](req)
    return resp.status, orjson.loads(resp.body)


async def test_get_events_pages_newest_first(api: Any) -> None:
    _, events = api
    status, body = await call(api, request("GET", "/api/events", query="page=2&limit=10"))
    assert status == 200
    assert (body["page"], body["limit"], body["total"]) == (2, 10, 30)
    assert [e["id"] for e in body["events"]] == [e["id"] for e in reversed(events)][10:20]


async def test_reads_need_the_token(api: Any) -> None:
    status, body = await call(api, request("GET", "/api/events", token=None))
    assert status == 401 and "read_token" in body["message"]
    status, _ = await call(api, request("POST", "/api/events/query", b"{}", token="wrong"))
    assert status == 403


async def test_basic_credentials_get_401_naming_the_bearer_scheme(api: Any) -> None:
    req = request("GET", "/api/events", token=None)
    req = Request(req.method, req.path, req.query_string,
                  (*req.headers, (b"authorization", b"Basic dXNlcjpwYXNz")), req.body)
    resp = await api[0][("GET", "/api/events")](req)
    assert resp.status == 401
    assert ("WWW-Authenticate", "Bearer") in resp.headers
    assert "'Basic' credentials" in orjson.loads(resp.body)["message"]
    # A token sent without its scheme is not echoed back.
    req = Request(req.method, req.path, req.query_string,
                  (*req.headers[:1], (b"authorization", b"s3cr3t-token")), req.body)
    resp = await api[0][("GET", "/api/events")](req)
    assert resp.status == 401 and b"s3cr3t" not in resp.body


async def test_get_takes_the_same_filters_as_the_query_body(api: Any) -> None:
    _, events = api
    expected = [e["id"] for e in reversed(events)
                if 1_700_000_100 <= e["ts"] <= 1_700_001_000 and e["event_type"] in ("signup",
                                                                                     "view")]
    query = ("startDate=1700000100&endDate=1700001000&eventType=signup&eventType%5B%5D=view"
             "&limit=3&_=123")  # an unknown parameter (a cache buster) is ignored
    status, out = await call(api, request("GET", "/api/events", query=query))
    assert status == 200 and out["total"] == len(expected) > 3
    assert [e["id"] for e in out["events"]] == expected[:3]
    status, out = await call(api, request("GET", "/api/events", query="startDate=yesterday"))
    assert status == 400 and "UNIX seconds" in out["message"]


async def test_json_sent_as_curl_sends_it_is_read_as_json(api: Any) -> None:
    """`curl -d '{...}'` labels the body application/x-www-form-urlencoded."""
    _, events = api
    body = b' {"eventType": "click", "limit": 2}'
    status, out = await call(api, request("POST", "/api/events/query", body,
                                          ctype="application/x-www-form-urlencoded"))
    assert status == 200, out
    assert out["total"] == sum(e["event_type"] == "click" for e in events)
    assert out["limit"] == 2


async def test_query_json_body_filters_by_range_and_types(api: Any) -> None:
    _, events = api
    body = orjson.dumps({"startDate": 1_700_000_100, "endDate": "1700001000",
                         "eventType": ["signup", "view"], "limit": 3})
    status, out = await call(api, request("POST", "/api/events/query", body))
    expected = [e for e in reversed(events)
                if 1_700_000_100 <= e["ts"] <= 1_700_001_000
                and e["event_type"] in ("signup", "view")]
    assert status == 200 and out["total"] == len(expected)
    assert [e["id"] for e in out["events"]] == [e["id"] for e in expected[:3]]


async def test_query_form_body_with_repeated_types_and_empty_dates(api: Any) -> None:
    _, events = api
    form = b"eventType=click&eventType%5B%5D=view&startDate=&endDate=&page=1"
    status, out = await call(api, request("POST", "/api/events/query", form,
                                          ctype="application/x-www-form-urlencoded"))
    assert status == 200
    assert out["total"] == sum(e["event_type"] in ("click", "view") for e in events)


async def test_limit_is_capped_and_bad_values_get_400(api: Any) -> None:
    status, out = await call(api, request("GET", "/api/events", query="limit=5000"))
    assert status == 200 and out["limit"] == 1000 and len(out["events"]) == 30
    for body, words in [(b'{"page": 0}', "page starts at 1"), (b'{"limit": "x"}', "limit"),
                        (b'{"startDate": "yesterday"}', "UNIX seconds"),
                        (b'{"startDate": 1700000000000}', "milliseconds"),
                        (b'{"startDate": 20, "endDate": 10}', "after endDate"),
                        (b'{"eventType": 5}', "eventType"), (b'{"event_type": "a"}', "unknown"),
                        (b"[1]", "JSON object"), (b"{", "not valid JSON")]:
        status, out = await call(api, request("POST", "/api/events/query", body))
        assert status == 400 and out["error"] == "bad_query", body
        assert words in out["message"], (body, out["message"])
    status, _ = await call(api, request("GET", "/api/events", query="page=-1"))
    assert status == 400


# -- parsed lines into rows: the fast path agrees with is_event and stores the event -----------
_ID0 = 1_058_897_343_283_200_000
_numbers = st.one_of(st.floats(1e9, 2e9, allow_nan=False), st.integers(0, 2_000_000_000))
# Only values orjson.loads can give: integers in [-2**63, 2**64 - 1], finite floats.
_users = st.one_of(st.integers(-5, 2**64 - 1), st.text(max_size=3), st.none(), st.booleans(),
                   st.floats(-2, 2, allow_nan=False), st.lists(st.integers(0, 3), max_size=2),
                   st.dictionaries(st.sampled_from("ab"), st.integers(0, 3), max_size=1))
_oddities = st.one_of(st.none(), st.booleans(), st.text(max_size=2), st.lists(st.integers()),
                      st.integers(2**63, 2**64 - 1),
                      st.floats(allow_nan=False, allow_infinity=False).map(lambda x: -x))


@st.composite
def _object(draw: st.DrawFn, n: int) -> Any:
    """A parsed segment line: mostly events as the collector writes them, some with optional
    fields, some broken in one field."""
    if draw(st.integers(0, 30)) == 0:
        return draw(st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers())))
    params: dict[str, Any] = draw(st.dictionaries(st.sampled_from(["a", "b"]),
                                                  st.integers(0, 9), max_size=2))
    if draw(st.booleans()):
        params["user_id"] = draw(_users)
    e: dict[str, Any] = {"id": str(_ID0 + n), "event_type": draw(st.sampled_from("xyz")),
                         "ts": draw(_numbers), "params": params, "received_at": draw(_numbers)}
    for name, values in (("event_id", st.one_of(st.none(), st.sampled_from(["k1", "k2"]))),
                         ("sent_at", st.one_of(st.none(), _numbers)),
                         ("client_ts", _numbers)):
        if draw(st.integers(0, 5)) == 0:
            e[name] = draw(values)
    if draw(st.integers(0, 6)) == 0:
        del e[draw(st.sampled_from(["params", "received_at"]))]
    if draw(st.integers(0, 5)) == 0:  # one field broken
        field = draw(st.sampled_from(["id", "event_type", "ts", "params", "received_at",
                                      "event_id", "sent_at"]))
        e[field] = draw(st.one_of(_oddities, st.sampled_from([
            "١٢٣", str(2**63), "9" * 20, "12a", "", -1, _ID0 + n, str(_ID0 + n)[1:]])))
    return e


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), size=st.integers(0, 80))
def test_parsed_lines_are_stored_as_their_events(data: st.DataObject, size: int) -> None:
    objects = [data.draw(_object(n)) for n in range(size)]
    valid = [e for e in objects if is_event(e)]
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "events.db")
        try:
            done = store.insert_parsed(objects, is_event=is_event, positions=None)
            assert done.bad == len(objects) - len(valid)
            assert sorted(map(int, done.ids)) == sorted(int(e["id"]) for e in valid)
            con = store._writer
            assert con is not None
            got = {r[0]: r[1:] for r in con.execute("SELECT * FROM events")}
            # First of each event_id in line order wins (the store inserts the events that
            # have one in the order of their lines; a broken id such as str(_ID0 + n)[1:] puts
            # the lines out of id order); ids are unique here, so that is the only loss.
            kept, seen = [], set()
            for e in valid:
                if e.get("event_id") is not None:
                    if e["event_id"] in seen:
                        continue
                    seen.add(e["event_id"])
                kept.append(e)
            assert done.inserted == len(kept) == len(got)
            for e in kept:
                params = e.get("params") or {}
                ts = e["ts"]
                ra = e.get("received_at")
                assert got[int(e["id"])] == (
                    e["event_type"], float(ts), orjson.dumps(params).decode(),
                    float(ts if ra is None else ra), e.get("event_id"),
                    None if e.get("sent_at") is None else float(e["sent_at"]),
                    user_text(params.get("user_id"))), e
            daily = con.execute("SELECT date(ts, 'unixepoch'), event_type, COUNT(*) "
                                "FROM events GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
            assert store.daily_stats(None, None, None) == [tuple(r) for r in daily]
        finally:
            store.close()


def test_user_ids_are_stored_as_text_whatever_their_json_type(tmp_path: Path) -> None:
    # Integer users in the int64 range are bound as ints and stored as text by the column's
    # affinity; 0 must not be taken for "no user", nor any user for the absent sentinel.
    users: list[Any] = [0, -1, 7, 2**63 - 1, -(2**63), 2**63, 2**64 - 1, "0", "", "0.5", 0.5,
                        1.0, True, False, None, [1], {"a": 1}, "\u00e9", ...]
    lines = []
    for n, user in enumerate(users):
        params = {"plan": "pro"} if user is ... else {"user_id": user}
        lines.append(orjson.dumps({"id": str(_ID0 + n), "event_type": "a", "ts": 1.5e9 + n,
                                   "params": params, "received_at": 1.5e9 + n}))
    events = [orjson.loads(x) for x in lines]
    mixed = [*events[:3], {**events[3], "event_id": "k"}, *events[4:]]  # the other path
    for batch in (events, mixed):
        store = SQLiteStore(tmp_path / f"{len(list(tmp_path.iterdir()))}.db")
        try:
            done = store.insert_parsed(batch, is_event=is_event)
            assert done.inserted == len(users)
            con = store._writer
            assert con is not None
            got = con.execute("SELECT user_id, typeof(user_id) FROM events ORDER BY id").fetchall()
            want = [user_text(None if u is ... else u) for u in users]
            assert [g[0] for g in got] == want
            assert {g[1] for g in got} == {"text", "null"}
        finally:
            store.close()


# --- the analytics pass behind the load -------------------------------------------------------


def summarized(store: SQLiteStore) -> int:
    """Events folded into the analytics tables (each counted once in its user-hour)."""
    con = store._writer
    assert con is not None
    (n,) = con.execute("SELECT COALESCE(SUM(n), 0) FROM user_hours").fetchone()
    return int(n)


def with_user(store: SQLiteStore) -> int:
    con = store._writer
    assert con is not None
    (n,) = con.execute("SELECT COUNT(*) FROM events WHERE user_id IS NOT NULL").fetchone()
    return int(n)


def test_run_once_loads_then_folds_every_batch_into_the_tables(
        data_dir: Path, stream: StreamWriter, loader_clock: FakeClock) -> None:
    cfg = loader_config(data_dir, batch_size=7)
    stream.write(stream.events(30))
    daemon, store = daemon_for(cfg, loader_clock)
    assert daemon.load_once() == 30
    con = store._writer
    assert con is not None
    # Loaded, queued, not yet summarized: the load does not touch the tables.
    assert userhours.pending_since(con) is not None and summarized(store) == 0
    assert daemon.summarize() == 5 and daemon.counts["analytics_batches"] == 5
    assert userhours.pending_since(con) is None
    assert summarized(store) == with_user(store) > 0
    store.close()


def test_a_crash_between_the_load_and_the_pass_summarizes_every_event_once(
        data_dir: Path, stream: StreamWriter, loader_clock: FakeClock) -> None:
    cfg = loader_config(data_dir, batch_size=4)
    stream.write(stream.events(10))
    daemon, store = daemon_for(cfg, loader_clock)
    assert daemon.load_once() == 10
    store.close()  # what kill -9 leaves: batches committed with their queue rows, no pass
    daemon, store = daemon_for(cfg, loader_clock)
    assert daemon.run_once() == 0  # nothing to load again; the pass catches up
    assert store.count() == 10 and summarized(store) == with_user(store) > 0
    daemon.summarize()  # a second pass finds nothing
    assert summarized(store) == with_user(store)
    store.close()


def test_a_failing_pass_does_not_stop_loading_and_is_retried(
        data_dir: Path, stream: StreamWriter, loader_clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = loader_config(data_dir, batch_size=4)
    stream.write(stream.events(10))
    daemon, store = daemon_for(cfg, loader_clock)

    def fail(con: Any, max_batches: int = 0) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(userhours, "apply_pending", fail)
    assert daemon.run_once() == 10 and store.count() == 10
    assert daemon.counts["analytics_errors"] == 1 and summarized(store) == 0
    monkeypatch.undo()
    stream.write(stream.events(3))
    assert daemon.run_once() == 3  # loads on; the pass waits for its retry delay
    assert summarized(store) == 0
    loader_clock.advance(6.0)
    assert daemon.run_once() == 0
    assert summarized(store) == with_user(store) > 0 and daemon.counts["analytics_errors"] == 1
    store.close()


def test_the_status_is_written_between_the_batches_of_a_long_pass(
        data_dir: Path, stream: StreamWriter, loader_clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # An audit: a loader working through a backlog of minutes left loader.json as the
    # previous loader had written it (its pid, its counts) until the backlog was done.
    cfg = loader_config(data_dir, batch_size=5)
    stream.write(stream.events(30))
    daemon, store = daemon_for(cfg, loader_clock)
    written: list[int] = []
    daemon._status_to = (None, lambda status: written.append(status["events_loaded"]))
    load = daemon._load

    def slow_load(*args: Any) -> int:
        loader_clock.advance(2.0)  # each batch takes two seconds
        return load(*args)

    monkeypatch.setattr(daemon, "_load", slow_load)
    assert daemon.load_once() == 30
    assert len(written) >= 5 and written == sorted(written) and written[-1] >= 25
    store.close()
