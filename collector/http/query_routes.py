"""GET /api/events and POST /api/events/query: reading the event store (SPEC §3, §9).

Answer
    {"page": p, "limit": l, "total": N, "events": [{"id": "...", "event_type", "ts", "params",
    "received_at", and "event_id" / "sent_at" when the event has them}]}, newest ts first, ties
    by id descending (the later-minted event first). Only what the loader has loaded is
    visible; its lag is a metric.

Parameters
    `page` (from 1, default 1) and `limit` (default 100; above 1000 it is capped at 1000, as
    SPEC §3 says, and the answer's `limit` shows the value used), `startDate` and `endDate`
    (UNIX seconds, inclusive; a number, a numeric string, or empty/null for unbounded) and
    `eventType` (a string or an array of strings; empty means every type): in GET's query
    string or in POST's body. The body is JSON or `application/x-www-form-urlencoded` (a body
    starting with "{" is JSON whatever its Content-Type says: `curl -d` labels JSON as a
    form); in a form or query string, several types are sent by repeating `eventType` (or
    `eventType[]`, as jQuery does). A comma is not a separator: it is
    a legal character of an event type. Unknown body fields are rejected (a misspelt
    `event_type` would otherwise silently return every type); GET ignores unknown query
    parameters (cache busters).

Errors
    401/403 without the read token (auth.check_read, first), 400 with a message saying how to
    fix a bad value, 503 when the store cannot be read (the client may retry).

Queries are blocking (SQLite, pymongo) and run in the loop's default executor; the store's
reader is thread-safe (loader/stores/sqlite.py: one connection per thread).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from typing import Any
from urllib.parse import parse_qs

import orjson

from collector.auth import check_read, token_source
from collector.context import AppContext
from collector.http.message import Request, Response, error_response, json_response
from collector.http.router import Route
from loader.stores.base import STORE_ERRORS

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_PAGE = 1_000_000
"""Deep offsets cost a scan of every skipped row; past this, narrow the range instead."""
FIELDS = ("page", "limit", "startDate", "endDate", "eventType")


class BadQuery(Exception):
    """A parameter that cannot be used; the message says how to fix it."""


def routes(ctx: AppContext) -> list[Route]:
    reader = EventsReader(ctx)
    return [
        Route("GET", "/api/events", reader.list_events,
              "loaded events, newest first: ?page=&limit=&startDate=&endDate=&eventType= "
              "(read token needed)"),
        Route("POST", "/api/events/query", reader.query_events,
              "filtered events: page, limit, startDate, endDate, eventType "
              "(JSON or form body; read token needed)", precheck=reader.denied),
    ]


class EventsReader:
    def __init__(self, ctx: AppContext) -> None:
        self._ctx = ctx
        if ctx.store is None:
            # The lead's composition root normally opens it; open our own otherwise. A
            # readonly store opens nothing until the first query.
            from loader.stores import open_store

            try:
                ctx.store = open_store(ctx.config, readonly=True)
            except Exception as e:  # reads answer 503 below; ingestion must not care
                log.warning("event store not available for reads: %s", e)

    def denied(self, request: Request) -> Response | None:
        """The 401/403 of a request without the read token (also Route.precheck)."""
        return check_read(request, self._ctx.read_token, token_source(self._ctx.config))

    async def list_events(self, request: Request) -> Response:
        denied = self.denied(request)
        if denied is not None:
            return denied
        return await self._filtered(form_fields(request.query), strict=False)

    async def query_events(self, request: Request) -> Response:
        denied = self.denied(request)
        if denied is not None:
            return denied
        try:
            params = parse_body(request)
        except BadQuery as e:
            return error_response(400, "bad_query", str(e))
        return await self._filtered(params, strict=True)

    async def _filtered(self, params: dict[str, Any], *, strict: bool) -> Response:
        """Answer for validated parameters; `strict` refuses unknown ones (see the module
        docstring: a body's misspelt field is an error, a query string's extra one is not)."""
        try:
            unknown = sorted(set(params) - set(FIELDS))
            if unknown and strict:
                raise BadQuery(f"unknown field {unknown[0]!r}; the fields are "
                               f"{', '.join(FIELDS)}")
            page = parse_page(params.get("page"))
            limit = parse_limit(params.get("limit"))
            start = parse_date(params.get("startDate"), "startDate")
            end = parse_date(params.get("endDate"), "endDate")
            types = parse_types(params.get("eventType"))
            if start is not None and end is not None and start > end:
                raise BadQuery(f"startDate ({start}) is after endDate ({end}); both are "
                               "inclusive UNIX seconds")
        except BadQuery as e:
            return error_response(400, "bad_query", str(e))
        return await self._answer(page, limit, start, end, types)

    async def _answer(self, page: int, limit: int, start: float | None, end: float | None,
                      types: list[str] | None) -> Response:
        store = self._ctx.store
        if store is None:
            return error_response(503, "store_unavailable",
                                  "the event store could not be opened; see the collector log")
        query = functools.partial(store.query_events, page=page, limit=limit, start=start,
                                  end=end, event_types=types)
        try:
            total, events = await asyncio.get_running_loop().run_in_executor(None, query)
        except STORE_ERRORS as e:
            log.warning("event store query failed: %s", e)
            return error_response(503, "store_unavailable",
                                  f"the event store cannot be read right now ({e}); retry")
        return json_response(200, {"page": page, "limit": limit, "total": total,
                                   "events": events})


# -- parameters (pure functions) -------------------------------------------------------------
def parse_body(request: Request) -> dict[str, Any]:
    """The POST parameters: a JSON object, or a urlencoded form (lists for repeated keys)."""
    ctype = (request.header(b"content-type") or b"").decode("latin-1").lower()
    body = request.body
    if "application/x-www-form-urlencoded" in ctype and body.lstrip()[:1] != b"{":
        # (A form never starts with "{": that is JSON sent by `curl -d`, whose default
        # Content-Type is the form's. Read as a form it would be one unknown field.)
        return parse_form(body)
    if not body.strip():
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadQuery(f"the body is not valid JSON ({e}); send a JSON object such as "
                       '{"eventType": "signup", "page": 1} or a form-encoded body') from None
    if not isinstance(doc, dict):
        raise BadQuery('the body must be a JSON object such as {"eventType": "signup"}')
    return doc


def parse_form(body: bytes) -> dict[str, Any]:
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise BadQuery("the form body is not UTF-8") from None
    return form_fields(form)


def form_fields(form: dict[str, list[str]]) -> dict[str, Any]:
    """Parameters from a parsed form or query string: the last value of each, except
    eventType, which collects every value (repeated, or as `eventType[]`)."""
    out: dict[str, Any] = {}
    for key, values in form.items():
        name = key[:-2] if key.endswith("[]") else key
        if name == "eventType":
            out.setdefault(name, []).extend(values)
        else:
            out[name] = values[-1]
    return out


def _whole(value: Any, name: str, example: str) -> int | None:
    """An integer parameter: an int, or a string of digits; None/"" when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadQuery(f"{name} must be a whole number, e.g. {example}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise BadQuery(f"{name} must be a whole number, e.g. {example}; got {value!r}")


def parse_page(value: Any) -> int:
    page = _whole(value, "page", "page=2")
    if page is None:
        return 1
    if page < 1:
        raise BadQuery(f"page starts at 1; got {page}")
    if page > MAX_PAGE:
        raise BadQuery(f"page must be at most {MAX_PAGE}; narrow startDate/endDate instead")
    return page


def parse_limit(value: Any) -> int:
    limit = _whole(value, "limit", "limit=100")
    if limit is None:
        return DEFAULT_LIMIT
    if limit < 1:
        raise BadQuery(f"limit must be between 1 and {MAX_LIMIT}; got {limit}")
    return min(limit, MAX_LIMIT)


def parse_date(value: Any, name: str) -> float | None:
    """UNIX seconds (int, float or numeric string); None for absent, null or ""."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise BadQuery(f"{name} must be UNIX seconds, e.g. 1456606932; got {value!r}")
    try:
        ts = float(value)
    except (TypeError, ValueError):
        raise BadQuery(f"{name} must be UNIX seconds, e.g. 1456606932; got {value!r}") from None
    if not math.isfinite(ts) or ts < 0:
        raise BadQuery(f"{name} must be UNIX seconds >= 0, e.g. 1456606932; got {value!r}")
    if ts > 1e11:
        raise BadQuery(f"{name} {value!r} looks like milliseconds; send seconds (divide by 1000)")
    return ts


def parse_types(value: Any) -> list[str] | None:
    """eventType: a string or a list of strings; None (every type) when absent or empty."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise BadQuery('eventType must be a string or an array of strings, e.g. '
                       '"signup" or ["signup", "login"]')
    types = list(dict.fromkeys(t.strip() for t in items if t.strip()))
    return types or None
