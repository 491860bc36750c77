"""GET /api/stats and GET /api/stats/:type: the last 48 hours from the Redis counters (SPEC §3).

Answer
    {"type": t or "*", "from": ts, "to": ts, "total": N,
     "series": {"<granularity>": [[bucket_start, count], ...]}}
    and, without a type, "types": [{"event_type", "count"}] seen in the window and
    "uniques": [{"date", "users", "exact", "estimated"}] for each UTC day of the window.

The window
    `to` is now (whole seconds). Each granularity returns every bucket intersecting
    [to - min(window, retention), to], zeros included, oldest first: with the defaults 2881
    minutes, 49 hours and 3 days for the 48 h window, and the second granularity only its last
    2 h (7201 buckets), because older second buckets no longer exist. `from` is the start of
    the first bucket of the *reference* granularity (the finest one keeping the whole window,
    minute by default, or the one picked with ?granularity=), and `total` is the sum of its
    series: so `total` counts exactly the events with ts in [from, to + its bucket width).
    "types" covers the same range, summed from as few buckets as possible (whole days and
    hours from day and hour hashes, the ragged edges from minute hashes: stats.tile).

Round trips
    One pipeline per granularity (all keys of a granularity share a hash tag, so in a cluster
    each is one node), one for the types and one for the uniques. Redis unavailable: 503
    `stats_unavailable`, the client may retry.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote

from redis.exceptions import RedisError

from collector import stats
from collector.config import Granularity
from collector.context import AppContext
from collector.http.message import Request, Response, error_response, json_response
from collector.http.router import Route

log = logging.getLogger(__name__)


def routes(ctx: AppContext) -> list[Route]:
    reader = StatsReader(ctx)
    return [
        Route("GET", "/api/stats", reader.handle,
              "counts of every event type over the last 48 hours, per granularity"),
        Route("GET", "/api/stats/:type", reader.handle,
              "counts of one event type over the last 48 hours, per granularity"),
    ]


class StatsReader:
    """Builds stats answers from Redis; holds no state besides the context."""

    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx
        self._grans = ctx.config.stats.granularities
        self._window = ctx.config.stats.window_seconds
        self._keys = stats.KeySpace(ctx.config.redis.key_prefix)

    async def handle(self, request: Request) -> Response:
        raw = request.path_params.get("type")
        # The router matches the raw path: a type with spaces or slashes arrives %-encoded.
        event_type = unquote(raw) if raw is not None else None
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
                "real-time stats are turned off on this collector (redis.enabled = false)",
            )
        try:
            body = await self.answer(client, grans, event_type, self._ctx.clock.time())
        except (RedisError, OSError) as e:
            log.warning("stats read from Redis failed: %s: %s", type(e).__name__, e)
            return error_response(
                503, "stats_unavailable",
                f"Redis cannot be read right now ({type(e).__name__}); retry in a few seconds",
            )
        return json_response(200, body)

    async def answer(self, client: Any, grans: tuple[Granularity, ...],
                     event_type: str | None, now: float) -> dict[str, Any]:
        """The answer body for `grans` at `now`; raises RedisError/OSError when Redis fails."""
        field = stats.TOTAL_FIELD if event_type is None else event_type
        series: dict[str, list[list[int]]] = {}
        for g in grans:
            series[g.name] = await self._series(client, g, field, now)
        ref = stats.reference_granularity(grans, self._window)
        ref_series = series[ref.name]
        to = int(now)
        body: dict[str, Any] = {
            "type": "*" if event_type is None else event_type,
            "from": ref_series[0][0],
            "to": to,
            "total": sum(n for _, n in ref_series),
            "series": series,
        }
        if event_type is None:
            end = ref_series[-1][0] + ref.seconds
            body["types"] = await self._types(client, ref, ref_series[0][0], end, now)
            body["uniques"] = await self._uniques(client, ref_series[0][0], to)
        return body

    async def _series(self, client: Any, g: Granularity, field: str,
                      now: float) -> list[list[int]]:
        starts = stats.window_buckets(now, self._window, g)
        pipe = client.pipeline(transaction=False)
        for s in starts:
            pipe.hget(self._keys.counter_key(g, s), field)
        values = await pipe.execute()
        return [[s, stats.as_count(v)] for s, v in zip(starts, values, strict=True)]

    async def _types(self, client: Any, ref: Granularity, start: int, end: int,
                     now: float) -> list[dict[str, Any]]:
        pieces = stats.tile(start, end, self._grans, ref, now)
        pipe = client.pipeline(transaction=False)
        for g, s in pieces:
            pipe.hgetall(self._keys.counter_key(g, s))
        hashes = await pipe.execute()
        return stats.types_list(stats.sum_hashes(hashes))

    async def _uniques(self, client: Any, start: int, end: int) -> list[dict[str, Any]]:
        days = stats.days_of(start, end)
        pipe = client.pipeline(transaction=False)
        for d in days:
            pipe.bitcount(self._keys.bits_key(d))
            pipe.pfcount(self._keys.hll_key(d))
        counts = await pipe.execute()
        return [
            stats.uniques_row(d, int(counts[2 * i]), int(counts[2 * i + 1]))
            for i, d in enumerate(days)
        ]
