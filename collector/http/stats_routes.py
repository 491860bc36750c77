"""GET /api/stats and GET /api/stats/:type: the last 48 hours from the Redis counters (SPEC §3).

Answer
    {"type": t or "*", "from": ts, "to": ts, "total": N,
     "series": {"<granularity>": [[bucket_start, count], ...]}}
    and, without a type, "types": [{"event_type", "count"}] seen in the window (the
    MAX_TYPES most frequent, with "types_total" when there were more; none, with
    "types_omitted" saying why, past MAX_TYPE_FIELDS) and
    "uniques": [{"date", "users", "exact", "estimated"}] for each UTC day of the window.

The window
    `to` is now (whole seconds). Each granularity returns every bucket intersecting
    [to - min(window, retention), to], zeros included, oldest first: with the defaults 2881
    minutes, 49 hours and 3 days for the 48 h window, and the second granularity only its last
    2 h (7201 buckets), because older second buckets no longer exist. `from` is the start of
    the first bucket of the *reference* granularity (the finest one keeping the whole window,
    minute by default, or the one picked with ?granularity=), and `total` is the sum of its
    series: `total` counts exactly the events with ts from `from` to the end of the bucket
    holding `to`.
    "types" covers the same range, summed from as few buckets as possible (whole days and
    hours from day and hour hashes, the ragged edges from minute hashes: stats.tile).

Round trips and cost
    One pipeline for the whole answer (in a cluster, one per node): per granularity one EVAL
    of SERIES_SCRIPT over its window's keys (they share a hash tag, hence a slot), per
    granularity of the "types" tiling one EVAL of SUM_SCRIPT, and BITCOUNT + PFCOUNT per day.
    The worker's cost is encoding the key names (about 10,000 with the defaults, 7201 of them
    seconds; ?granularity= picks fewer) and parsing one JSON string per script. Redis unavailable:
    503 `stats_unavailable`, the client may retry.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote

import orjson
from redis.exceptions import RedisError

from collector import stats
from collector.config import Granularity
from collector.context import AppContext
from collector.http.message import Request, Response, error_response, json_response
from collector.http.router import Route
from collector.schema import MAX_EVENT_TYPE_CHARS, has_control

log = logging.getLogger(__name__)

SERIES_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = tonumber(redis.call('HGET', key, ARGV[1]) or '0')
end
return cjson.encode(out)
"""
"""One count per key (0 for a missing key or field), in key order, as a JSON array.

A script rather than one HGET per bucket in a pipeline: 7201 second buckets as 7201 commands
cost a worker ~100 ms of CPU to encode and parse, stolen from ingestion on the same event loop.
As one script answering one JSON string, the worker parses one reply with orjson. Its keys share
a hash tag (one granularity), so the script is valid in a cluster. Read-only; Redis caches the
compiled script after the first EVAL.
"""

SUM_SCRIPT = """
local fields = 0
for _, key in ipairs(KEYS) do
  fields = fields + redis.call('HLEN', key)
end
if fields > tonumber(ARGV[1]) then
  return cjson.encode({[ARGV[2]] = fields})
end
local sums = {}
local any = false
for _, key in ipairs(KEYS) do
  local h = redis.call('HGETALL', key)
  for i = 1, #h, 2 do
    sums[h[i]] = (sums[h[i]] or 0) + tonumber(h[i + 1])
    any = true
  end
end
if not any then return '{}' end
return cjson.encode(sums)
"""
"""Field-wise sum of the hashes at KEYS, as a JSON object; same reasons as above. Unless they
hold more than ARGV[1] fields in all: then {ARGV[2]: that number}, at the cost of one HLEN a key.
A script runs to its end while Redis answers no one else: summing the hashes of 100,000
distinct event types took 14 s in an audit, past the read timeout (503), and kept every
counter flush waiting."""

MAX_TYPE_FIELDS = 200_000
"""(bucket, event type) fields the "types" sum may read: about 0.1 s of Redis time."""
TOO_MANY = "\x00fields"
"""Marker of SUM_SCRIPT's refusal (no event type holds a control character)."""
MAX_TYPES = 1000
"""Event types listed, most frequent first; `types_total` says how many there were."""

_KEY_CACHE_MAX = 50_000


def routes(ctx: AppContext) -> list[Route]:
    reader = StatsReader(ctx)
    return [
        Route("GET", "/api/stats", reader.handle,
              "counts of every event type over the last 48 hours, per granularity"),
        Route("GET", "/api/stats/:type", reader.handle,
              "counts of one event type over the last 48 hours, per granularity"),
    ]


