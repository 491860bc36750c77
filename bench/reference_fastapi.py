"""The FastAPI reference for the ingestion benchmark: the same endpoint, written the usual way.

`POST /api/events` parses the JSON body, appends one NDJSON line per event to a file and answers
202 `{"status": "accepted"}`; `GET /healthz` answers 200 so the benchmark knows it is up.

What it deliberately shares with the collector, so that the ratio measures the HTTP stack and
not a difference in work: orjson for parsing and encoding (a faster reference, not a strawman),
and the same durability as the collector's default `durability = "os"`: one `os.write` on an
`O_APPEND` descriptor per request, i.e. acknowledged once the kernel has the bytes. What it
does not do (validation of SPEC section 2, ids, metrics) only makes it cheaper than the
collector, so a ratio in the collector's favour is not flattered by it.

Run (the benchmark does this, pinned to one core):

    BENCH_EVENTS_FILE=/tmp/events.ndjson uvicorn --factory reference_fastapi:create_app \
        --app-dir bench --loop uvloop --http httptools --no-access-log --workers 1
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request, Response

EVENTS_FILE_ENV = "BENCH_EVENTS_FILE"
_ACCEPTED = orjson.dumps({"status": "accepted"})
_BAD_JSON = orjson.dumps({"error": "bad_json", "message": "the body is not JSON"})


def create_app() -> FastAPI:
    """The app; the events file comes from `BENCH_EVENTS_FILE` (default ./events.ndjson)."""
    path = os.environ.get(EVENTS_FILE_ENV, "events.ndjson")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One descriptor for the life of the process: opening per request would measure open(2).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        app.state.fd = fd
        try:
            yield
        finally:
            os.close(fd)

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/api/events")
    async def register(request: Request) -> Response:
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return Response(_BAD_JSON, status_code=400, media_type="application/json")
        events = data if isinstance(data, list) else [data]
        lines = b"".join(orjson.dumps(e, option=orjson.OPT_APPEND_NEWLINE) for e in events)
        os.write(request.app.state.fd, lines)
        return Response(_ACCEPTED, status_code=202, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return app
