"""The loader daemon: tail the segments, insert in batches, checkpoint, apply retention.

Theory of operation. One pass (`run_once`) repeats: read up to `loader.batch_size` whole lines
after the committed positions (tailer.Tailer), parse them, and commit them with the positions
after those lines (checkpoint: the SQLite store writes events, daily_stats and positions in one
transaction; for MongoDB the positions file is replaced only after the insert). `run` repeats
passes, sleeping `loader.poll_interval` when a pass found nothing, so new lines and new
segments are picked up without a restart.

Exactly once, effectively: the positions are never durable ahead of the events before them,
and the store ignores an event whose Snowflake id (or client event_id) it already holds, so a
crash anywhere (even SIGKILL between MongoDB's insert and the positions file) costs at most the
replay of one batch and loads nothing twice.

Stopping. The first SIGTERM/SIGINT is a warm stop: the batch in progress is finished and
checkpointed, then the loop ends and `main` returns 0. A second signal is a cold stop: it raises
SystemExit at once; the open transaction is rolled back and the batch is replayed next time.

Bad lines. A line that is not an event (is_event: a JSON object with id, event_type and ts,
optional fields of the right types) cannot be loaded by any retry, so it is counted
(loader_bad_lines_total), logged and skipped rather than wedging the stream. A failing store
(locked, disk full, MongoDB down) is the opposite: the batch is retried from the same positions
with a growing pause, and errors are counted.

Analytics pass. The SQLite store's per-user-hour analytics tables are not written by the load
transaction (that would cost most of the loading rate): each batch queues its ids, and
`summarize` folds the queue into the tables, after each run of loading and at least every
ANALYTICS_MAX_DELAY seconds of a backlog (loader/analytics/userhours.py).

Retention. Sealed segments that are fully loaded (entirely behind the committed position of
their stream: the stream has moved on to a later segment) and whose modification time is older
than `loader.retention_days` are deleted; `.open` files, anything not yet committed, and the
segment a stream's position is in are never touched. Before the first deletion of a sweep the
store's commits are made durable (checkpoint.sync): a segment must not go while a power loss
could still take back the batches loaded from it.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from collector.clock import Clock, SystemClock
from collector.config import Config
from collector.metrics import Metrics, merge_snapshots, render
from loader.aggregate import MAX_TS
from loader.checkpoint import (
    Checkpoint,
    Position,
    PositionStore,
    StoreCheckpoint,
    StreamKey,
    stream_name,
)
from loader.lock import LoaderLock, LockHeld
from loader.metrics_http import MetricsServer
from loader.status import read_status, status_path, write_status
from loader.stores.base import Event, EventStore, open_store
from loader.tailer import Tailer, scan

__all__ = ["EXIT_LOCKED", "LoaderDaemon", "checkpoint_path", "is_event", "main", "parse_lines",
           "read_status"]

log = logging.getLogger(__name__)

SNOWFLAKE_EPOCH_MS = 1_451_606_400_000
"""2016-01-01T00:00:00Z, the custom epoch of SPEC §4."""
EXIT_LOCKED = 75
"""Exit status when another loader holds the lock (EX_TEMPFAIL: try again later)."""
RETENTION_INTERVAL = 60.0
"""Seconds between two retention sweeps (each lists the directory and stats the files)."""
STATUS_INTERVAL = 1.0
MAX_BACKOFF = 30.0
ANALYTICS_MAX_DELAY = 30.0
"""Seconds of uninterrupted loading (a backlog) after which the loader stops to run the
analytics pass before loading on. The pass otherwise runs whenever the loader has caught up
with the segments, so with live traffic it trails the load by one batch. During a backlog the
load runs at full speed and readers answer the hours the pass has not reached from the events
table (exact, slower); this bounds how far behind it falls."""
ANALYTICS_RETRY = 5.0
"""Seconds before the analytics pass is tried again after it failed."""


def checkpoint_path(cfg: Config) -> Path:
    """The positions file of a store that cannot keep them (MongoDB). One per backend:
    switching from SQLite to MongoDB loads everything again into the new store instead of
    believing it is already there."""
    return cfg.data_path / "loader" / f"checkpoint.{cfg.store.backend}.json"


def default_checkpoint(cfg: Config, store: EventStore) -> Checkpoint | StoreCheckpoint:
    """Positions in the store when it can keep them in its batch transactions (SQLite),
    else in the JSON file of checkpoint_path."""
    if isinstance(store, PositionStore):
        return StoreCheckpoint(store, f"{describe_store(cfg)}, table loader_position")
    return Checkpoint(checkpoint_path(cfg))


def snowflake_seconds(snowflake: int) -> float:
    return ((snowflake >> 22) + SNOWFLAKE_EPOCH_MS) / 1000.0


_MAX_ID = "9223372036854775807"
"""2**63 - 1: the largest Snowflake (and SQLite integer)."""
_INT64 = 1 << 63


def _is_number(x: Any) -> bool:
    """An int or float that a store can hold: bools are not numbers here, and integers
    must fit in 64 signed bits (orjson parses up to 2**64 - 1)."""
    return type(x) is float or (type(x) is int and -_INT64 <= x < _INT64)


def _is_id(i: Any) -> bool:
    """A Snowflake as a segment line carries it: ASCII decimal digits of an int64, or an int
    (str.isdigit alone accepts other scripts' digits, which int() accepts but SQLite does not)."""
    if type(i) is str:
        return (i.isascii() and i.isdigit()
                and (len(i) < len(_MAX_ID) or (len(i) == len(_MAX_ID) and i <= _MAX_ID)))
    return type(i) is int and 0 <= i < _INT64


def is_event(e: Any) -> bool:
    """Whether a parsed segment line is an event every store can load: a JSON object with `id`
    (see _is_id), `event_type` (a string) and a numeric `ts` in [0, aggregate.MAX_TS); and when
    present, `params` an object (or null), `received_at` and `sent_at` numbers, `event_id` a
    string (or null).

    The optional fields are checked because a value of the wrong type would fail the store's
    insert on every retry and wedge the loader; the collector never writes one.
    """
    if type(e) is not dict or not _is_id(e.get("id")) or type(e.get("event_type")) is not str:
        return False
    ts: Any = e.get("ts")
    if not _is_number(ts) or not 0 <= ts < MAX_TS:
        return False
    params = e.get("params")
    if params is not None and type(params) is not dict:
        return False
    received_at = e.get("received_at")
    if received_at is not None and not _is_number(received_at):
        return False
    sent_at = e.get("sent_at")
    if sent_at is not None and not _is_number(sent_at):
        return False
    event_id = e.get("event_id")
    return event_id is None or type(event_id) is str


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold Python's cyclic garbage collector off for the block (restored after, also on an
    exception; left off if it was off).

    A batch allocates two dicts per event, all freed by reference counting when the batch
    ends: nothing a cycle collector can find. Left on, it runs a dozen times per batch and
    walks them all, and the whole heap every few batches: pausing it raised the loading rate
    by 12% (median of 5 interleaved runs, CPU time). The collector is per process, so the pause
    also covers the metrics thread for the few milliseconds of a batch; nothing there makes
    cycles either.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_json(lines: list[bytes]) -> tuple[list[Any], int]:
    """The JSON values of segment lines, and how many lines were not JSON. Blank lines are
    skipped without counting them as bad.

    The common batch, where every line is one JSON value, is parsed as one JSON array (the
    lines joined by commas): one orjson call instead of one per line, which saved 0.3-0.4 µs
    per event on the bench's lines, about a quarter of the parsing time (orjson's fixed cost
    per call weighs on lines this small). It is taken only when it gives exactly one value per
    line: a line that is not a JSON value on its own (blank, torn, two values) makes the
    array invalid or its length differ, and a line nested 1024 deep goes over orjson's
    limit inside the array; the lines are then parsed one by one, to skip only the lines
    that do not parse. Only lines that are not JSON values could still pass, together: a
    fragment that joins the next line into one value (`[1` then `2]`) next to a line of two
    values (`3,4`). The collector writes whole lines of one object each, and whatever such
    lines give is still checked by is_event like any other value.
    """
    if lines:
        # The brackets ride on the first and last lines: the batch is copied only once.
        last = lines[-1] + b"]"
        text = b",".join([b"[" + lines[0], *lines[1:-1], last]) if len(lines) > 1 else (
            b"[" + last)
        try:
            values = orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
        else:
            if len(values) == len(lines):
                return values, 0
    objects = []
    bad = 0
    for line in lines:
        try:
            objects.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            if line.strip():
                bad += 1
    return objects, bad


