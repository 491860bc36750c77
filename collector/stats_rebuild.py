"""`collector stats rebuild --since TS [--until TS]`: recompute Redis counters from the segments.

The segments are the source of truth (SPEC §1); the Redis counters can miss counts (Redis
down longer than the pending bound, a worker killed with counts in memory) or hold a few too
many (a pipeline applied by Redis whose answer timed out, then retried). This command puts
them back to exactly what the segments say, for a window.

What is replaced
    Every bucket touching [since, until], at every granularity, and the uniques of every UTC
    day touching it. A bucket is a sum over all its events, so the events read are those of
    the widened span [lo, hi) = [midnight before since, midnight after until) (stats.
    rebuild_span): replacing a straddling bucket from part of its events would lose the
    rest. Buckets past their retention are not written back. With a granularity whose width
    does not divide a day, its two edge buckets may straddle the span: they are left alone
    and reported (`straddling_buckets`).

Idempotence and atomicity
    Each bucket is built in a temporary key (same hash tag, so the same cluster slot) and
    RENAMEd over the live key: readers see the old value or the new one, never a half-built
    one. A bucket with no events is deleted. Running it twice gives the same counts.

Which segments are read
    Every segment, sealed and open (complete lines only), except sealed ones last modified
    before `lo - server.max_future_skew - 1 h`: an event's ts is at most max_future_skew
    ahead of its receive time (the corrected ts is range-checked at ingestion), and a file is
    modified after every event in it was received, so such a file has no event at or after lo.

Open buckets
    A bucket still receiving live counts (its end after now less a few flush intervals: the
    current minute, hour and day) is left alone by default and reported (`open_buckets`),
    with the uniques of the current day: the workers add to it while this command reads the
    segments, and replacing it would lose what they added meanwhile (an audit lost 632
    counts so under load). Rerun once those buckets have closed, or pass `include_open`
    (`--include-open`) to replace them anyway, on a quiet collector.

Known limits
    - Events with an old ts (a client that buffered them offline) may still arrive into a
      closed bucket while it is rebuilt: those counts are lost from it.
    - Segments deleted by the loader's retention (7 days by default) cannot be recounted: a
      rebuild reaching further back replaces those days with what is left.
    - Memory grows with the distinct (second, event type) pairs and users of the span.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
from tqdm import tqdm

from collector import stats
from collector.clock import Clock, SystemClock
from collector.config import Config, Granularity
from collector.embedded_redis import ping_unix
from collector.storage.segment_log import SegmentInfo, list_segments

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
WRITE_BATCH = 500
"""Commands per pipeline round trip when writing the rebuilt keys."""
MEMBERS_PER_COMMAND = 1000
OPEN_FLUSHES = 4
OPEN_SECONDS = 10.0
"""A bucket that ended less than this many seconds (or OPEN_FLUSHES x redis.flush_interval)
ago may still get live counts: it is left alone unless include_open."""
MTIME_MARGIN = 3600.0
"""Slack on the file-mtime pruning, for clock steps and copied files."""


def rebuild(
    cfg: Config,
    since: float,
    until: float | None,
    *,
    progress: bool = True,
    client: Any = None,
    clock: Clock | None = None,
    include_open: bool = False,
) -> dict[str, Any]:
    """Recompute the counters and uniques of [since, until] (until None: now).

    Args:
        client: a synchronous redis client (redis.Redis or redis.cluster.RedisCluster); None
            builds one from cfg.redis (the embedded Redis's socket when redis.url is empty,
            which then must be running: `collector serve` runs it).
        clock: "now", for retention and TTLs; the system clock by default.
        include_open: replace the buckets still receiving live counts too (see Open buckets).
    Returns:
        a summary: the span read, segments, bytes, lines, events counted, bad lines, keys
        written and deleted, straddling buckets left alone.
    Raises:
        ValueError: until < since.
        RuntimeError: the embedded Redis is not running.
        redis.RedisError: Redis failed while writing (the command can simply be rerun).
    """
    clock = clock or SystemClock()
    now = clock.time()
    until = now if until is None else until
    if until < since:
        raise ValueError(f"--until ({until}) is before --since ({since})")
    grans = cfg.stats.granularities
    stats.validate_granularities(grans, cfg.redis.key_prefix)
    lo, hi = stats.rebuild_span(since, until, grans)
    buckets, straddling = stats.replaced_buckets(lo, hi, grans, now)
    # Live counts reach Redis up to a few flush intervals after their event: a bucket that
    # ended more recently may still get some.
    closed_by = math.inf if include_open else now - max(OPEN_SECONDS,
                                                         OPEN_FLUSHES * cfg.redis.flush_interval)
    # Reported: those that have started (the current second, minute, hour, day...); the later
    # ones of the span are left alone too, but counting them said "75,781 buckets" on a quiet
    # collector (an audit).
    open_buckets = sum(1 for g, s in buckets if s + g.seconds > closed_by and s <= now)
    buckets = [(g, s) for g, s in buckets if s + g.seconds <= closed_by]
    keys = stats.KeySpace(cfg.redis.key_prefix)

    segments = _segments_to_read(cfg, lo)
    tally = _Tally(lo, hi, cfg.stats.user_key)
    total_bytes = sum(s.size for s in segments)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="reading segments",
              disable=not progress, leave=False) as bar:
        for seg in segments:
            for line in _complete_lines(seg.path, bar.update):
                tally.line(line)

    own_client = client is None
    if own_client:
        client = _default_client(cfg)
    try:
        writer = _Writer(client)
        _write_counters(writer, tally, buckets, keys, now)
        _write_uniques(writer, tally, lo, hi if include_open else min(hi, int(closed_by)), keys,
                       stats.uniques_retention(cfg.stats), now)
        writer.flush()
    finally:
        if own_client:
            client.close()
    summary = {
        "since": since,
        "until": until,
        "span": [lo, hi],
        "segments": len(segments),
        "bytes": total_bytes,
        "lines": tally.lines,
        "events": tally.events,
        "bad_lines": tally.bad,
        "keys_written": writer.written,
        "keys_deleted": writer.deleted,
        "straddling_buckets": straddling,
        "open_buckets": open_buckets,
    }
    if open_buckets:
        log.warning("stats rebuild: %d buckets still receiving live counts (the latest "
                    "minutes, hours and days) were left alone; rerun once they have closed, or "
                    "with --include-open on a quiet collector", open_buckets)
    log.info("stats rebuild done: %s", summary)
    return summary


def _default_client(cfg: Config) -> Any:
    from collector.storage.redis_client import make_sync_redis_client

    if cfg.redis.url:
        return make_sync_redis_client(cfg.redis)
    sock = cfg.run_path / "redis.sock"
    if not ping_unix(sock):
        raise RuntimeError(
            f"the embedded Redis is not answering on {sock}: start `collector serve` (it runs "
            "the embedded Redis) or set redis.url"
        )
    return make_sync_redis_client(cfg.redis, f"unix://{sock}")


def _segments_to_read(cfg: Config, lo: int) -> list[SegmentInfo]:
    oldest = lo - cfg.server.max_future_skew - MTIME_MARGIN
    out = []
    for seg in list_segments(cfg.segments_path):
        if seg.sealed:
            try:
                if seg.path.stat().st_mtime < oldest:
                    continue
            except FileNotFoundError:
                continue
        out.append(seg)
    return out


def _complete_lines(path: Path, advance: Any) -> Iterator[bytes]:
    """The complete lines of a segment; a torn last line of an `.open` file is left out.

    An `.open` file sealed (renamed) since the listing is read under its sealed name.
    """
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below; the fallback needs the try)
    except FileNotFoundError:
        sealed = path.with_suffix("")  # <id>.ndjson.open -> <id>.ndjson
        if sealed == path or not sealed.exists():
            return
        f = open(sealed, "rb")  # noqa: SIM115
    with f:
        rest = b""
        while chunk := f.read(READ_CHUNK):
            advance(len(chunk))
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            yield from lines


class _Tally:
    """Counts of the events with ts in [lo, hi), aggregated like StatsCounters.add."""

    def __init__(self, lo: int, hi: int, user_key: str) -> None:
        self.lo, self.hi, self.user_key = lo, hi, user_key
        self.counts: dict[tuple[int, str], int] = {}
        self.bits: dict[int, set[int]] = {}
        self.hll: dict[int, set[str]] = {}
        self.lines = self.events = self.bad = 0

    def line(self, raw: bytes) -> None:
        if not raw.strip():
            return
        self.lines += 1
        try:
            e = orjson.loads(raw)
            ts, etype, params = e["ts"], e["event_type"], e.get("params") or {}
            if not isinstance(ts, int | float) or not isinstance(etype, str):
                raise TypeError(ts)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            self.bad += 1
            return
        if not self.lo <= ts < self.hi:
            return
        self.events += 1
        sec = int(ts)
        k = (sec, etype)
        self.counts[k] = self.counts.get(k, 0) + 1
        member = stats.user_member(params.get(self.user_key)) if isinstance(params, dict) \
            else None
        if member is None:
            return
        day = sec - sec % stats.DAY
        if isinstance(member, int):
            self.bits.setdefault(day, set()).add(member)
        else:
            self.hll.setdefault(day, set()).add(member)


class _Writer:
    """Queues commands and sends them WRITE_BATCH at a time (one round trip each)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._pipe = client.pipeline(transaction=False)
        self._queued = 0
        self._doomed: dict[str, list[str]] = {}
        self.written = 0
        self.deleted = 0

    def command(self, name: str, *args: Any, **kwargs: Any) -> None:
        getattr(self._pipe, name)(*args, **kwargs)
        self._queued += 1
        if self._queued >= WRITE_BATCH:
            self.flush()

    def raw(self, *args: Any) -> None:
        self._pipe.execute_command(*args)
        self._queued += 1
        if self._queued >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        for keys in self._doomed.values():
            for i in range(0, len(keys), MEMBERS_PER_COMMAND):
                self._pipe.execute_command("DEL", *keys[i:i + MEMBERS_PER_COMMAND])
                self._queued += 1
        self._doomed.clear()
        if self._queued:
            self._pipe.execute(raise_on_error=True)
            self._queued = 0

    def replace(self, key: str, ttl: int, fill: Any) -> None:
        """Build `key` in a temporary key with `fill(tmp)` and RENAME it over `key`."""
        tmp = key + ":rebuild"  # same hash tag: same cluster slot, so RENAME is allowed
        self.command("delete", tmp)
        fill(tmp)
        self.command("expire", tmp, max(1, ttl))
        # Raw RENAME: redis-py blocks its rename() helper in cluster pipelines, although a
        # rename inside one slot (which the shared hash tag guarantees) is fine.
        self.raw("RENAME", tmp, key)
        self.written += 1

    def delete(self, key: str) -> None:
        """Delete `key` (at the next flush): one DEL per hash tag carries many keys, and keys
        sharing a tag share a cluster slot, so a multi-key DEL is allowed."""
        tag = key[: key.index("}") + 1]
        self._doomed.setdefault(tag, []).append(key)
        self.deleted += 1


