"""The analytics endpoints of SPEC §11, behind the read token.

    GET  /api/analytics/rollup?period=&from=&to=&eventType=
    GET  /api/analytics/peak-times?from=&to=&eventType=&tz=
    GET  /api/analytics/uniques?from=&to=&tz=
    GET  /api/analytics/users?from=&to=&top=20
    GET  /api/analytics/flows?from=&to=&start=&top=50
    POST /api/analytics/funnel   {"steps": [...], "window": s, "from": ..., "to": ...}

Order of checks: the read token (401/403), then the parameters (400 `bad_param` with a message
naming the parameter; loader/analytics/params.py has the rules), then the store (503
`store_unavailable` when it cannot be opened or read: the client may retry). Unknown query
parameters are a 400 (a misspelt `eventType` must not silently answer for every type), except
`_`, the cache buster some HTTP clients add.

The queries block (SQLite, pymongo) and run in the loop's default executor; the stores' readers
are thread-safe. `from`/`to` default to the last 7 days of the injected clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson

from collector.auth import check_read, token_source
from collector.context import AppContext
from collector.http.message import Request, Response, error_response, json_response
from collector.http.router import Route
from loader.analytics import Analytics, for_store
from loader.analytics import params as P
from loader.stores.base import STORE_ERRORS

log = logging.getLogger(__name__)

CACHE_BUSTER = "_"


def routes(ctx: AppContext) -> list[Route]:
    api = AnalyticsRoutes(ctx)
    return [
        Route("GET", "/api/analytics/rollup", api.rollup,
              "event totals per day|week|month|year: ?period=&from=&to=&eventType= "
              "(read token needed)"),
        Route("GET", "/api/analytics/peak-times", api.peak_times,
              "events by hour of day and weekday: ?from=&to=&eventType=&tz= (read token needed)"),
        Route("GET", "/api/analytics/uniques", api.uniques,
              "distinct users per day: ?from=&to=&tz= (read token needed)"),
        Route("GET", "/api/analytics/users", api.users,
              "most active users and events-per-user distribution: ?from=&to=&top= "
              "(read token needed)"),
        Route("GET", "/api/analytics/flows", api.flows,
              "most frequent pairs of consecutive events of a user: ?from=&to=&start=&top= "
              "(read token needed)"),
        Route("POST", "/api/analytics/funnel", api.funnel,
              'funnel conversion: {"steps": [...], "window": seconds, "from": ..., "to": ...} '
              "(read token needed)", precheck=api.denied),
    ]


Job = Callable[[Analytics], dict[str, Any]]


class AnalyticsRoutes:
    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx
        self._analytics: Analytics | None = None

    # -- plumbing ----------------------------------------------------------------------------
    def _backend(self) -> Analytics | None:
        if self._analytics is None and self._ctx.store is not None:
            self._analytics = for_store(self._ctx.store)
        return self._analytics

    def _now(self) -> float:
        return self._ctx.clock.time()

    def _query(self, request: Request, allowed: tuple[str, ...]) -> P.Query:
        query = {k: v for k, v in request.query.items() if k != CACHE_BUSTER}
        P.check_known(query, allowed)
        return query

    def denied(self, request: Request) -> Response | None:
        """The 401/403 of a request without the read token (also Route.precheck)."""
        return check_read(request, self._ctx.read_token, token_source(self._ctx.config))

    async def _serve(self, request: Request, build: Callable[[], Job]) -> Response:
        denied = self.denied(request)
        if denied is not None:
            return denied
        try:
            job = build()
        except P.BadParam as e:
            return error_response(400, "bad_param", e.message)
        analytics = self._backend()
        if analytics is None:
            return error_response(503, "store_unavailable",
                                  "the event store could not be opened; see the collector log")
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(None, job, analytics)
        except STORE_ERRORS as e:
            log.warning("analytics query failed: %s", e)
            return error_response(503, "store_unavailable",
                                  f"the event store cannot be read right now ({e}); retry")
        return json_response(200, answer)

    # -- endpoints ---------------------------------------------------------------------------
    async def rollup(self, request: Request) -> Response:
        def build() -> Job:
            q = self._query(request, ("period", "from", "to", "eventType"))
            period = P.period(P.last(q, "period"))
            rng = P.time_range(P.last(q, "from"), P.last(q, "to"), self._now())
            types = P.event_types(q)
            return lambda a: a.rollup(period, rng, types)

        return await self._serve(request, build)

    async def peak_times(self, request: Request) -> Response:
        def build() -> Job:
            q = self._query(request, ("from", "to", "eventType", "tz"))
            rng = P.time_range(P.last(q, "from"), P.last(q, "to"), self._now())
            types = P.event_types(q)
            tz = P.timezone(P.last(q, "tz"))
            return lambda a: a.peak_times(rng, types, tz)

        return await self._serve(request, build)

    async def uniques(self, request: Request) -> Response:
        def build() -> Job:
            q = self._query(request, ("from", "to", "tz"))
            rng = P.uniques_range(P.time_range(P.last(q, "from"), P.last(q, "to"),
                                               self._now()))
            tz = P.timezone(P.last(q, "tz"))
            return lambda a: a.uniques(rng, tz)

        return await self._serve(request, build)

    async def users(self, request: Request) -> Response:
        def build() -> Job:
            q = self._query(request, ("from", "to", "top"))
            rng = P.time_range(P.last(q, "from"), P.last(q, "to"), self._now())
            top = P.top(P.last(q, "top"), P.DEFAULT_TOP_USERS)
            return lambda a: a.users(rng, top)

        return await self._serve(request, build)

    async def flows(self, request: Request) -> Response:
        def build() -> Job:
            q = self._query(request, ("from", "to", "start", "top"))
            rng = P.time_range(P.last(q, "from"), P.last(q, "to"), self._now())
            start = P.last(q, "start")
            top = P.top(P.last(q, "top"), P.DEFAULT_TOP_FLOWS)
            return lambda a: a.flows(rng, start, top)

        return await self._serve(request, build)

    async def funnel(self, request: Request) -> Response:
        def build() -> Job:
            self._query(request, ())
            try:
                body = orjson.loads(request.body) if request.body.strip() else None
            except orjson.JSONDecodeError as e:
                raise P.BadParam(f"the body is not valid JSON ({e})") from None
            q = P.funnel(body, self._now())
            return lambda a: a.funnel(q)

        return await self._serve(request, build)
