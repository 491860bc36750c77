"""The generator over real sockets: against the real collector (through ./reg.sh, as a user
runs it) and against tiny asyncio servers that misbehave on purpose; then the analytics
endpoints of that collector, over HTTP, against the brute-force reference."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from collector import gen
from collector.clock import SystemClock
from loader.analytics import brute
from tests.fixtures.server import ROOT, ServerProcess, free_port

REG_SH = ROOT / "reg.sh"


def run_reg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REG_SH), *args], capture_output=True, text=True, timeout=timeout,
                          cwd="/")


def loaded_events(server: ServerProcess, expected: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    total = -1
    while time.monotonic() < deadline:
        status, doc = server.json("GET", "/api/events?limit=1", auth=True)
        assert status == 200
        total = doc["total"]
        if total >= expected:
            break
        time.sleep(0.2)
    assert total == expected, f"the loader loaded {total} of {expected} events in time"
    events: list[dict[str, Any]] = []
    for page in range(1, expected // 1000 + 2):
        events.extend(server.json("GET", f"/api/events?limit=1000&page={page}", auth=True)[1]
                      ["events"])
    return events


@pytest.fixture
def loaded(start_server: Callable[..., ServerProcess]) -> tuple[ServerProcess,
                                                                list[dict[str, Any]]]:
    server = start_server(env={"COLLECTOR_LOADER_EMBEDDED": "true"})
    now = int(time.time())
    result = run_reg("-u", f"{server.url}/api/events", "--total", "2500", "--concurrency", "20",
                     "--seed", "3", "--startTime", str(now - 3 * 86400), "--endTime",
                     str(now - 1), "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "accepted 2500, failed 0" in result.stdout
    assert "events/s" in result.stdout and "p99" in result.stdout
    return server, loaded_events(server, 2500)


def test_reg_sh_feeds_the_collector_and_analytics_agree(
        loaded: tuple[ServerProcess, list[dict[str, Any]]]) -> None:
    server, events = loaded
    assert {type(e["params"]["user_id"]) for e in events} == {int}
    now = time.time()
    week = (now - 7 * 86400, now)
    ny = ZoneInfo("America/New_York")

    status, doc = server.json("GET", "/api/analytics/peak-times?tz=America/New_York",
                              auth=True)
    assert (status, doc) == (200, brute.peak_times(events, *week, ny))
    status, doc = server.json("GET", "/api/analytics/uniques?tz=Asia/Kolkata", auth=True)
    # A local midnight between `now` and the request would shift the list of days by one.
    assert status == 200
    later = time.time()
    assert doc in [brute.uniques(events, t - 7 * 86400, t, ZoneInfo("Asia/Kolkata"))
                   for t in (now, later)]
    status, doc = server.json("GET", "/api/analytics/users?top=5", auth=True)
    assert (status, doc) == (200, brute.users(events, *week, 5))
    status, doc = server.json("GET", "/api/analytics/flows?start=search", auth=True)
    assert (status, doc) == (200, brute.flows(events, *week, 50, "search"))
    status, doc = server.json("GET", "/api/analytics/rollup?period=day", auth=True)
    assert (status, doc) == (200, brute.rollup(events, "day", *week))
    steps = ["page_view", "add_to_cart", "purchase"]
    status, doc = server.json("POST", "/api/analytics/funnel",
                              {"steps": steps, "window": 1800}, auth=True)
    assert (status, doc) == (200, brute.funnel(events, steps, 1800, *week))
    assert doc["steps"][0]["users"] > doc["steps"][2]["users"] > 0


def test_analytics_over_http_need_the_token_and_valid_parameters(server: ServerProcess) -> None:
    status, doc = server.json("GET", "/api/analytics/users")
    assert (status, doc["error"]) == (401, "unauthorized")
    status, doc = server.json("GET", "/api/analytics/peak-times?tz=Nowhere", auth=True)
    assert (status, doc["error"]) == (400, "bad_param")
    status, doc = server.json("POST", "/api/analytics/funnel", {"steps": "a"}, auth=True)
    assert (status, doc["error"]) == (400, "bad_param")
    status, doc = server.json("GET", "/api/analytics/flows", auth=True)
    assert (status, doc) == (200, {"flows": []})
    status, help_doc = server.json("GET", "/help")
    assert "/api/analytics/funnel" in orjson.dumps(help_doc).decode()


def test_write_key_failures_make_the_exit_code_non_zero(
        start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(env={"COLLECTOR_AUTH_WRITE_KEYS": "k1"})
    uri = f"{server.url}/api/events"
    refused = run_reg("-u", uri, "--total", "30", "--concurrency", "3", "--no-progress")
    assert refused.returncode == 1
    assert "accepted 0, failed 30" in refused.stdout
    assert "HTTP 401" in refused.stdout
    ok = run_reg("-u", uri, "--total", "30", "--concurrency", "3", "--no-progress",
                 "--write-key", "k1", "--batch", "7")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "sent 30 events in 5 requests" in ok.stdout


def test_nothing_listening_fails_every_event() -> None:
    result = run_reg("-u", f"http://127.0.0.1:{free_port()}/api/events", "--total", "12",
                     "--concurrency", "4", "--no-progress")
    assert result.returncode == 1
    assert "accepted 0, failed 12" in result.stdout
    assert "ConnectionRefusedError" in result.stdout


def test_reg_sh_help_shows_the_seed_options() -> None:
    result = run_reg("-h")
    assert result.returncode == 0
    for flag in ("-u URI", "--total", "--startTime", "--endTime", "--concurrency"):
        assert flag in result.stdout


# --- tiny servers -----------------------------------------------------------------------------


class TinyServer:
    """An asyncio HTTP/1.1 server on a thread; `respond(request_number)` returns the raw
    response bytes, or None to drop the connection without answering."""

    def __init__(self, respond: Callable[[int], bytes | None]) -> None:
        self.respond = respond
        self.requests = 0
        self.connections = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                self.requests += 1
                answer = self.respond(self.requests)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> TinyServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def accepted(extra: bytes = b"") -> bytes:
    body = b'{"status":"accepted","accepted":1,"ids":["1"]}'
    return b"HTTP/1.1 202 Accepted\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def run_gen(port: int, total: int, concurrency: int = 2) -> tuple[int, str]:
    out = io.StringIO()
    opts = gen.parse_options(["-u", f"http://127.0.0.1:{port}/api/events", "--total",
                              str(total), "--concurrency", str(concurrency), "--no-progress",
                              "--timeout", "10"], time.time())
    return gen.run(opts, clock=SystemClock(), out=out), out.getvalue()


@pytest.fixture
def tiny() -> Iterator[Callable[[Callable[[int], bytes | None]], TinyServer]]:
    servers: list[TinyServer] = []

    def start(respond: Callable[[int], bytes | None]) -> TinyServer:
        s = TinyServer(respond).__enter__()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.__exit__(None, None, None)


def test_keep_alive_reuses_connections(tiny: Any) -> None:
    server = tiny(lambda n: accepted())
    code, out = run_gen(server.port, 200, concurrency=4)
    assert code == 0, out
    assert server.requests == 200
    assert server.connections == 4


def test_connection_close_is_followed_by_a_new_connection(tiny: Any) -> None:
    server = tiny(lambda n: accepted(b"Connection: close\r\n"))
    code, out = run_gen(server.port, 25, concurrency=2)
    assert code == 0, out
    assert server.connections == 25


def test_a_dropped_connection_fails_only_its_request(tiny: Any) -> None:
    server = tiny(lambda n: None if n % 10 == 0 else accepted())
    code, out = run_gen(server.port, 40, concurrency=1)
    assert code == 1
    assert "accepted 36, failed 4" in out
    assert server.connections == 4  # a new one after each of the first three drops


def test_runs_as_a_module() -> None:
    result = subprocess.run([sys.executable, "-m", "collector", "gen", "--total", "-3",
                             "-u", "http://x/"], capture_output=True, text=True, cwd=ROOT,
                            timeout=60)
    assert result.returncode == 2
    assert "must not be negative" in result.stderr


