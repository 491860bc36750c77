"""Composition root of one worker process: build everything, serve, stop in order.

Start order: segment log (recovering this worker's torn `.open` files) -> writer -> Redis
counters -> store reader -> router -> listening socket. Stop order is the reverse of what
matters for "an acknowledged event is never lost": stop accepting, finish in-flight requests,
seal the segment (fsync + rename), then flush the counters and close Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path

from collector.clock import Clock, SystemClock
from collector.config import Config
from collector.context import AppContext
from collector.http import handlers
from collector.http.listener import Listener
from collector.http.parser import ParserLimits
from collector.http.protocol import (
    ServerState,
    drain_connections,
    protocol_factory,
    sweep_forever,
)
from collector.http.router import Route, Router
from collector.metrics import Metrics
from collector.metrics_files import read_snapshot, write_snapshot
from collector.snowflake import SnowflakeGenerator
from collector.storage.rejected import RejectedLog
from collector.storage.segment_log import SegmentLog
from collector.storage.writer import SegmentWriter

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0
FLUSH_AFTER_REQUESTS = 32
"""Requests waiting for the segment writer that make it append and answer them before the
end of the event-loop iteration (see SegmentWriter.flush_if_queued). Fewer keep clients of
large batches from waiting on the whole iteration; more save writes and wakeups on small
requests. 32 against 16, alternating 4-5 s runs at 64 connections (session 12): one-event
requests +1 to +4%, batches of 100 the same (10,800 and 10,780 against 10,830 and 10,180/s);
64 gave one-event requests a little more and batches 5% less (bench/README, session 12)."""


def describe_metrics(m: Metrics) -> None:
    m.describe("collector_requests_total", "counter", "HTTP requests by route and status")
    m.describe("collector_request_duration_seconds", "histogram",
               "time from a complete request to its response being written")
    m.describe("collector_events_accepted_total", "counter", "events written to segments")
    m.describe("collector_events_rejected_total", "counter",
               "events refused, by reason: every event of a refused batch (all or nothing), "
               "and 1 for a body that could not be read as events")
    m.describe("collector_requests_rejected_total", "counter", "rejected requests by reason")
    m.describe("collector_segment_bytes_total", "counter", "bytes appended to segments")
    m.describe("collector_segment_rotations_total", "counter", "segments sealed")
    m.describe("collector_segment_fsyncs_total", "counter", "fsync calls on segments")
    m.describe("collector_segment_write_errors_total", "counter",
               "segment writes that failed (disk full, I/O error, file gone)")
    m.describe("collector_segment_writes_refused_total", "counter",
               "writes refused at once while storage was unavailable")
    m.describe("collector_rejected_recorded_total", "counter",
               "rejected bodies kept in the rejected/ directory")
    m.describe("collector_rejected_failures_total", "counter",
               "rejected bodies that could not be kept")
    m.describe("collector_storage_unavailable_total", "counter",
               "requests answered 503 because segments could not be written")
    m.describe("collector_connections_open", "gauge", "open client connections")
    m.describe("collector_connections_opened_total", "counter", "accepted connections")
    m.describe("collector_protocol_errors_total", "counter", "malformed requests by status")
    m.describe("collector_timeouts_total", "counter", "connections closed by a timeout")
    m.describe("collector_processor_errors_total", "counter", "request-path processor failures")


@dataclass(slots=True)
class Worker:
    """One running worker: its context, server and background tasks."""

    ctx: AppContext
    state: ServerState
    server: Listener | None = None
    ticker: asyncio.Task[None] | None = None
    sweeper: asyncio.Task[None] | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


def build_context(cfg: Config, worker_index: int, loop: asyncio.AbstractEventLoop,
                  clock: Clock | None = None) -> AppContext:
    clock = clock or SystemClock()
    metrics = Metrics()
    describe_metrics(metrics)
    worker_id = cfg.server.worker_id + worker_index
    ctx = AppContext(config=cfg, clock=clock, loop=loop, metrics=metrics,
                     worker_index=worker_index)
    ctx.ids = SnowflakeGenerator(cfg.server.datacenter_id, worker_id, clock)
    seg = cfg.segments
    segment_log = SegmentLog(cfg.segments_path, cfg.server.datacenter_id, worker_id,
                             seg.roll_bytes, seg.roll_seconds, clock)
    for path, removed in segment_log.recover():
        log.warning("recovered segment %s (%d torn bytes cut)", path, removed)
    ctx.writer = SegmentWriter(segment_log, seg.durability, loop, clock,
                               fsync_max_delay=seg.fsync_max_delay)
    ctx.rejected = RejectedLog(cfg.rejected_path, seg.rejected_max_file_bytes,
                               seg.rejected_max_files, seg.rejected_body_bytes, clock)
    cfg.run_path.mkdir(parents=True, exist_ok=True)
    return ctx


async def attach_processors(ctx: AppContext) -> None:
    """The request-path processors of `processors.request`, in order (collector/processors.py)."""
    from collector import processors

    for name in ctx.config.processors.request:
        if name == "redis_stats":
            await attach_redis(ctx)
            continue
        try:
            proc = processors.load(name)(ctx)
            start = getattr(proc, "start", None)
            if start is not None:
                await start()
        except Exception:
            # A processor that cannot start (its Kafka is down) does not stop ingestion
            # (SPEC §10): the collector runs without it, and says so. Its events stay in the
            # segments, from which they can be sent later.
            ctx.metrics.inc("collector_processor_errors_total",
                            processor=name.rpartition(":")[2])
            log.exception("processor %s could not start; running without it until the worker "
                          "restarts", name)
            continue
        ctx.processors.append(proc)
        log.info("processor %s attached", name)


async def attach_redis(ctx: AppContext) -> None:
    """Redis counters on the request path, when a Redis URL is known (never fatal)."""
    cfg = ctx.config
    if not cfg.stats_enabled or not cfg.redis.url:
        log.info("real-time stats are off (%s)", "no redis.url" if cfg.stats_enabled else
                 "redis.enabled is false, or processors.request has no redis_stats")
        return
    from collector.storage.counters import StatsCounters
    from collector.storage.redis_client import make_redis_client

    ctx.redis = make_redis_client(cfg.redis, cfg.redis.url)
    ctx.counters = StatsCounters(ctx.redis, cfg.redis, cfg.stats, ctx.clock, ctx.metrics)
    await ctx.counters.start()
    ctx.processors.append(ctx.counters)


def attach_store(ctx: AppContext) -> None:
    """The event store, opened for reading by the query and analytics routes."""
    try:
        from loader.stores import open_store
    except ImportError:
        return
    try:
        ctx.store = open_store(ctx.config, readonly=True)
    except Exception as e:  # the store is optional for ingestion: say why reads will fail
        log.warning("event store not available for reads: %s", e)


def build_router(ctx: AppContext) -> Router:
    router = Router()
    feature_routes: list[Route] = []
    for module_name in (
        "collector.http.stats_routes",
        "collector.http.query_routes",
        "collector.http.analytics_routes",
        "collector.http.dashboard",
    ):
        try:
            module = __import__(module_name, fromlist=["routes"])
            feature_routes.extend(module.routes(ctx))
        except ImportError as e:
            log.warning("routes of %s not available: %s", module_name, e)
    router.add_all(handlers.routes(ctx, router.routes))
    router.add_all(feature_routes)
    return router


def make_state(ctx: AppContext, router: Router) -> ServerState:
    s = ctx.config.server
    metrics = ctx.metrics
    limits = ParserLimits(
        max_request_line=s.max_request_line_bytes,
        max_header_bytes=s.max_header_bytes,
        max_body=s.max_body_bytes,
    )
    cells: dict[str, dict[int, list[float]]] = {}
    buckets, latency = metrics.histogram("collector_request_duration_seconds")
    bounds = len(buckets)

    def new_cell(route: str, status: int) -> list[float]:
        # Unknown paths all share the label "unmatched" (set by the protocol), and the label
        # set is capped, so a scanner cannot grow it without bound.
        label = route if sum(map(len, cells.values())) <= 1000 else "other"
        cell = cells.setdefault(route, {})[status] = metrics.cell(
            "collector_requests_total", route=label, status=str(status))
        return cell

    def on_request(route: str, status: int, seconds: float) -> None:
        # Runs once per request: a cached counter cell (two dict hits, no key tuple to build)
        # and observe_into's histogram update, inlined (a third cheaper together, callgrind).
        try:
            cell = cells[route][status]
        except KeyError:
            cell = new_cell(route, status)
        cell[0] += 1
        i = bisect_left(buckets, seconds)
        if i < bounds:  # (past the last bound, only +Inf, which is the count, holds it)
            latency[i] += 1
        latency[-2] += seconds
        latency[-1] += 1

    return ServerState(
        router=router, metrics=metrics, limits=limits,
        header_timeout=s.header_timeout, body_timeout=s.body_timeout,
        keepalive_timeout=s.keepalive_timeout, max_connections=s.max_connections,
        write_buffer_high=s.write_buffer_high, on_request=on_request,
        after_read=functools.partial(ctx.writer.flush_if_queued, FLUSH_AFTER_REQUESTS),
    )


def make_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def _update_metrics(worker: Worker) -> None:
    """Copy what the parts count themselves into the worker's metrics."""
    ctx = worker.ctx
    w = ctx.writer
    m = ctx.metrics
    m.set("collector_connections_open", len(worker.state.connections))
    m.set("collector_segment_rotations_total", w.segments_rolled)
    m.set("collector_segment_fsyncs_total", w.fsyncs)
    m.set("collector_segment_write_errors_total", w.write_errors)
    m.set("collector_segment_writes_refused_total", w.writes_refused)
    m.set("collector_rejected_recorded_total", ctx.rejected.recorded)
    m.set("collector_rejected_failures_total", ctx.rejected.failures)


