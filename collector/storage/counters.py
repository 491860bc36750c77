"""Real-time stats counters: summed in memory on the request path, flushed to Redis per tick.

Theory of operation
    `add(events)` runs on the request path, after the segment writer acknowledged the events.
    It never awaits and never touches a socket: per event it increments one dict entry keyed
    by (whole second, event type) and, when the event has a user, adds the user to a per-day
    set. Expanding a second into its minute, hour and day buckets, formatting key names and
    computing TTLs happen once per distinct second per tick, in `flush()`, not once per event.

    `flush()` folds what `add()` gathered into the *pending* state (key -> field -> count,
    bitmap and HyperLogLog members per day key, key -> deadline for the EXPIRE) and sends all
    of it (up to MAX_COMMANDS writes) in one pipeline: HINCRBY per (key, field), BITFIELD SET
    for bitmap members, PFADD for HyperLogLog members, EXPIRE per touched key. So the number
    of round trips is one per tick whatever the request rate, and the number of commands
    grows with the number of distinct buckets and types, not with events. Results are checked
    one by one (`execute(raise_on_error=False)`): what succeeded leaves the pending state
    (the amounts sent are subtracted), what failed stays for the next tick.

Exactly once
    A flush whose answer is lost (a timeout: Redis was slow, not down) may have been applied
    all the same, and sending its HINCRBYs again would count them twice (SETBIT and PFADD are
    idempotent, HINCRBY is not). So against one Redis server the pipeline is a MULTI/EXEC
    transaction that ends by setting this worker's *receipt* key to the flush's sequence
    number: applied whole or not at all. After a failed flush the next one first reads the
    receipt: the flush was applied (its amounts leave the pending state) or it was not (they
    are sent again); while the receipt cannot be read, nothing is sent. A Redis Cluster
    spreads the keys over slots, where a transaction cannot reach: there the pipeline is
    plain, and a timeout can still count a flush twice (`collector stats rebuild` repairs
    any window from the segments).

Redis trouble
    Redis down, slow, out of memory or read-only never reaches ingestion: `add()` is pure
    memory, the flush runs in its own task with the client's socket timeouts, and its errors
    are caught here. Pending state is bounded by `redis.max_pending_keys` entries (a hash
    field or a user member is one entry); an event whose counters would exceed the bound is
    dropped as a whole (all granularities, so the granularities stay consistent with each
    other) and counted in `collector_stats_dropped_total{unit="events"}`; users beyond the bound
    in `{unit="users"}`. An incident is logged when it starts and when it ends, never per tick.
    Pending counts of a bucket whose retention has passed are discarded silently: the bucket
    would have expired anyway.

Known limits
    Counts pending in a worker that is killed (SIGKILL, OOM kill) are lost; `close()` flushes
    them on a graceful stop, bounded by a timeout. Events older than the longest retention
    are not counted (counted in `collector_stats_too_old_total`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections import Counter
from collections.abc import Iterable
from itertools import islice, repeat
from operator import itemgetter, mod, sub
from typing import Any

from redis.exceptions import RedisError

from collector import stats
from collector.clock import Clock
from collector.config import RedisConfig, StatsConfig
from collector.metrics import Metrics

log = logging.getLogger(__name__)

CHUNK = 1000
"""Members per BITFIELD/PFADD command: keeps every command (and a retry of it) small."""

MAX_COMMANDS = 5000
"""Writes per flush, roughly (a key's fields go together). Live traffic needs far fewer: one
per (bucket, event type) touched in a tick. After an outage the backlog drains at this many
per tick instead of in one huge pipeline that would outlast the socket timeout, fail, and be
retried whole forever (each time possibly half-applied by Redis)."""

_OK = "ok"

RECEIPT_SECONDS = 86400
"""Lifetime of a worker's receipt key (see Exactly once): far longer than any wait for the
outcome of a flush; refreshed by every flush."""

_Op = tuple[str, str, Any]
"""One command of a flush: (kind, key, what it acknowledges). Kinds: "h" HINCRBY (what:
(field, amount)), "b" BITFIELD and "p" PFADD (what: the members), "e" EXPIRE."""


class StatsCounters:
    """Per-worker aggregator of the real-time counters; see the module docstring."""

    def __init__(
        self,
        client: Any,
        redis_cfg: RedisConfig,
        stats_cfg: StatsConfig,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        """Args:
            client: a redis.asyncio client (Redis or RedisCluster), owned and closed by the
                caller.
        Raises:
            ConfigError: a granularity format that merges buckets, or a prefix with braces.
        """
        stats.validate_granularities(stats_cfg.granularities, redis_cfg.key_prefix)
        self._client = client
        self._clock = clock
        self._metrics = metrics
        self._grans = stats_cfg.granularities
        self._keys = stats.KeySpace(redis_cfg.key_prefix)
        self._user_key = stats_cfg.user_key
        self._interval = redis_cfg.flush_interval
        self._close_timeout = max(2 * redis_cfg.timeout, 0.5)
        self._max_pending = redis_cfg.max_pending_keys
        self._uniques_retention = stats.uniques_retention(stats_cfg)
        # An event older than this many seconds lands in no live bucket of any granularity.
        self._max_age = max(g.seconds + g.retention for g in self._grans)

        # Added by add() since the last flush, as columns (see _gather).
        self._ts: list[float] = []
        self._types: list[str] = []
        self._users: list[Any] = []
        # Gathered from them (by _gather), not yet folded.
        self._counts: dict[tuple[int, str], int] = {}
        self._bits: dict[int, set[int]] = {}
        self._hll: dict[int, set[str]] = {}

        # Pending: folded, not yet acknowledged by Redis. `_size` counts entries (fields and
        # members), the unit of the max_pending_keys bound.
        self._pending: dict[str, dict[str, int]] = {}
        self._pending_bits: dict[str, set[int]] = {}
        self._pending_hll: dict[str, set[str]] = {}
        self._expire: dict[str, int] = {}
        self._size = 0

        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._atomic = not _is_cluster(client)
        self._receipt = self._keys.receipt_key(uuid.uuid4().hex)
        """Holds the sequence number of this worker's last applied flush (see Exactly once)."""
        self._seq = 0
        self._unsure: tuple[str, list[_Op]] | None = None
        """(sequence number, ops) of a transaction whose outcome is not known yet."""
        self._failing = False
        self._failures = 0
        self._dropping = False
        self._dropped_in_incident = 0
        self._describe_metrics()

    def _describe_metrics(self) -> None:
        m = self._metrics
        m.describe("collector_redis_errors_total", "counter",
                   "Failed Redis stats flushes (and the failed commands inside them) and "
                   "/api/stats reads")
        m.describe("collector_stats_dropped_total", "counter",
                   "Stats dropped because the pending bound was reached (unit: events, users)")
        m.describe("collector_stats_flushes_total", "counter",
                   "Stats flush pipelines sent to Redis, by result")
        m.describe("collector_stats_pending_keys", "gauge",
                   "Counter fields and user members waiting for Redis")
        m.describe("collector_stats_too_old_total", "counter",
                   "Events older than the longest stats retention, not counted")

    # --- hot path --------------------------------------------------------------------------

    def add(self, events: Iterable[dict[str, Any]]) -> None:
        """Count accepted events in memory. Never awaits, never does I/O.

        Each event has "event_type", "ts" (UNIX seconds, >= 0) and "params" (dict).

        On the request path, so it only copies the three values the counts need into columns
        (three C-level extends, whatever the number of events); `_gather` counts them before
        each flush, a column at a time. Counting event by event here cost a tenth of a
        one-event request.
        """
        if type(events) is not list:
            events = list(events)
        if len(events) == 1:  # a one-event request: appends beat building three maps
            e = events[0]
            self._ts.append(e["ts"])
            self._types.append(e["event_type"])
            self._users.append(e["params"].get(self._user_key))
            return
        self._ts.extend(map(_get_ts, events))
        self._types.extend(map(_get_type, events))
        self._users.extend(map(dict.get, map(_get_params, events), repeat(self._user_key)))

    def add_columns(self, types: list[str], stamps: list[int | float], users: list[Any]) -> None:
        """`add` for events given as columns (the fast path of collector/rawbatch.py, which
        has no event dicts): each event's type, ts and `params[user_key]` (None if absent)."""
        self._types += types
        self._ts += stamps
        self._users += users

    def add_one(self, event_type: str, ts: int | float, user: Any) -> None:
        """`add_columns` for a single event, the common request (no lists to build)."""
        self._types.append(event_type)
        self._ts.append(ts)
        self._users.append(user)

    def _gather(self) -> None:
        """Count the columns filled by `add` into `_counts`, `_bits` and `_hll`.

        Counted with C-level loops (map, zip, Counter, set) per batch of a flush interval;
        Python code runs once per distinct (second, type) and per distinct (day, user). Falls
        back to `_count_each` for the rare batch where that would not give the same result: an
        event too old for any bucket (not counted, and its user neither) or an unhashable
        user id (a list or object in params).
        """
        stamps, types, users = self._ts, self._types, self._users
        if not stamps:
            return
        self._ts, self._types, self._users = [], [], []
        oldest = self._clock.time() - self._max_age
        if min(stamps) < oldest:
            self._count_each(stamps, types, users, oldest)
            return
        secs = list(map(int, stamps))
        days = list(map(sub, secs, map(mod, secs, repeat(stats.DAY))))
        try:
            # With each id's type: False == 0 and 1.0 == 1 in a set, yet the ids go to
            # different places (stats.user_member), so one of them would be lost.
            pairs = set(zip(days, map(type, users), users, strict=True))
        except TypeError:  # an unhashable user id
            self._count_each(stamps, types, users, oldest)
            return
        counts = self._counts
        for key, n in Counter(zip(secs, types, strict=True)).items():
            counts[key] = counts.get(key, 0) + n
        add_user_id = self._add_user_id
        for day, _, u in pairs:
            if u is not None:
                add_user_id(day, u)

    def _count_each(self, stamps: list[float], types: list[str], users: list[Any],
                    oldest: float) -> None:
        """The per-event rules over the columns: what `_gather` does a column at a time, and
        does through here when the batch has an event too old to count or an unhashable user
        id."""
        counts = self._counts
        too_old = 0
        for ts, event_type, u in zip(stamps, types, users, strict=True):
            if ts < oldest:
                too_old += 1
                continue
            sec = int(ts)
            k = (sec, event_type)
            counts[k] = counts.get(k, 0) + 1
            if u is not None:
                self._add_user_id(sec - sec % stats.DAY, u)
        if too_old:
            self._metrics.inc("collector_stats_too_old_total", too_old)

    def _add_user_id(self, day: int, u: Any) -> None:
        """Note user id `u` (from params) as active on `day`: an int id in the bitmap range,
        a name (a str that cannot be an int id) in the HyperLogLog set as it is, anything
        else classified by stats.user_member."""
        if type(u) is int and 0 <= u < stats.BITMAP_ID_LIMIT:  # the common case, no call
            bits = self._bits.get(day)
            if bits is None:
                bits = self._bits[day] = set()
            bits.add(u)
        elif type(u) is str and u and not u[0].isdigit():
            names = self._hll.get(day)
            if names is None:
                names = self._hll[day] = set()
            names.add(u)
        else:
            self._add_user(day, stats.user_member(u))

    def _add_user(self, day: int, member: int | str | None) -> None:
        if member is None:
            return
        if isinstance(member, int):
            self._bits.setdefault(day, set()).add(member)
        else:
            self._hll.setdefault(day, set()).add(member)

    # --- flush loop ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the flush loop (one flush every redis.flush_interval seconds)."""
        if self._task is not None:
            raise RuntimeError("cannot start StatsCounters: already started")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="stats-flush")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: keep counting, but say it loudly
                log.exception("stats flush failed unexpectedly")

    async def close(self) -> None:
        """Stop the loop and flush what is pending. Takes at most an in-flight flush (bounded by
        the socket timeouts) plus max(2 x redis.timeout, 0.5 s) for the final one."""
        task, self._task = self._task, None
        if task is not None:
            # Under the lock, so an in-flight flush completes first: cancelled mid-pipeline,
            # its commands could be applied by Redis and then sent again by the final flush.
            async with self._lock:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        with contextlib.suppress(TimeoutError):  # a dead Redis must not hold up shutdown
            await asyncio.wait_for(self.flush(), self._close_timeout)
        self._gather()
        if self._size or self._counts:
            log.warning("stats: %d pending counter entries not written to Redis at shutdown",
                        self._size + len(self._counts))

    @property
    def pending(self) -> int:
        """Entries (counter fields and user members) waiting for Redis."""
        return self._size

    async def flush(self) -> None:
        """Send what was gathered and is pending (up to MAX_COMMANDS writes) in one pipeline;
        keep what fails, or did not fit, for the next time.

        Never raises for Redis trouble (connection refused, timeout, OOM, READONLY...): those
        are counted, logged once per incident, and the counts stay pending.
        """
        async with self._lock:
            now = self._clock.time()
            self._fold(now)
            self._prune(now)
            if not self._expire:
                self._metrics.set("collector_stats_pending_keys", self._size)
                return
            if self._unsure is not None and not await self._resolve_unsure():
                self._metrics.set("collector_stats_pending_keys", self._size)
                return
            pipe = self._client.pipeline(transaction=self._atomic)
            ops = self._queue(pipe, now)
            if self._atomic:
                # Unsure from here until Redis answers: a timeout, an error or a cancellation
                # (close() bounds the last flush) may come after Redis applied it.
                self._seq += 1
                self._unsure = (str(self._seq), ops)
                pipe.set(self._receipt, self._unsure[0], ex=RECEIPT_SECONDS)
            try:
                results = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as e:
                self._failed(e, commands=1)
            else:
                self._unsure = None
                self._settle(ops, results[:len(ops)])
            self._metrics.set("collector_stats_pending_keys", self._size)

    async def _resolve_unsure(self) -> bool:
        """Whether the transaction of a failed flush is known now: applied (its amounts leave
        the pending state) or not (they stay, to be sent again). False while the receipt
        cannot be read: then nothing is sent, lest it be counted twice."""
        assert self._unsure is not None
        seq, ops = self._unsure
        try:
            receipt = await self._client.get(self._receipt)
        except (RedisError, OSError) as e:
            self._failed(e, commands=1)
            return False
        self._unsure = None
        if receipt in (seq, seq.encode()):
            # Applied. (A command that failed inside it, WRONGTYPE say, is taken as applied
            # too: its answer was lost with the others. That can only undercount, which a
            # rebuild repairs, never count twice.)
            self._settle(ops, [True] * len(ops))
        return True

    # --- folding gathered counts into the pending state ------------------------------------

    def _fold(self, now: float) -> None:
        self._gather()
        counts, self._counts = self._counts, {}
        bits, self._bits = self._bits, {}
        hll, self._hll = self._hll, {}
        targets: dict[int, list[tuple[str, int]]] = {}
        pending, expire = self._pending, self._expire
        total = stats.TOTAL_FIELD
        dropped = 0
        for (sec, etype), n in counts.items():
            keys = targets.get(sec)
            if keys is None:
                keys = targets[sec] = stats.live_targets(sec, self._grans, self._keys, now)
            new = 0
            for key, _ in keys:
                fields = pending.get(key)
                if fields is None:
                    new += 2
                else:
                    new += (etype not in fields) + (total not in fields)
            if self._size + new > self._max_pending:
                dropped += n
                continue
            self._size += new
            for key, end in keys:
                fields = pending.get(key)
                if fields is None:
                    fields = pending[key] = {}
                    expire[key] = end
                fields[etype] = fields.get(etype, 0) + n
                fields[total] = fields.get(total, 0) + n
        dropped_users = 0
        for day, members in bits.items():
            dropped_users += self._fold_users(day, members, self._keys.bits_key(day),
                                              self._pending_bits, now)
        for day, names in hll.items():
            dropped_users += self._fold_users(day, names, self._keys.hll_key(day),
                                              self._pending_hll, now)
        if dropped or dropped_users:
            self._dropped(dropped, dropped_users)

    def _fold_users(self, day: int, members: set[Any], key: str,
                    pending: dict[str, set[Any]], now: float) -> int:
        """Add a day's users to the pending set of `key`; returns how many did not fit."""
        end = day + stats.DAY + self._uniques_retention
        if end <= now:
            return 0
        have = pending.get(key)
        fresh = members if have is None else members - have
        room = self._max_pending - self._size
        if len(fresh) > room:
            kept = set(islice(fresh, max(room, 0)))
            lost = len(fresh) - len(kept)
            fresh = kept
        else:
            lost = 0
        if fresh:
            if have is None:
                pending[key] = set(fresh)
            else:
                have |= fresh
            self._expire[key] = end
            self._size += len(fresh)
        return lost

    def _prune(self, now: float) -> None:
        """Forget pending writes of keys past their retention: they would expire at once."""
        for key in [k for k, end in self._expire.items() if end <= now]:
            del self._expire[key]
            fields = self._pending.pop(key, None)
            if fields:
                self._size -= len(fields)
            for pending in (self._pending_bits, self._pending_hll):
                members = pending.pop(key, None)
                if members:
                    self._size -= len(members)

    # --- one pipeline -----------------------------------------------------------------------

    def _queue(self, pipe: Any, now: float) -> list[_Op]:
        """Queue pending writes on `pipe`, about MAX_COMMANDS of them; returns one (kind, key,
        what) per command, in command order, so each result can be matched to what it
        acknowledges. What does not fit waits for the next tick."""
        ops: list[_Op] = []
        budget = MAX_COMMANDS
        touched: set[str] = set()
        for key, fields in self._pending.items():
            if budget <= 0:
                break
            for field, n in fields.items():
                pipe.hincrby(key, field, n)
                ops.append(("h", key, (field, n)))
            budget -= len(fields)
            touched.add(key)
        for kind, pending in (("b", self._pending_bits), ("p", self._pending_hll)):
            for key, members in pending.items():
                if budget <= 0:
                    break
                for chunk in _chunks(members):
                    if kind == "b":
                        args: list[Any] = []
                        for m in chunk:
                            args += ("SET", "u1", m, 1)
                        pipe.execute_command("BITFIELD", key, *args)
                    else:
                        pipe.pfadd(key, *chunk)
                    ops.append((kind, key, chunk))
                    budget -= 1
                touched.add(key)
        # EXPIRE after the writes: on a missing key it is a no-op, so it must follow them.
        # Keys not touched this time get theirs when their writes go out, unless only the
        # EXPIRE itself is left to retry.
        for key, end in self._expire.items():
            if key in touched or not self._has_writes(key):
                # Rounded up, and a second more: int() let the oldest bucket of the window
                # expire up to a second before the window left it, and read 0 (an audit).
                pipe.expire(key, max(1, math.ceil(end - now) + 1))
                ops.append(("e", key, None))
        return ops

    def _has_writes(self, key: str) -> bool:
        return key in self._pending or key in self._pending_bits or key in self._pending_hll

    def _settle(self, ops: list[_Op], results: list[Any]) -> None:
        """Drop acknowledged writes from the pending state; keep failed ones for next tick.

        The amounts sent are subtracted, not the fields dropped: after a flush of unknown
        outcome, later counts may have joined the same fields before the outcome is known (and
        a key past its retention may be gone from the pending state altogether)."""
        errors: list[BaseException] = []
        expired_ok: list[str] = []
        for (kind, key, what), result in zip(ops, results, strict=True):
            if isinstance(result, BaseException):
                errors.append(result)
                continue
            if kind == "h":
                fields = self._pending.get(key)
                field, n = what
                if fields is None or field not in fields:
                    continue
                left = fields[field]
                if left > n:
                    fields[field] = left - n
                    continue
                del fields[field]
                self._size -= 1
                if not fields:
                    del self._pending[key]
            elif kind == "e":
                expired_ok.append(key)
            else:
                pending = self._pending_bits if kind == "b" else self._pending_hll
                members = pending.get(key)
                if members is None:
                    continue
                self._size -= len(members & what)
                members -= what
                if not members:
                    del pending[key]
        for key in expired_ok:
            # A key whose writes failed needs its EXPIRE again after the retry.
            if not self._has_writes(key):
                self._expire.pop(key, None)
        if errors:
            self._failed(errors[0], commands=len(errors))
        else:
            self._succeeded()

    # --- incidents --------------------------------------------------------------------------

    def _failed(self, error: BaseException, *, commands: int) -> None:
        self._metrics.inc("collector_redis_errors_total", commands)
        self._metrics.inc("collector_stats_flushes_total", result="error")
        self._failures += 1
        if not self._failing:
            self._failing = True
            log.warning(
                "stats: writing counters to Redis failed (%s: %s); counts are kept (up to %d "
                "entries) and retried every %.3g s", type(error).__name__, error,
                self._max_pending, self._interval,
            )

    def _succeeded(self) -> None:
        self._metrics.inc("collector_stats_flushes_total", result=_OK)
        if self._failing:
            log.warning(
                "stats: Redis writes recovered after %d failed flushes; %d events dropped "
                "meanwhile (rebuild them with `collector stats rebuild --since <ts>`)",
                self._failures, self._dropped_in_incident,
            )
            self._failing = False
            self._failures = 0
            self._dropped_in_incident = 0
        if self._dropping and self._size < self._max_pending:
            self._dropping = False

    def _dropped(self, events: int, users: int) -> None:
        if events:
            self._metrics.inc("collector_stats_dropped_total", events, unit="events")
        if users:
            self._metrics.inc("collector_stats_dropped_total", users, unit="users")
        self._dropped_in_incident += events
        if not self._dropping:
            self._dropping = True
            log.warning(
                "stats: %d pending entries reached redis.max_pending_keys; further counts are "
                "dropped (and counted in collector_stats_dropped_total) until Redis catches up",
                self._size,
            )


def _is_cluster(client: Any) -> bool:
    """Whether `client` talks to a Redis Cluster (no transaction across slots there)."""
    from redis.asyncio.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def _chunks(members: set[Any]) -> Iterable[set[Any]]:
    it = iter(members)
    while chunk := set(islice(it, CHUNK)):
        yield chunk


_get_ts = itemgetter("ts")
_get_type = itemgetter("event_type")
_get_params = itemgetter("params")
