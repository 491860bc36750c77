"""The segment writer: acknowledges requests under the configured durability (SPEC §5).

Theory of operation
-------------------
The request handler calls `submit(data, first_id, done)` once per request with the
request's events as complete NDJSON lines. Everything submitted during one event-loop
iteration is appended at the end of it by one write(2) (`_flush`, scheduled with call_soon;
the server flushes earlier once 32 requests wait, `flush_if_queued`), on the event loop
thread: one syscall and one fstat per iteration instead of per request, and still no queue
between threads and no lock; the file order is the submission order. `write(data, first_id)`
appends at once (tests and tools use it; it flushes what is queued first).

* durability "os": the append is the acknowledgement: `done(None)` right after the shared
  write (`write` returns None); the bytes survive a crash of the process. No thread is involved.
* durability "fsync": group commit, as in a database log or Redis's `appendfsync always`.
  `write` returns a future that resolves once an fsync that started after the append has
  completed. At most one commit job runs at a time, in the loop's default executor; requests
  that arrive while it runs wait for the next job and share its fsync, so the number of fsyncs
  tracks the disk's speed, not the request rate. When the pipeline is idle a job may wait
  `fsync_max_delay` first so a burst can gather (default 0: a wait lengthens every cycle, and
  on a disk that syncs in a tenth of a millisecond it was most of the cycle).

Rolling (by size after an append, by age from `tick()`): in both modes the loop thread only
*detaches* the segment from the log (the next append opens a new one) and queues it; the next
commit job seals it in the executor. Sealing fsyncs up to `roll_bytes` of dirty pages, which
must not stall every connection of the worker (in "os" mode there are no waiters: the job only
seals). The seal's own fsync covers every future still
waiting on that segment. Thus one thread at a time ever syncs or closes a given descriptor, and
no descriptor is closed while an fsync on it is running.

Invariants
----------
* Every byte appended before a future resolves is durable (fsync mode) or in the kernel (os).
* A future is resolved only by a successful fsync or seal that started after its bytes were
  appended; any failure that could have lost them fails it with StorageUnavailable.
* `_unsynced` holds only futures whose bytes are in `log.active`; futures of a detached segment
  travel with it in `_to_seal`.
* While unavailable there is no active segment: every failure path detaches it.
* At most one commit job is in flight (`_job`).

Unavailable state
-----------------
The first storage error (a failed append, fsync or seal) is logged once and moves the writer to
the unavailable state: `write` raises StorageUnavailable at once (the server answers 503) and
the abandoned segment keeps its `.open` name. At most every `probe_interval` seconds, lazily
on a write or from `tick()`, a probe recreates the directory if needed, recovers the abandoned
files of this worker and writes and syncs a probe file; when it succeeds, writes are accepted
again and the next one opens a fresh segment.

Known limits
------------
* Creating a segment fsyncs the directory on the loop thread, and so does the probe, which
  only runs after an error.
* After an fsync error the bytes of the failed requests may still be in the file and be loaded;
  a client that retries them stores them twice unless it sends `event_id`.
* The loader may read lines before their fsync completes; after a power loss it may therefore
  hold events that were never acknowledged (again only duplicates on retry, never a loss).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

from collector.clock import Clock
from collector.errors import StorageUnavailable
from collector.storage.segment import Segment
from collector.storage.segment_log import SegmentLog

logger = logging.getLogger(__name__)

DURABILITIES = ("os", "fsync")

_Waiters = list["asyncio.Future[None]"]
Done = Callable[[StorageUnavailable | None], None]
"""What `submit` calls once a request's lines are acknowledged (None) or lost (the error)."""
_Item = tuple[Segment, bool, _Waiters]
"""One unit of a commit job: (segment, seal it (True) or only fsync it (False), its waiters)."""


def _run_commit(work: list[tuple[Segment, bool]]) -> tuple[int, StorageUnavailable | None]:
    """Seal or fsync each segment in order, in an executor thread.

    Stops at the first failure: the storage is broken and the writer will fail everything after
    it anyway. Returns how many items completed and the error that stopped it, if any.
    """
    for done, (segment, seal) in enumerate(work):
        try:
            if seal:
                segment.seal()
            else:
                segment.fsync()
        except StorageUnavailable as exc:
            return done, exc
    return len(work), None


def _call_all(dones: list[Done], error: StorageUnavailable | None) -> None:
    for done in dones:
        try:
            done(error)
        except Exception:  # one broken callback must not leave the others unanswered
            logger.exception("segment write callback failed")


