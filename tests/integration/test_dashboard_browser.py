"""The dashboard at GET / in a real headless Chromium, against a real collector fed by the
generator: the charts show the numbers the APIs give, the token is asked for once and kept,
and the page requests nothing outside the collector.

Chromium is driven through chromedriver's W3C WebDriver HTTP API with http.client (a few JSON
calls: new session, navigate, execute script, screenshot), so the test needs no Python
package beyond the standard library. It is skipped only when no chromium binary exists
(`apt-get install chromium chromium-driver`; .ci/run installs both).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from collector import gen
from loader.analytics import brute
from tests.fixtures.server import ServerProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1280,2200"]


# --- a minimal WebDriver client ---------------------------------------------------------------


class WebDriverError(Exception):
    pass


class Browser:
    """One chromedriver process and one session; every call times out (hang guard)."""

    def __init__(self, driver_port: int, profile: Path) -> None:
        self.port = driver_port
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM,
                                   "args": [*CHROME_FLAGS, f"--user-data-dir={profile}"]},
        }}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = orjson.dumps(body) if body is not None else None
            conn.request(method, path, body=data,
                         headers={"Content-Type": "application/json"} if data else {})
            doc = orjson.loads(conn.getresponse().read() or b"{}")
        finally:
            conn.close()
        value = doc.get("value", doc)
        if isinstance(value, dict) and "error" in value:
            raise WebDriverError(f"{value['error']}: {value.get('message', '')[:500]}")
        return value if "sessionId" not in doc else doc

    def _s(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self._s("POST", "/url", {"url": url})

    def js(self, script: str, *args: Any) -> Any:
        return self._s("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self._s("GET", "/screenshot")))

    def wait_for(self, script: str, what: str, timeout: float = 30.0) -> Any:
        """Poll `script` (a JS expression body returning a value) until it is truthy."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.js(script)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last value {value!r}")

    def quit(self) -> None:
        with contextlib.suppress(OSError, WebDriverError):
            self._s("DELETE", "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Callable[[], Browser]]:
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("no chromium/chromedriver binary (apt-get install chromium chromium-driver)")
    port = _free_port()
    env = dict(os.environ, TZ="UTC")
    driver = subprocess.Popen([CHROMEDRIVER, f"--port={port}"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sessions: list[Browser] = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("chromedriver did not start") from None
                time.sleep(0.05)

        def start() -> Browser:
            profile = Path(tempfile.mkdtemp(prefix="profile-", dir=tmp_path))
            b = Browser(port, profile)
            sessions.append(b)
            return b

        yield start
    finally:
        for b in sessions:
            b.quit()
        driver.terminate()
        try:
            driver.wait(10)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()


# --- the collector ----------------------------------------------------------------------------


def feed(server: ServerProcess, total: int, *, seed: int, days: float) -> None:
    now = time.time()
    code = gen.main(["-u", f"{server.url}/api/events", "--total", str(total), "--seed",
                     str(seed), "--batch", "50", "--concurrency", "8", "--no-progress",
                     "--startTime", str(now - days * 86400), "--endTime", str(now - 1)])
    assert code == 0


def all_events(server: ServerProcess, expected: int) -> list[dict[str, Any]]:
    """Every stored event through the API, once the loader has loaded `expected` of them."""
    deadline = time.monotonic() + 60
    while True:
        status, doc = server.json("GET", "/api/events?limit=1", auth=True)
        assert status == 200
        if doc["total"] >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert doc["total"] == expected, "the loader did not load every event in time"
    events: list[dict[str, Any]] = []
    page = 1
    while len(events) < expected:
        status, doc = server.json("GET", f"/api/events?limit=1000&page={page}", auth=True)
        events.extend(doc["events"])
        page += 1
    return events


@pytest.fixture
def fed_server(start_server: Callable[..., ServerProcess]) -> tuple[ServerProcess,
                                                                     list[dict[str, Any]]]:
    server = start_server(env={"COLLECTOR_REDIS_ENABLED": "true",
                               "COLLECTOR_LOADER_EMBEDDED": "true"})
    feed(server, 3000, seed=11, days=1.8)
    return server, all_events(server, 3000)


READ = """
const q = (sel) => [...document.querySelectorAll(sel)];
return {
  refreshes: Number(document.body.dataset.refreshes),
  total: document.getElementById('stats-total').dataset.value,
  series: {...document.getElementById('series').dataset},
  types: q('#types li[data-event-type]').map((li) => [li.dataset.eventType,
                                                        Number(li.dataset.count)]),
  uniques: q('#uniques g[data-date]').map((g) => [g.dataset.date, Number(g.dataset.users)]),
  peak: q('#peak rect[data-weekday]').map((r) => [Number(r.dataset.weekday),
                                                   Number(r.dataset.hour),
                                                   Number(r.dataset.count)]),
  flows: q('#flows tr[data-from]').map((tr) => [tr.dataset.from, tr.dataset.to,
                                                 Number(tr.dataset.count)]),
  funnel: q('#funnel [data-step]').map((d) => [d.dataset.eventType, Number(d.dataset.users),
                                                Number(d.dataset.conversion)]),
  events: q('#events tr[data-id]').map((tr) => tr.dataset.id),
  errors: q('.error').filter((e) => !e.hidden).map((e) => e.id + ': ' + e.textContent),
  dialog: !document.getElementById('token-dialog').hidden,
  resources: performance.getEntriesByType('resource').map((r) => r.name),
  origin: location.origin,
};
"""


@pytest.mark.browser
@pytest.mark.slow
def test_dashboard_shows_the_collected_numbers(
        fed_server: tuple[ServerProcess, list[dict[str, Any]]],
        browser: Callable[[], Browser], tmp_path: Path) -> None:
    server, events = fed_server
    b = browser()
    b.get(server.url + "/")
    # No token yet: the page asks for it instead of showing a 401.
    b.wait_for("return !document.getElementById('token-dialog').hidden", "the token dialog")
    asked_at = time.time()
    b.js("document.getElementById('token-input').value = arguments[0];"
         "document.getElementById('token-save').click();", server.read_token)
    b.wait_for("return document.querySelectorAll('#events tr[data-id]').length == 20 && "
               "document.querySelectorAll('#funnel [data-step]').length == 5 && "
               "document.getElementById('stats-total').dataset.value !== ''",
               "every panel to load")
    before = b.js("return Number(document.body.dataset.refreshes)")
    b.wait_for(f"return Number(document.body.dataset.refreshes) > {before}", "a quiet refresh")
    page = b.js(READ)
    b.screenshot(tmp_path / "dashboard.png")

    assert page["errors"] == []
    assert not page["dialog"]
    # Real-time stats: the 48 h total, its series and the types are those of /api/stats.
    status, stats = server.json("GET", f"/api/stats?granularity={page['series']['granularity']}")
    assert status == 200
    assert int(page["total"]) == stats["total"] == len(events)
    assert int(page["series"]["sum"]) == stats["total"]
    points = stats["series"][page["series"]["granularity"]]
    assert int(page["series"]["points"]) == len(points)
    assert page["types"] == [[t["event_type"], t["count"]] for t in stats["types"]]
    # Analytics over the last 7 days, checked against brute force over the stored events.
    now = time.time()
    utc = ZoneInfo("UTC")  # the browser runs with TZ=UTC
    week = (now - 7 * 86400, now)
    # The page asked between asked_at and now: if a UTC midnight passed in between, its 7
    # days may start one day earlier than now's.
    candidates = [[[d["date"], d["users"]] for d in brute.uniques(events, t - 7 * 86400, t,
                                                                   utc)["days"]]
                  for t in (asked_at, now)]
    assert page["uniques"] in candidates
    matrix = brute.peak_times(events, *week, utc)["matrix"]
    assert page["peak"] == [[w, h, matrix[w][h]] for w in range(7) for h in range(24)]
    assert sum(c for _, _, c in page["peak"]) == len(events)
    assert page["flows"] == [[f["from"], f["to"], f["count"]]
                             for f in brute.flows(events, *week, 10)["flows"]]
    funnel = brute.funnel(events, ["page_view", "search", "add_to_cart", "checkout",
                                   "purchase"], 3600, *week)["steps"]
    assert page["funnel"] == [[s["event_type"], s["users"], s["conversion"]] for s in funnel]
    assert funnel[0]["users"] > funnel[-1]["users"] > 0
    newest = sorted(events, key=lambda e: (e["ts"], int(e["id"])), reverse=True)[:20]
    assert page["events"] == [e["id"] for e in newest]
    # Nothing but the collector itself was requested.
    assert page["resources"], "the page fetched nothing?"
    assert all(url.startswith(page["origin"] + "/") for url in page["resources"])


@pytest.mark.browser
@pytest.mark.slow
def test_the_token_is_kept_and_a_wrong_one_is_asked_again(
        start_server: Callable[..., ServerProcess], browser: Callable[[], Browser]) -> None:
    server = start_server(env={"COLLECTOR_LOADER_EMBEDDED": "true"})
    b = browser()
    b.get(server.url + "/")
    b.js("localStorage.setItem('collector.readToken', 'not-the-token')")
    b.get(server.url + "/")
    b.wait_for("return !document.getElementById('token-dialog').hidden",
               "the dialog after a 403")
    reason = b.js("return document.getElementById('token-reason').textContent")
    assert "refused" in reason
    b.js("document.getElementById('token-input').value = arguments[0];"
         "document.getElementById('token-save').click();", server.read_token)
    b.wait_for("return document.getElementById('token-dialog').hidden && "
               "document.getElementById('events').dataset.total === '0'", "the events table")
    # Reloaded: the token comes from localStorage, no dialog.
    b.get(server.url + "/")
    b.wait_for("return document.getElementById('events').dataset.total === '0'",
               "the events table after a reload")
    assert b.js("return document.getElementById('token-dialog').hidden") is True
    # Real-time stats are off on this collector: that panel says so, the others still work.
    errors = b.js("return [...document.querySelectorAll('.error')].filter((e) => !e.hidden)"
                  ".map((e) => e.id)")
    assert set(errors) == {"series-error", "types-error"}


def test_the_page_and_its_files_forbid_other_origins(server: ServerProcess) -> None:
    status, headers, body = server.request("GET", "/")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    csp = headers["content-security-policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'"):
        assert directive in csp
    assert "unsafe-inline" not in csp
    for path in ("/static/dashboard.js", "/static/dashboard.css"):
        status, headers, text = server.request("GET", path)
        assert status == 200
        body += text
    # No absolute URL in what the page is made of, except the SVG namespace name.
    stripped = body.replace(b"http://www.w3.org/2000/svg", b"")
    assert b"http://" not in stripped and b"https://" not in stripped
    assert b"//cdn" not in stripped
