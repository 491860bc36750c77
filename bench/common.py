"""Helpers of the ingestion benchmark: ports, CPU pinning, wrk output, RSS of a process tree.

Nothing here knows which server is under test; bench/ingest.py composes these pieces. Each
helper is small and pure where it can be (parsing, medians), so that it can be checked on a
captured wrk output without running anything.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# -- ports and CPUs -------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to 0, read, close).

    Known limit: another process may take it before the server binds it; the benchmark then
    fails to start that server and says so, it does not measure the wrong thing.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Pinning:
    """Which CPU the server and the load generator run on; `None` CPUs mean no pinning.

    `nice` (0: unchanged) is the niceness both run at. On a machine shared with other work a
    negative value (root only) gives the benchmark nearly all of both cores under the CFS
    scheduler, so the rows measure the servers rather than the neighbours. Where the kernel
    groups processes by session (autogroup), a process's own niceness only ranks it inside its
    session: see `set_autogroup_nice`, which the benchmark applies too.
    """

    server_cpu: int | None
    client_cpu: int | None
    reason: str
    nice: int = 0

    @property
    def pinned(self) -> bool:
        return self.server_cpu is not None

    def prefix(self, cpu: int | None) -> list[str]:
        """`taskset -c N` for a command line, or nothing when not pinning.

        taskset on the command line (rather than sched_setaffinity after start) pins the process
        before its first instruction, and every child it forks inherits the mask, so a
        supervisor's workers and its embedded Redis land on the same core.
        """
        pin = [] if cpu is None else ["taskset", "-c", str(cpu)]
        return pin + (["nice", "-n", str(self.nice)] if self.nice else [])


def plan_pinning(available: Iterable[int] | None = None, taskset: str | None = None,
                 nice: int = 0) -> Pinning:
    """Server on the first CPU this process may use, load generator on the second.

    Args:
        available: the CPUs this process may run on (default: `os.sched_getaffinity(0)`).
        taskset: path of the taskset binary (default: looked up on PATH).
        nice: niceness for the server and wrk (0: unchanged; negative needs root).
    """
    cpus = sorted(os.sched_getaffinity(0) if available is None else available)
    tool = shutil.which("taskset") if taskset is None else taskset
    niced = f", nice {nice}" if nice else ""
    if len(cpus) < 2:
        return Pinning(None, None, f"only {len(cpus)} CPU available: server and wrk share it, "
                                   f"no pinning (figures are not comparable to pinned runs){niced}",
                       nice)
    if not tool:
        return Pinning(None, None,
                       f"taskset not found (util-linux): running without pinning{niced}", nice)
    return Pinning(cpus[0], cpus[1], f"server on CPU {cpus[0]}, wrk on CPU {cpus[1]}{niced}",
                   nice)


def set_autogroup_nice(pid: int, nice: int, proc: Path = Path("/proc")) -> bool:
    """Give the scheduler autogroup (session) of `pid` the niceness `nice`; True if it took.

    With `kernel.sched_autogroup_enabled = 1` CFS first shares a CPU equally between sessions,
    then by niceness inside each; a server started in its own session competes with every
    other session as an equal whatever its nice value. Writing /proc/<pid>/autogroup ranks the
    whole session instead. False where autogroup is off or the write is refused (not root):
    the plain nice value then applies, or nothing does.
    """
    if nice == 0:
        return False
    try:
        (proc / str(pid) / "autogroup").write_text(f"{nice}\n")
    except OSError:
        return False
    return True


def cpu_model(cpuinfo: str | None = None) -> str:
    """The `model name` of /proc/cpuinfo (first CPU), or 'unknown'."""
    text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown"


def interpreter(maps: str | None = None) -> str:
    """The Python every server of the run uses (this one), and whether libpython is a shared
    library, read from /proc/self/maps.

    The build moves every Python row together, the yardstick rows with them: on one machine,
    Debian's python3.11 (built with PGO and LTO, libpython linked into the binary) ran them
    faster than a pyenv build with its defaults (no `--enable-optimizations`, a shared
    libpython; bench/README.md, session 10). Ratios barely move; absolute targets do.
    """
    try:
        text = Path("/proc/self/maps").read_text() if maps is None else maps
    except OSError:
        linked = "libpython unknown"
    else:
        linked = "libpython shared" if "/libpython" in text else "libpython linked in"
    return f"{platform.python_version()} {sys.executable} ({linked})"


def filesystem_of(path: Path, mounts: str | None = None) -> str:
    """The filesystem type holding `path` (longest matching mount point of /proc/mounts).

    It matters for the fsync row: on tmpfs an fsync costs nothing and the row would be moot.
    """
    text = Path("/proc/mounts").read_text() if mounts is None else mounts
    target = str(path.resolve())
    best, fstype = "", "unknown"
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1]
        inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) > len(best):
            best, fstype = mnt, parts[2]
    return fstype


# -- wrk output -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrkResult:
    """What one wrk run measured. Latencies in milliseconds."""

    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    socket_errors_detail: str = ""
    client_cpu_s: float = float("nan")  # CPU seconds wrk used, when the caller measured it

    @property
    def ok_requests_per_s(self) -> float:
        """Requests/s that got a 2xx: a server that answers 503 fast must not look fast."""
        if self.requests <= 0:
            return 0.0
        return self.requests_per_s * (self.requests - self.non_2xx) / self.requests


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = re.compile(r"^\s*([\d.]+)(us|ms|s|m|h)\s*$")
_PCT = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\S+)\s*$")
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)")
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)")
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKERR = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def duration_ms(text: str) -> float:
    """wrk's human duration ('621.00us', '2.10ms', '1.02s', '1.5m') in milliseconds."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Parse the text wrk prints with `--latency`.

    Raises:
        ValueError: a line the figures depend on is missing (wrk failed, or printed another
            format); the message quotes the output so the failure can be read.
    """
    percentiles: dict[str, float] = {}
    in_dist = False
    requests = seconds = rps = None
    non_2xx = socket_errors = 0
    detail = ""
    for line in output.splitlines():
        if line.strip() == "Latency Distribution":
            in_dist = True
            continue
        if in_dist:
            m = _PCT.match(line)
            if m:
                percentiles[m.group(1)] = duration_ms(m.group(2))
                continue
            in_dist = False
        if m := _TOTAL.match(line):
            requests = int(m.group(1))
            seconds = duration_ms(m.group(2) + m.group(3)) / 1000.0
        elif m := _RPS.match(line):
            rps = float(m.group(1))
        elif m := _NON2XX.search(line):
            non_2xx = int(m.group(1))
        elif m := _SOCKERR.search(line):
            socket_errors = sum(int(g) for g in m.groups())
            detail = line.strip().removeprefix("Socket errors: ")
    p50 = percentiles.get("50") or percentiles.get("50.00")
    p99 = percentiles.get("99") or percentiles.get("99.00")
    if requests is None or seconds is None or rps is None or p50 is None or p99 is None:
        raise ValueError(f"cannot read wrk output (was --latency given?):\n{output}")
    return WrkResult(requests=requests, seconds=seconds, requests_per_s=rps, p50_ms=p50,
                     p99_ms=p99, non_2xx=non_2xx, socket_errors=socket_errors,
                     socket_errors_detail=detail)


# -- RSS of a process tree ------------------------------------------------------------------------


def _children_map(proc: Path = Path("/proc")) -> dict[int, list[int]]:
    """ppid -> pids, from /proc/<pid>/stat (field 4, after the parenthesised command name)."""
    out: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended between listing and reading
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        rest = stat[stat.rfind(")") + 2:].split()
        if len(rest) >= 2:
            out.setdefault(int(rest[1]), []).append(int(entry.name))
    return out


def process_tree(root: int, proc: Path = Path("/proc")) -> list[int]:
    """`root` and all its descendants that exist now."""
    children = _children_map(proc)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def rss_kib(pid: int, proc: Path = Path("/proc")) -> int:
    """VmRSS of one process in KiB; 0 for a process that is gone (or a zombie)."""
    try:
        text = (proc / str(pid) / "status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _stat_fields(pid: int, proc: Path = Path("/proc")) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards), or None."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()


def tree_cpu_seconds(root: int, proc: Path = Path("/proc")) -> dict[int, float]:
    """CPU time (user + system, seconds) each process of the tree has used so far.

    Read before and after a run: `cpu_used(before, after) / wall` is the share of its core the
    server actually got. On a quiet machine a saturated one-process server is near 1.0; well
    below that, something else ran on the server's core and the run's absolute figures are
    depressed (ratios of rows run back to back suffer less).
    """
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for pid in process_tree(root, proc):
        f = _stat_fields(pid, proc)
        if f and len(f) > 12:
            out[pid] = (int(f[11]) + int(f[12])) / tick
    return out


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two `tree_cpu_seconds` reads (a process born in between
    counts from zero; one that died in between is lost, which only understates)."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


def loadavg() -> float:
    """The 1-minute load average: a coarse sign of other work on the machine during a run."""
    return float(Path("/proc/loadavg").read_text().split()[0])


@dataclass(slots=True)
class RssSample:
    t: float
    tree_kib: int
    largest_kib: int


@dataclass(slots=True)
class RssSampler:
    """Samples the RSS of a process tree every `interval` seconds on a background thread.

    The tree is walked again at every sample, so children started late (a restarted worker)
    are counted. The sum over the tree is what the machine pays; the largest single process
    is, for the collector, its worker.

    Use as a context manager around the load; read `samples`, `peak_tree_kib` after it.
    """

    root: int
    interval: float = 0.2
    samples: list[RssSample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()  # one last sample: a run shorter than the interval still has two

    def _sample(self) -> None:
        sizes = [rss_kib(pid) for pid in process_tree(self.root)]
        self.samples.append(RssSample(time.monotonic(), sum(sizes), max(sizes, default=0)))

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                return

    @property
    def peak_tree_kib(self) -> int:
        return max((s.tree_kib for s in self.samples), default=0)

    @property
    def peak_largest_kib(self) -> int:
        return max((s.largest_kib for s in self.samples), default=0)

    def tree_kib_after(self, t: float) -> int:
        """Peak tree RSS among the samples taken at or after monotonic time `t`."""
        return max((s.tree_kib for s in self.samples if s.t >= t), default=0)


# -- statistics -----------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """Median of the runs; NaN for no runs, so an empty row shows as such, not as zero."""
    return statistics.median(values) if values else float("nan")


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is zero or missing (a row that failed to run)."""
    return a / b if b and b == b else float("nan")