def parse_lines(lines: list[bytes]) -> tuple[list[Event], int]:
    """Events parsed from segment lines, and how many lines were not valid events (is_event).
    Blank lines are skipped without counting them as bad."""
    objects, bad = parse_json(lines)
    events = [e for e in objects if is_event(e)]
    return events, bad + len(objects) - len(events)


class LoaderDaemon:
    """See the module docstring. Runs in one thread; `stop()` may be called from any."""

    def __init__(self, cfg: Config, store: EventStore, clock: Clock, *,
                 metrics: Metrics | None = None,
                 checkpoint: Checkpoint | StoreCheckpoint | None = None,
                 tailer: Tailer | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.clock = clock
        self.metrics = metrics if metrics is not None else Metrics()
        self.checkpoint = checkpoint or default_checkpoint(cfg, store)
        self.tailer = tailer or Tailer(cfg.segments_path, clock)
        self.positions: dict[StreamKey, Position] = self.checkpoint.load()
        self._stop = threading.Event()
        self._last_loaded: dict[StreamKey, float] = {}
        self._retention_at: float | None = None
        self._summarize = getattr(store, "summarize_pending", None)
        self._analytics_due = clock.monotonic() + ANALYTICS_MAX_DELAY
        self._status_to: tuple[Path | None, Any] = (None, None)
        """(status file, callback) of `run`: where the status goes about once a second."""
        self._status_due = 0.0
        self._analytics_failed = False
        self._rate_mark = (clock.monotonic(), 0)
        self._rate = 0.0
        self.started_at = clock.time()
        self.counts = {"batches": 0, "events_loaded": 0, "events_inserted": 0, "errors": 0,
                       "bad_lines": 0, "segments_deleted": 0, "analytics_batches": 0,
                       "analytics_errors": 0}
        self.last_error: str | None = None
        for name, (kind, help_) in _FAMILIES.items():
            self.metrics.describe(name, kind, help_)
            # Every series exists from the start, at zero: a dashboard or an alert on
            # `rate(loader_errors_total[5m])` sees 0, not "no data", until the first error.
            if kind == "counter":
                self.metrics.inc(name, 0)
            elif kind == "histogram":
                self.metrics.histogram(name)

    # -- control -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Warm stop: finish the batch in progress, then return from run()/run_once()."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start_over_if_store_is_empty(self) -> bool:
        """Forget the positions when the store holds no event; True when it did.

        A checkpoint with positions over an empty store means the store was replaced or wiped
        (to rebuild it, or by a configuration mistake): every segment still on disk is loaded
        again rather than only what arrives from now on. Replaying is safe; missing data is
        not. Asked once at start (`main`), through the cheap total of query_events.
        """
        if not self.positions:
            return False
        total, _ = self.store.query_events(page=1, limit=1, start=None, end=None,
                                           event_types=None)
        if total:
            return False
        log.warning("the event store is empty but %s has positions: loading every segment "
                    "on disk again", self.checkpoint.describe())
        self.positions = {}
        return True

    # -- one pass ----------------------------------------------------------------------------
    def run_once(self) -> int:
        """Load what is available now, batch after batch; then bring the analytics tables up to
        date (summarize); apply retention when it is due.

        Returns the number of events read from the segments and committed (events the store
        already held included: the store decides what is new; see counts["events_inserted"]).
        Store errors propagate, with the positions left at the last committed batch.
        """
        loaded = self.load_once()
        self.summarize()
        self._maybe_apply_retention()
        return loaded

    def load_once(self) -> int:
        """The loading part of run_once: batches until the segments are caught up (or a stop).
        The analytics pass runs in between only when it has waited ANALYTICS_MAX_DELAY."""
        loaded = 0
        size = max(1, self.cfg.loader.batch_size)
        while not self._stop.is_set():
            batch = self.tailer.read(self.positions, size)
            if not batch.lines:
                if batch.positions != self.positions:
                    # Moved past finished (or vanished) segments: saved so that retention,
                    # which may now delete them, never leaves the checkpoint pointing at a
                    # segment that is gone.
                    self.checkpoint.save(batch.positions)
                    self.positions = batch.positions
                break
            loaded += self._load(batch.lines, batch.positions, batch.streams)
            if self.clock.monotonic() >= self._analytics_due:
                self.summarize()
            self._publish_when_due()
            if len(batch.lines) < size:
                break
        return loaded

    def summarize(self) -> int:
        """The analytics pass: fold every batch loaded so far into the store's analytics
        tables (a store without them: nothing to do). Returns the batches folded.

        A failure is counted and logged, and the pass is tried again ANALYTICS_RETRY seconds
        later, while loading goes on: the tables are a processor of their own (SPEC §10), and
        readers stay exact without them (loader/analytics/userhours.py, "Coverage").
        """
        if self._summarize is None:
            return 0
        now = self.clock.monotonic()
        if self._analytics_failed and now < self._analytics_due:
            return 0
        done = 0
        try:
            with gc_paused():
                while not self._stop.is_set():
                    n = self._summarize()
                    if not n:
                        break
                    done += n
        except Exception as e:
            self._analytics_failed = True
            self._analytics_due = now + ANALYTICS_RETRY
            self.counts["analytics_errors"] += 1
            self._count_error(e)
            log.exception("the analytics pass failed; loading goes on, retrying in %.0f s",
                          ANALYTICS_RETRY)
            return done
        self._analytics_failed = False
        self._analytics_due = self.clock.monotonic() + ANALYTICS_MAX_DELAY
        self.counts["analytics_batches"] += done
        if done:
            self.metrics.inc("loader_analytics_batches_total", done)
        return done

    def _load(self, lines: list[bytes], positions: dict[StreamKey, Position],
              streams: dict[StreamKey, int]) -> int:
        t0 = self.clock.monotonic()
        with gc_paused():
            objects, bad = parse_json(lines)
            # The positions are durable only with (or after) the events before them.
            done = self.checkpoint.commit(self.store, objects, positions, is_event)
            del objects
        bad += done.bad
        if bad:
            self.counts["bad_lines"] += bad
            self.metrics.inc("loader_bad_lines_total", bad)
            log.warning("skipped %d segment lines that are not valid events", bad)
        self.positions = positions
        self._note_last_loaded(done.ids, streams)
        self.counts["batches"] += 1
        self.counts["events_loaded"] += len(done.ids)
        self.counts["events_inserted"] += done.inserted
        self.metrics.inc("loader_batches_total")
        self.metrics.inc("loader_events_loaded_total", len(done.ids))
        self.metrics.inc("loader_events_inserted_total", done.inserted)
        self.metrics.observe("loader_batch_seconds", self.clock.monotonic() - t0)
        return len(done.ids)

    def _note_last_loaded(self, ids: list[Any], streams: dict[StreamKey, int]) -> None:
        """Remember the time of the last event loaded per stream, for lag_seconds. The ids
        come in id order, or in stream order (checkpoint.Committed), so walking back from the
        end finds each stream's last event after a few steps. (A SQLite batch mixing plain
        events and events with an event_id lists the latter after the others: the event found
        may then be a little older than the stream's last, and the lag a little larger.)"""
        want = set(streams)
        for ident in reversed(ids):
            if not want:
                break
            i = int(ident)
            key = ((i >> 17) & 31, (i >> 12) & 31)
            if key in want:
                want.discard(key)
                self._last_loaded[key] = snowflake_seconds(i)

    # -- loop --------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None, *, status_file: Path | None = None,
            on_status: Any = None) -> None:
        """Pass after pass until `stop` (or self.stop()) is set.

        Args:
            stop: an external stop event (the signal handlers of `main` set it).
            status_file: where to write the status about once a second (None: nowhere).
            on_status: called with the status dict about once a second (metrics server).
        """
        if stop is not None:
            self._stop = stop
        self._status_to = (status_file, on_status)
        failures = 0
        last_error = ""
        while not self._stop.is_set():
            try:
                n = self.run_once()
                if failures:
                    log.info("loading works again after %d failed attempts", failures)
                failures = 0
                last_error = ""
            except Exception as e:  # a store outage: keep the daemon alive and retry
                n = 0
                failures += 1
                self._count_error(e)
                # The traceback once per kind of error; a long outage then adds one line per
                # attempt, not a traceback every few seconds.
                error = f"{type(e).__name__}: {e}"
                if error != last_error:
                    log.exception("loading a batch failed (attempt %d); retrying from the last "
                                  "committed position", failures)
                    last_error = error
                else:
                    log.error("loading a batch failed again (attempt %d): %s", failures,
                              _one_line(error))
            self._publish_when_due()
            if failures:
                self._stop.wait(min(MAX_BACKOFF, self.cfg.loader.poll_interval * 2 ** failures))
            elif n == 0:
                self._stop.wait(self.cfg.loader.poll_interval)
        self._publish(status_file, on_status)

    def _count_error(self, e: BaseException) -> None:
        self.counts["errors"] += 1
        self.metrics.inc("loader_errors_total")
        self.last_error = f"{type(e).__name__}: {e}"

    def _publish_when_due(self) -> None:
        """The status of `run`, at most once per STATUS_INTERVAL: between passes, and between
        the batches of a long one (a backlog of minutes left loader.json stale, with the last
        loader's pid, for all that time: an audit)."""
        now = self.clock.monotonic()
        if now >= self._status_due:
            self._status_due = now + STATUS_INTERVAL
            self._publish(*self._status_to)

    def _publish(self, status_file: Path | None, on_status: Any) -> None:
        status = self.status()
        if status_file is not None:
            try:
                write_status(status_file, status)
            except OSError as e:
                log.warning("cannot write the loader status %s: %s", status_file, e)
        if on_status is not None:
            on_status(status)

    # -- retention ---------------------------------------------------------------------------
    def _maybe_apply_retention(self) -> None:
        now = self.clock.monotonic()
        if self._retention_at is not None and now - self._retention_at < RETENTION_INTERVAL:
            return
        self._retention_at = now
        try:
            self.apply_retention()
        except OSError as e:
            self._count_error(e)
            log.warning("retention sweep failed: %s", e)

    def apply_retention(self) -> int:
        """Delete sealed, fully loaded segments older than loader.retention_days; returns how
        many were deleted. Uses only committed positions."""
        max_age = self.cfg.loader.retention_days * 86_400.0
        now = self.clock.time()
        deleted = 0
        synced = False
        for key, segs in scan(self.tailer.directory).items():
            pos = self.positions.get(key)
            if pos is None:
                continue
            for ref in segs:
                # Strictly before the position's segment: the tailer moved past it, so it
                # was sealed and fully read. The position's own segment is kept even when
                # fully read, until the stream moves on to a newer one.
                if ref.first_id >= pos.segment or not ref.sealed:
                    break
                if now - ref.mtime <= max_age:
                    continue
                if not synced:
                    self.checkpoint.sync()
                    synced = True
                try:
                    os.unlink(self.tailer.directory / ref.name(True))
                except FileNotFoundError:
                    continue
                deleted += 1
                log.info("retention: deleted loaded segment %s", ref.name(True))
        if deleted:
            self.counts["segments_deleted"] += deleted
            self.metrics.inc("loader_segments_deleted_total", deleted)
        return deleted

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Positions, lag, counters and rate, as written to data/run/loader.json."""
        now_m = self.clock.monotonic()
        mark_t, mark_n = self._rate_mark
        if now_m - mark_t >= STATUS_INTERVAL:
            self._rate = (self.counts["events_loaded"] - mark_n) / (now_m - mark_t)
            self._rate_mark = (now_m, self.counts["events_loaded"])
        listing = self.tailer.listing()
        backlog = self.tailer.backlog(self.positions)
        per_line = max(1.0, self.tailer.average_line_bytes)
        streams: dict[str, Any] = {}
        for key in sorted(set(listing) | set(self.positions)):
            pos = self.positions.get(key)
            lag_bytes = backlog.get(key, 0)
            lag_s = 0.0
            if lag_bytes and listing.get(key):
                newest = max(ref.mtime for ref in listing[key])
                last = self._last_loaded.get(key)
                if last is None:
                    last = snowflake_seconds(pos.segment if pos else listing[key][0].first_id)
                lag_s = max(0.0, newest - last)
            streams[stream_name(key)] = {
                "segment": None if pos is None else f"{pos.segment:020d}",
                "offset": None if pos is None else pos.offset,
                "lag_bytes": lag_bytes,
                "lag_events": round(lag_bytes / per_line),
                "lag_seconds": round(lag_s, 3),
            }
        lag_bytes = sum(s["lag_bytes"] for s in streams.values())
        status: dict[str, Any] = {
            "pid": os.getpid(),
            "updated_at": self.clock.time(),
            "started_at": self.started_at,
            "segments_dir": str(self.tailer.directory),
            "store": describe_store(self.cfg),
            "checkpoint": self.checkpoint.describe(),
            "streams": streams,
            "lag_bytes": lag_bytes,
            "lag_events": round(lag_bytes / per_line),
            "lag_seconds": max((s["lag_seconds"] for s in streams.values()), default=0.0),
            "events_per_second": round(self._rate, 1),
            "segments_skipped": self.tailer.skipped_segments,
            "last_error": self.last_error,
            **self.counts,
        }
        for name in ("loader_lag_bytes", "loader_lag_events", "loader_lag_seconds",
                     "loader_events_per_second"):
            self.metrics.set(name, float(status[name.removeprefix("loader_")]))
        skipped = float(self.tailer.skipped_segments)
        self.metrics.inc("loader_segments_skipped_total",
                         skipped - self.metrics.get("loader_segments_skipped_total"))
        return status


_FAMILIES = {
    "loader_batches_total": ("counter", "Batches committed to the event store"),
    "loader_events_loaded_total": ("counter", "Events read from segments and committed"),
    "loader_events_inserted_total": ("counter", "Events new to the store (replays excluded)"),
    "loader_errors_total": ("counter", "Failed store writes and other loader errors"),
    "loader_bad_lines_total": ("counter", "Segment lines that are not valid events (skipped)"),
    "loader_segments_deleted_total": ("counter", "Segments deleted by retention"),
    "loader_segments_skipped_total": ("counter", "Segments that vanished before fully loaded"),
    "loader_analytics_batches_total": ("counter",
                                       "Loaded batches folded into the analytics tables"),
    "loader_lag_bytes": ("gauge", "Segment bytes written but not yet loaded"),
    "loader_lag_events": ("gauge", "Events not yet loaded (estimated from bytes / mean line)"),
    "loader_lag_seconds": ("gauge", "Newest segment write time minus the last loaded event"),
    "loader_events_per_second": ("gauge", "Events loaded per second over the last second"),
    "loader_batch_seconds": ("histogram", "Time to parse, insert and checkpoint one batch"),
}


def describe_store(cfg: Config) -> str:
    """Where the loader writes, for humans: the SQLite file, or the MongoDB URI without its
    credentials."""
    if cfg.store.backend == "sqlite":
        return f"sqlite:{cfg.sqlite_file}"
    parts = urlsplit(cfg.store.mongodb_uri)
    host = parts.netloc.rpartition("@")[2]
    uri = urlunsplit((parts.scheme, host, parts.path, "", ""))
    return f"mongodb:{uri} database {cfg.store.mongodb_database}"


def main(cfg: Config, *, metrics_port: int | None = None, wait_for_lock: bool = False) -> int:
    """`collector loader`: run the daemon in this process until SIGTERM/SIGINT.

    Args:
        cfg: the configuration (data_dir, segments, store, loader sections).
        metrics_port: serve Prometheus text on 127.0.0.1:<port>/metrics; None takes
            loader.metrics_port, and 0 serves nothing.
        wait_for_lock: wait while another loader holds the lock instead of exiting
            EXIT_LOCKED (a standby loader).

    Returns the exit status: 0 after a warm stop, EXIT_LOCKED when another loader runs.
    """
    clock = SystemClock()
    lock = LoaderLock(cfg.run_path / "loader.lock")
    try:
        lock.acquire(blocking=wait_for_lock)
    except LockHeld as e:
        print(f"collector loader: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except OSError as e:
        print(f"collector loader: cannot lock {cfg.run_path / 'loader.lock'}: "
              f"{e.strerror or e}; check that the data directory is writable", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = _install_signals(stop)
    server: MetricsServer | None = None
    store: EventStore | None = None
    try:
        store = _open_store_patiently(cfg, stop)
        if store is None:
            return 0  # stopped while waiting for the store
        try:
            daemon = LoaderDaemon(cfg, store, clock, metrics=Metrics())
        except ValueError as e:  # an unreadable checkpoint: say what to do, no traceback
            print(f"collector loader: {e}", file=sys.stderr)
            return 2
        daemon.start_over_if_store_is_empty()
        print(f"collector loader: reading {cfg.segments_path}, writing {describe_store(cfg)}, "
              f"position in {daemon.checkpoint.describe()}, status in {status_path(cfg)}",
              file=sys.stderr, flush=True)
        port = cfg.loader.metrics_port if metrics_port is None else metrics_port
        if port:
            try:
                server = MetricsServer(port)  # (binds)
            except OSError as e:
                print(f"collector loader: cannot serve metrics on 127.0.0.1:{port}: "
                      f"{e.strerror or e}; choose another --metrics-port (0: none)",
                      file=sys.stderr)
                return 2
            server.start()
            print(f"collector loader: metrics on http://127.0.0.1:{server.port}/metrics",
                  file=sys.stderr, flush=True)
        publish = None
        if server is not None:
            srv = server

            def publish(status: dict[str, Any]) -> None:
                srv.publish(render(merge_snapshots([daemon.metrics.snapshot()])))

        daemon.run(stop, status_file=status_path(cfg), on_status=publish)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server is not None:
            server.stop()
        if store is not None:
            store.close()
        lock.release()


def _open_store_patiently(cfg: Config, stop: threading.Event) -> EventStore | None:
    """The event store, retried with backoff while it cannot be opened (a MongoDB that is
    not up yet, a locked SQLite file); None if `stop` is set meanwhile.

    One line per attempt and the attempts counted in the status file (loader_errors_total
    in the collector's /metrics): exiting instead had the supervisor restart the loader
    every few seconds, each time with a traceback of pymongo's internals.
    """
    from loader.stores.base import STORE_ERRORS

    failures = 0
    retried: tuple[type[BaseException], ...] = (*STORE_ERRORS, OSError)
    while not stop.is_set():
        try:
            return open_store(cfg)
        except retried as e:
            failures += 1
            wait = min(MAX_BACKOFF, max(1.0, cfg.loader.poll_interval) * 2 ** min(failures, 6))
            log.error("cannot open the event store (%s): %s; retrying in %.0f s (attempt %d)",
                      describe_store(cfg), _one_line(f"{type(e).__name__}: {e}"), wait, failures)
            # The status is rewritten while waiting, so that loader_up stays 1 (the loader
            # is up; loader_errors_total says how it fares).
            deadline = time.monotonic() + wait
            while not stop.is_set():
                with suppress(OSError):
                    write_status(status_path(cfg), {"updated_at": time.time(),
                                                    "errors": failures,
                                                    "store_error": _one_line(str(e))})
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                stop.wait(min(left, STATUS_INTERVAL * 5))
    return None


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _install_signals(stop: threading.Event) -> dict[int, Any]:
    """First SIGTERM/SIGINT/SIGHUP: warm stop. Second: cold stop (SystemExit now)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        log.info("signal %d: finishing the current batch, then stopping", signum)
        stop.set()

    previous: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        previous[sig] = signal.getsignal(sig)
        if sig == signal.SIGHUP and previous[sig] is signal.SIG_IGN:
            continue  # started under nohup: a hangup stays ignored
        signal.signal(sig, handler)
    if os.environ.get("COLLECTOR_SUPERVISED") == "1":
        # Ctrl-C (and the hangup of a closed terminal) reaches the whole process group;
        # under `collector serve` the supervisor turns it into an ordered SIGTERM, so the
        # loader ignores it itself.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return previous