async def _ticker(worker: Worker) -> None:
    ctx = worker.ctx
    run_dir = ctx.config.run_path
    failing = False
    while True:
        await asyncio.sleep(TICK_SECONDS)
        try:
            ctx.writer.tick()
            _update_metrics(worker)
            write_snapshot(run_dir, ctx.worker_index, ctx.metrics.snapshot())
        except OSError as e:
            # A full disk, say: tried again every tick, logged once.
            if not failing:
                log.warning("cannot write the metrics snapshot in %s (%s); the other workers' "
                            "/metrics miss this one's numbers until it can", run_dir, e)
            failing = True
            continue
        except Exception:
            log.exception("worker tick failed")
            continue
        if failing:
            log.warning("metrics snapshot written again in %s", run_dir)
            failing = False


async def start_worker(cfg: Config, worker_index: int = 0, *,
                       clock: Clock | None = None) -> Worker:
    loop = asyncio.get_running_loop()
    ctx = build_context(cfg, worker_index, loop, clock)
    await attach_processors(ctx)
    attach_store(ctx)
    from collector.auth import ensure_read_token

    ctx.read_token, _ = ensure_read_token(cfg)
    router = build_router(ctx)
    state = make_state(ctx, router)
    worker = Worker(ctx=ctx, state=state)
    # The counts of the worker this one replaces (a restart), so that sums never go back.
    ctx.metrics.carry_over(read_snapshot(cfg.run_path, worker_index))
    sock = make_socket(cfg.server.host, cfg.server.port, reuse_port=cfg.server.workers > 1)
    with contextlib.suppress(OSError):  # inherited by the accepted sockets
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Not loop.create_server: uvloop accepts one connection per loop turn (listener.py).
    worker.server = Listener(loop, sock, protocol_factory(state, loop))
    worker.server.start()
    worker.ticker = asyncio.create_task(_ticker(worker))
    worker.sweeper = asyncio.create_task(sweep_forever(state))
    return worker