class StatsReader:
    """Builds stats answers from Redis; its only state is a cache of key names."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx
        self._grans = ctx.config.stats.granularities
        self._window = ctx.config.stats.window_seconds
        self._keys = stats.KeySpace(ctx.config.redis.key_prefix)
        self._key_cache: dict[str, dict[int, str]] = {}

    async def handle(self, request: Request) -> Response:
        raw = (request.path_params or {}).get("type")
        # The router matches the raw path: a type with spaces or slashes arrives %-encoded.
        # Stripped, as ingestion strips it before storing.
        event_type = None
        if raw is not None:
            try:
                event_type = unquote(raw, errors="strict").strip()
            except UnicodeDecodeError:
                event_type = None
            if not event_type or has_control(event_type) or \
                    len(event_type) > MAX_EVENT_TYPE_CHARS:
                # What ingestion refuses can have no count: say so rather than answer zeros
                # for U+FFFD or a NUL (an audit).
                return error_response(
                    400, "bad_event_type",
                    f"the event type in the path {raw[:80]!r} is not a valid event type once "
                    f"percent-decoded (UTF-8, 1 to {MAX_EVENT_TYPE_CHARS} characters, no control "
                    "characters); encode it with encodeURIComponent")
        picked = request.arg("granularity")
        if picked is not None:
            grans = tuple(g for g in self._grans if g.name == picked)
            if not grans:
                valid = ", ".join(g.name for g in self._grans)
                return error_response(
                    400, "bad_granularity",
                    f"unknown granularity {picked!r}; use one of: {valid} (or omit it for all)",
                )
        else:
            grans = self._grans
        client = self._ctx.redis
        if client is None:
            return error_response(
                503, "stats_unavailable",
                "real-time stats are turned off on this collector (redis.enabled = false, or no "
                "redis_stats in processors.request)",
            )
        try:
            body = await self.answer(client, grans, event_type, self._ctx.clock.time())
        except (RedisError, OSError) as e:
            self._ctx.metrics.inc("collector_redis_errors_total")
            log.warning("stats read from Redis failed: %s: %s", type(e).__name__, e)
            return error_response(
                503, "stats_unavailable",
                f"Redis cannot be read right now ({type(e).__name__}); retry in a few seconds "
                "(events are still accepted and counted meanwhile)",
                headers=[("retry-after", "5")],
            )
        return json_response(200, body)

    async def answer(self, client: Any, grans: tuple[Granularity, ...],
                     event_type: str | None, now: float) -> dict[str, Any]:
        """The answer body for `grans` at `now`, read in one pipeline (one round trip; in a
        cluster, one per node). Raises RedisError/OSError when Redis fails."""
        field = stats.TOTAL_FIELD if event_type is None else event_type
        to = int(now)
        ref = stats.reference_granularity(grans, self._window)
        windows = {g.name: stats.window_buckets(now, self._window, g) for g in grans}
        ref_starts = windows[ref.name]
        start, end = ref_starts[0], ref_starts[-1] + ref.seconds

        pipe = client.pipeline(transaction=False)
        for g in grans:
            keys = [self._key(g, s) for s in windows[g.name]]
            pipe.execute_command("EVAL", SERIES_SCRIPT, len(keys), *keys, field)
        groups: list[list[str]] = []
        days = stats.days_of(start, to)
        if event_type is None:
            groups = self._tile_groups(ref, start, end, now)
            for keys in groups:
                pipe.execute_command("EVAL", SUM_SCRIPT, len(keys), *keys, MAX_TYPE_FIELDS,
                                     TOO_MANY)
            for d in days:
                pipe.bitcount(self._keys.bits_key(d))
                # raw PFCOUNT: redis-py blocks its pfcount() helper in cluster pipelines
                pipe.execute_command("PFCOUNT", self._keys.hll_key(d))
        replies = iter(await pipe.execute())

        series = {
            g.name: [[s, int(n)] for s, n in zip(windows[g.name], orjson.loads(next(replies)),
                                                 strict=True)]
            for g in grans
        }
        body: dict[str, Any] = {
            "type": "*" if event_type is None else event_type,
            "from": start,
            "to": to,
            "total": sum(n for _, n in series[ref.name]),
            "series": series,
        }
        if event_type is None:
            sums = stats.sum_hashes(orjson.loads(next(replies)) for _ in groups)
            if TOO_MANY in sums:
                body["types"] = []
                body["types_omitted"] = (
                    f"more than {MAX_TYPE_FIELDS} (bucket, event type) counts in the window: too "
                    "many event types to sum here; ask /api/stats/<type> for one")
            else:
                types = stats.types_list(sums)
                body["types"] = types[:MAX_TYPES]
                if len(types) > MAX_TYPES:
                    body["types_total"] = len(types)
            body["uniques"] = [stats.uniques_row(d, int(next(replies)), int(next(replies)))
                               for d in days]
        return body

    def _tile_groups(self, ref: Granularity, start: int, end: int,
                     now: float) -> list[list[str]]:
        """The keys of the tiling of [start, end), one list per granularity (= per slot)."""
        by_gran: dict[str, list[str]] = {}
        for g, s in stats.tile(start, end, self._grans, ref, now):
            by_gran.setdefault(g.name, []).append(self._key(g, s))
        return list(by_gran.values())

    def _key(self, g: Granularity, start: int) -> str:
        """Key names, cached: formatting 10,000 of them per request would cost more than the
        reads (a poll every second finds all but one per granularity cached)."""
        cache = self._key_cache.get(g.name)
        if cache is None or len(cache) > _KEY_CACHE_MAX:
            cache = self._key_cache[g.name] = {}
        key = cache.get(start)
        if key is None:
            key = cache[start] = self._keys.counter_key(g, start)
        return key