def _call_when_done(dones: list[Done], future: asyncio.Future[None]) -> None:
    if future.cancelled():
        _call_all(dones, StorageUnavailable("segment commit was cancelled (shutting down)"))
        return
    error = future.exception()
    _call_all(dones, error if isinstance(error, StorageUnavailable) or error is None
              else StorageUnavailable(f"segment commit failed: {error!r}"))


def _resolve(waiters: _Waiters) -> None:
    for future in waiters:
        if not future.done():  # the handler may have been cancelled meanwhile
            future.set_result(None)


def _fail(waiters: _Waiters, error: StorageUnavailable) -> None:
    for future in waiters:
        if not future.done():
            future.set_exception(StorageUnavailable(str(error)))


class SegmentWriter:
    """Appends request bodies to the segment log and acknowledges them per `durability`.

    Args:
        log: this worker's segment log (already recovered).
        durability: "os" (ack once the kernel has the bytes) or "fsync" (ack after group commit).
        loop: the event loop that calls `write`; commit jobs run in its default executor.
        clock: `monotonic()` paces the probes (and, through the log, segment ages).
        fsync_max_delay: in "fsync" mode, how long an idle pipeline waits to gather a batch.
        probe_interval: minimum seconds between two probes while unavailable.
    """

    def __init__(
        self,
        log: SegmentLog,
        durability: str,
        loop: asyncio.AbstractEventLoop,
        clock: Clock,
        fsync_max_delay: float = 0.0,
        probe_interval: float = 1.0,
    ) -> None:
        if durability not in DURABILITIES:
            raise ValueError(f"durability must be one of {DURABILITIES}, got {durability!r}")
        self._log = log
        self.durability = durability
        self._group_commit = durability == "fsync"
        self._loop = loop
        self._clock = clock
        self._fsync_max_delay = fsync_max_delay
        self._probe_interval = probe_interval
        self._available = True
        """Hot-path flag: False while an incident is open or after close()."""
        self._last_error: str | None = None
        """The latest storage error of the open incident; None when there is none."""
        self._next_probe_at = 0.0
        self._closed = False
        self._refused_at_incident = 0
        self._queued: list[bytes] = []
        """Lines submitted during this event-loop iteration, appended together by _flush."""
        self._queued_done: list[Done] = []
        self._queued_first = 0
        self._unsynced: _Waiters = []
        self._to_seal: list[tuple[Segment, _Waiters]] = []
        self._job: asyncio.Future[tuple[int, StorageUnavailable | None]] | None = None
        self._commit_handle: asyncio.Handle | None = None
        # Counters for /metrics.
        self.bytes_written = 0
        self.segments_rolled = 0
        """Segments sealed: rotations, plus the seals after an error and at shutdown."""
        self.fsyncs = 0
        """Completed commit fsyncs and seals (fsync mode); requests / fsyncs = batching factor."""
        self.write_errors = 0
        """Storage errors (failed appends, fsyncs, seals); each one fails requests."""
        self.writes_refused = 0
        """Writes answered StorageUnavailable at once because the writer was unavailable."""

    @property
    def available(self) -> bool:
        """Whether a write is expected to succeed (False during an incident or after close)."""
        return self._available

    @property
    def last_error(self) -> str | None:
        """Why the writer is unavailable, for /healthz; None when it is not in an incident."""
        return self._last_error

    # --- the hot path -------------------------------------------------------------------------

    def submit(self, data: bytes, first_id: int, done: Done) -> None:
        """Queue one request's lines; `done(None)` once acknowledged, `done(error)` if not.

        The request path's way in. Every request submitted during one event-loop iteration is
        appended by one `write` at the end of it (`_flush`, scheduled with call_soon), so a
        busy worker pays one write(2) and one fstat(2) per iteration instead of per request,
        and "os" durability still acknowledges only bytes the kernel has. The lines of each
        request stay whole and in submission order (ids are minted in that order, so the
        segment stays sorted); if the shared append fails, nothing of it is in the file and
        every request in it gets the error. `done` is called from the event loop, exactly
        once, after `submit` has returned.

        Raises:
            StorageUnavailable: the writer is unavailable; nothing was queued.
        """
        if not self._available and not self._probe_if_due():
            self.writes_refused += 1
            raise StorageUnavailable(self._refusal())
        queued = self._queued
        if not queued:
            self._queued_first = first_id
            self._loop.call_soon(self._flush)
        queued.append(data)
        self._queued_done.append(done)

    def flush_if_queued(self, count: int) -> None:
        """Append and acknowledge now if `count` or more requests are queued.

        For the server, between two reads: waiting for the end of the loop iteration keeps
        every response of the iteration back until then, and a client that sends its next
        requests only when answered (most do) then sits idle meanwhile.
        """
        if len(self._queued) >= count:
            self._flush()

    def _flush(self) -> None:
        """Append everything submitted since the last flush, then acknowledge (or fail) it."""
        queued = self._queued
        if not queued:
            return
        dones = self._queued_done
        self._queued = []
        self._queued_done = []
        try:
            pending = self._append(queued[0] if len(queued) == 1 else b"".join(queued),
                                   self._queued_first)
        except StorageUnavailable as exc:
            _call_all(dones, exc)
            return
        except Exception as exc:
            # A bug, not a storage error: still answer every request (503, so clients retry)
            # rather than leave its connection waiting for a callback that never comes.
            logger.exception("segment append failed unexpectedly")
            _call_all(dones, StorageUnavailable(f"segment append failed: {exc!r}"))
            return
        if pending is None:
            _call_all(dones, None)
        else:
            pending.add_done_callback(functools.partial(_call_when_done, dones))

    def write(self, data: bytes, first_id: int) -> asyncio.Future[None] | None:
        """Append one request's lines now and say when they are acknowledged.

        Lines already queued by `submit` are appended first, so the file keeps call order.

        Args:
            data: complete NDJSON lines (each ending in b"\\n").
            first_id: the Snowflake id of the first line (names a new segment if one opens).

        Returns:
            None in "os" mode: acknowledged now. In "fsync" mode a future that resolves once
            the bytes are durable, or fails with StorageUnavailable.

        Raises:
            StorageUnavailable: the writer is unavailable or the append failed; no part of
                `data` is in the segment.
        """
        if self._queued:
            self._flush()
        return self._append(data, first_id)

    def _append(self, data: bytes, first_id: int) -> asyncio.Future[None] | None:
        if not self._available and not self._probe_if_due():
            self.writes_refused += 1
            raise StorageUnavailable(self._refusal())
        log = self._log
        try:
            log.append(data, first_id, roll=False)
        except StorageUnavailable as exc:
            self._append_failed(exc)
            raise
        self.bytes_written += len(data)
        full = log.active is not None and log.active.size >= log.roll_bytes
        if not self._group_commit:
            if full:
                # Sealing fsyncs up to roll_bytes of dirty pages: done in a commit job, off
                # the loop, so a roll does not stall every connection for that long.
                self._retire_active()
                self._schedule_commit()
            return None
        future: asyncio.Future[None] = self._loop.create_future()
        self._unsynced.append(future)
        if full:
            self._retire_active()
        self._schedule_commit()
        return future

    def _refusal(self) -> str:
        if self._last_error is None:
            return "segment writer is closed (shutting down)"
        return f"segment storage unavailable: {self._last_error}"

    # --- periodic work ------------------------------------------------------------------------

    def tick(self) -> None:
        """Roll the active segment by age, or probe while unavailable; call about once a second.

        Also checks that the active segment's path still names its open file: a moved or
        replaced segment directory does not fail an append (see Segment.check_named)."""
        if self._closed:
            return
        if not self._available:
            self._probe_if_due()
            return
        active = self._log.active
        if active is not None:
            try:
                active.check_named()
            except StorageUnavailable as exc:
                self._append_failed(exc)
                return
        if not self._log.due_for_roll():
            return
        self._retire_active()
        self._schedule_commit()

    async def close(self) -> None:
        """Stop accepting writes, wait for the commit in flight and seal the active segment.

        Futures still waiting are resolved by the final seal (or failed if it fails). Errors
        are logged, not raised: shutdown goes on, and the next start recovers any `.open` file.
        """
        if self._closed:
            return
        self._flush()
        self._closed = True
        self._available = False
        if self._commit_handle is not None:
            self._commit_handle.cancel()
            self._commit_handle = None
        self._retire_active()
        while True:
            if self._job is None:
                self._start_commit()
                if self._job is None:
                    return
            # _commit_done was registered first, so it has run when this wait returns; it may
            # have started the next job.
            await asyncio.wait({self._job})

    # --- rolling ------------------------------------------------------------------------------

    def _retire_active(self) -> None:
        """"fsync" mode: detach the active segment; the next commit job seals it."""
        segment = self._log.detach_active()
        if segment is not None:
            self._to_seal.append((segment, self._unsynced))
            self._unsynced = []

    # --- group commit -------------------------------------------------------------------------

    def _schedule_commit(self) -> None:
        if self._job is not None or self._commit_handle is not None:
            return  # the running job's completion starts the next one
        if self._fsync_max_delay > 0:
            self._commit_handle = self._loop.call_later(self._fsync_max_delay, self._start_commit)
        else:
            self._commit_handle = self._loop.call_soon(self._start_commit)

    def _start_commit(self) -> None:
        """Start one job covering everything appended so far, unless one is running."""
        self._commit_handle = None
        if self._job is not None:
            return
        batch: list[_Item] = [(segment, True, waiters) for segment, waiters in self._to_seal]
        self._to_seal = []
        if self._unsynced and self._log.active is not None:
            batch.append((self._log.active, False, self._unsynced))
            self._unsynced = []
        if not batch:
            return
        work = [(segment, seal) for segment, seal, _ in batch]
        job = self._loop.run_in_executor(None, _run_commit, work)
        self._job = job
        job.add_done_callback(functools.partial(self._commit_done, batch))

    def _commit_done(
        self, batch: list[_Item], job: asyncio.Future[tuple[int, StorageUnavailable | None]]
    ) -> None:
        self._job = None
        try:
            done, error = job.result()
        except Exception as exc:  # a bug in the job; fail safe rather than acknowledge
            logger.exception("segment commit job crashed")
            done, error = 0, StorageUnavailable(f"segment commit failed: {exc!r}")
        for _, seal, waiters in batch[:done]:
            self.fsyncs += 1
            if seal:
                self.segments_rolled += 1
            _resolve(waiters)
        if error is None:
            if self._to_seal or self._unsynced:
                self._start_commit()  # these gathered while the fsync ran: no extra delay
            return
        self._storage_failed(error)
        self._abandon(batch[done:], error)

    def _abandon(self, failed: list[_Item], error: StorageUnavailable) -> None:
        """After a failed commit, fail every waiter not yet durable and close every segment.

        An fsync that failed may have dropped dirty pages, so nothing written since the last
        successful one can be acknowledged, including the bytes of requests that came in while
        the job ran. Called with no job in flight, so closing descriptors here is safe; the files
        keep their `.open` names and the probe recovers them.
        """
        pending = [(segment, waiters) for segment, _, waiters in failed] + self._to_seal
        self._to_seal = []
        active = self._log.detach_active()
        if active is not None:
            pending.append((active, self._unsynced))
        self._unsynced = []
        for segment, waiters in pending:
            segment.close()
            _fail(waiters, error)

    # --- unavailable state --------------------------------------------------------------------

    def _append_failed(self, error: StorageUnavailable) -> None:
        """The append raised: nothing of it is in the file. Give up the segment."""
        self._storage_failed(error)
        segment = self._log.detach_active()
        if segment is None:
            return
        if segment.size == 0:
            segment.close()  # never got a line; the probe's recovery deletes the empty file
        elif self._group_commit:
            # Earlier requests in this segment were appended fine and still deserve an answer:
            # the seal (in a commit job, after any fsync in flight) makes them durable or fails.
            self._to_seal.append((segment, self._unsynced))
            self._unsynced = []
            self._schedule_commit()
        else:
            try:
                segment.seal()
            except StorageUnavailable:
                return  # same incident, already logged; the probe recovers the file
            self.segments_rolled += 1

    def _storage_failed(self, error: StorageUnavailable) -> None:
        """Open (or extend) an incident: refuse writes until a probe succeeds; log once."""
        self.write_errors += 1
        first = self._last_error is None
        self._last_error = str(error)
        self._available = False
        self._next_probe_at = self._clock.monotonic() + self._probe_interval
        if first:
            self._refused_at_incident = self.writes_refused
            logger.error(
                "segment storage unavailable, answering 503 until it recovers: %s", error
            )

    def _probe_if_due(self) -> bool:
        """Probe if the interval has passed and no commit is pending; return availability."""
        if self._closed or self._last_error is None:
            return False
        now = self._clock.monotonic()
        if now < self._next_probe_at:
            return False
        if self._job is not None or self._to_seal or self._commit_handle is not None:
            return False  # let the pending commit settle first; it owns those files
        self._next_probe_at = now + self._probe_interval
        try:
            self._log.probe()
        except StorageUnavailable as exc:
            self._last_error = str(exc)
            return False
        logger.warning(
            "segment storage available again after refusing %d writes",
            self.writes_refused - self._refused_at_incident,
        )
        self._last_error = None
        self._available = True
        return True