async def stop_worker(worker: Worker) -> None:
    ctx = worker.ctx
    if worker.server is not None:
        worker.server.close()
    await drain_connections(worker.state, ctx.config.server.shutdown_timeout)
    for task in (worker.ticker, worker.sweeper):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    await ctx.writer.close()
    for proc in ctx.processors:
        if proc is ctx.counters:
            continue
        close = getattr(proc, "close", None)
        if close is not None:
            try:
                await close()
            except Exception:  # (one processor's failure does not stop the others' close)
                log.exception("processor %s failed to close", type(proc).__name__)
    if ctx.counters is not None:
        await ctx.counters.close()
    if ctx.redis is not None:
        with contextlib.suppress(Exception):
            await ctx.redis.aclose()
    if ctx.store is not None:
        with contextlib.suppress(Exception):
            ctx.store.close()
    # The last numbers stay for the worker the supervisor may start in this one's place.
    _update_metrics(worker)
    with contextlib.suppress(OSError):  # (a full disk: these numbers are lost, not the stop)
        write_snapshot(ctx.config.run_path, ctx.worker_index, ctx.metrics.snapshot())
    worker.stopped.set()


async def serve_worker(cfg: Config, worker_index: int, ready_file: Path | None = None) -> None:
    """Run one worker until SIGTERM/SIGINT, then stop gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    supervised = os.environ.get("COLLECTOR_SUPERVISED") == "1"
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Under the supervisor, SIGINT (Ctrl-C reaches the whole process group) is the
    # supervisor's to act on: it sends SIGTERM in the right order.
    loop.add_signal_handler(signal.SIGINT, (lambda: None) if supervised else stop.set)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # (nohup: stays ignored)
        loop.add_signal_handler(signal.SIGHUP, (lambda: None) if supervised else stop.set)
    worker = await start_worker(cfg, worker_index)
    sockets = getattr(worker.server, "sockets", None) or []
    addr = sockets[0].getsockname() if sockets else ("?", 0)
    log.info("worker %d (snowflake worker %d) listening on %s:%s", worker_index,
             cfg.server.worker_id + worker_index, addr[0], addr[1])
    if ready_file is not None:
        ready_file.write_text(str(addr[1]))
    await stop.wait()
    log.info("worker %d stopping: finishing in-flight requests", worker_index)
    # A second signal during the graceful stop means: stop now.
    loop.add_signal_handler(signal.SIGTERM, _cold_stop)
    if not supervised:
        loop.add_signal_handler(signal.SIGINT, _cold_stop)
    await stop_worker(worker)
    log.info("worker %d stopped; segments sealed", worker_index)


def _cold_stop() -> None:
    log.warning("second signal: stopping without waiting")
    raise SystemExit(1)


def tune_malloc() -> None:
    """Keep glibc from trimming and regrowing the heap on every large request.

    A 100-event request allocates and frees a few hundred KiB; with glibc's dynamic
    thresholds the freed top of the heap is given back to the kernel and faulted in again on
    the next request, which measurably halved batch throughput. Fixed thresholds (trim above
    64 MiB free, mmap only above 16 MiB) keep those pages; memory stays bounded by the
    request size limits. Not glibc (musl, macOS): nothing to do.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 16 * 1024 * 1024)
        libc.mallopt(m_trim_threshold, 64 * 1024 * 1024)
    except (OSError, AttributeError):
        pass


def run_worker_process(cfg: Config, worker_index: int, ready_file: Path | None) -> int:
    import uvloop

    tune_malloc()
    uvloop.run(serve_worker(cfg, worker_index, ready_file))
    return 0