def _write_counters(writer: _Writer, tally: _Tally, buckets: list[tuple[Granularity, int]],
                    keys: stats.KeySpace, now: float) -> None:
    replaced = {keys.counter_key(g, s): stats.deadline(s, g) for g, s in buckets}
    content: dict[str, dict[str, int]] = {}
    total = stats.TOTAL_FIELD
    grans = list(dict.fromkeys(g for g, _ in buckets))
    for (sec, etype), n in tally.counts.items():
        for key, _ in stats.live_targets(sec, grans, keys, now):
            if key not in replaced:
                continue
            fields = content.setdefault(key, {})
            fields[etype] = fields.get(etype, 0) + n
            fields[total] = fields.get(total, 0) + n
    for key, end in replaced.items():
        found = content.get(key)
        if found is None:
            writer.delete(key)
        else:
            writer.replace(key, int(end - now),
                           lambda tmp, f=found: writer.command("hset", tmp, mapping=f))


def _write_uniques(writer: _Writer, tally: _Tally, lo: int, hi: int, keys: stats.KeySpace,
                   retention: int, now: float) -> None:
    for day in range(stats.bucket_start(lo, stats.DAY), hi, stats.DAY):
        end = day + stats.DAY + retention
        if day < lo or day + stats.DAY > hi or end <= now:
            continue
        ttl = int(end - now)
        bits = tally.bits.get(day)
        if bits:
            writer.replace(keys.bits_key(day), ttl,
                           lambda tmp, m=bits: _fill_bits(writer, tmp, m))
        else:
            writer.delete(keys.bits_key(day))
        names = tally.hll.get(day)
        if names:
            writer.replace(keys.hll_key(day), ttl,
                           lambda tmp, m=names: _fill_hll(writer, tmp, m))
        else:
            writer.delete(keys.hll_key(day))


def _fill_bits(writer: _Writer, key: str, members: set[int]) -> None:
    it = iter(sorted(members))
    while chunk := list(islice(it, MEMBERS_PER_COMMAND)):
        args: list[Any] = []
        for m in chunk:
            args += ("SET", "u1", m, 1)
        writer.raw("BITFIELD", key, *args)


def _fill_hll(writer: _Writer, key: str, members: set[str]) -> None:
    it = iter(members)
    while chunk := list(islice(it, MEMBERS_PER_COMMAND)):
        writer.command("pfadd", key, *chunk)
