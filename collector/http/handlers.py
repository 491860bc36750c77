"""Core routes: ingestion (POST /api/events, the pixel), /help, /healthz, /metrics.

Ingestion is the hot path. Per request: decode (gzip), parse, validate the whole batch (all or
nothing), mint ids, encode one bytes object and submit it to the segment writer, answering with
a Deferred; the writer appends the requests of one loop iteration together and calls back, and
only then come the 202 and the in-memory processors (Redis counters). Nothing is handed to a
processor before the segment write is acknowledged, so counts never include an event the client
was told failed.

The common bodies first try collector/rawbatch.py, which does parse, validate and encode with
msgspec without building params objects, and answers None whenever the slow path's rules must
decide (then nothing of its work is used). It is taken only when no processor needs event dicts:
the Redis counters take columns (`StatsCounters.add_columns`, or `add_one` for a single event)
with the user read by msgspec.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import parse_qs

from collector import __version__, rawbatch
from collector.auth import check_write
from collector.context import AppContext
from collector.errors import BadEvent, StorageUnavailable
from collector.http.message import Deferred, Request, Response, error_response, json_response
from collector.http.router import Route
from collector.metrics import merge_snapshots, render
from collector.metrics_files import loader_snapshot, read_peer_snapshots
from collector.schema import (
    BatchRejected,
    EventLimits,
    TooManyEvents,
    encode_batch,
    event_from_query,
    ids_json,
    parse_body,
    round_ms,
    validate_batch,
)
from collector.storage.health import storage_problem

log = logging.getLogger(__name__)

# The smallest transparent GIF (43 bytes), for the tracking pixel.
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00"
    b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)


class _Columns(NamedTuple):
    """Accepted events as the Redis counters take them (`StatsCounters.add_columns`)."""

    types: list[str]
    stamps: list[int | float]
    users: list[Any]


class _Single(NamedTuple):
    """One accepted event as the Redis counters take it (`StatsCounters.add_one`)."""

    event_type: str
    ts: int | float
    user: Any


_new_single = tuple.__new__
"""`_Single(...)` without the Python-level `__new__` a NamedTuple has (once per request with
the Redis counters on)."""

_Kept = list[dict[str, Any]] | _Columns | _Single | None
"""What a request keeps of its events for the processors until its lines are written: event
dicts (the slow path), columns or a single event for the Redis counters (the fast path), or
nothing (no processor)."""

PROCESSOR_LOG_INTERVAL = 60.0
"""Seconds between two tracebacks of one failing processor (the failures are all counted)."""

MAX_GZIP_MEMBERS = 64
"""Members one gzip body may hold. Each member's remainder is copied (zlib's unused_data), so
the work grows with members x body size: a 1 MiB body of 52,000 empty members took a second
of the event loop. Real multi-member bodies are a few files joined with `cat`."""
_GZIP_MAGIC = b"\x1f\x8b"


def gunzip(body: bytes, max_body: int) -> bytes | tuple[int, str, str]:
    """A gzip body decoded, every member of it; or (status, code, message) of what is wrong.

    RFC 1952: a gzip file is one or more members, and `gzip -c a >> f; gzip -c b >> f` makes
    such a file. Stopping after the first member would acknowledge the request and drop the
    rest without a word. After the last member, NUL padding is ignored (as gzip(1) does); any
    other bytes refuse the body. The output is bounded by `max_body` + 1 at every step, so a
    zip bomb costs at most that much memory before it is refused.
    """
    out: list[bytes] = []
    size = 0
    rest = body
    try:
        while True:
            if len(out) == MAX_GZIP_MEMBERS:
                return (400, "bad_gzip",
                        f"the gzip body has more than {MAX_GZIP_MEMBERS} members; compress the "
                        "events as one gzip stream")
            # wbits=31: the gzip container, one member per decompressor.
            d = zlib.decompressobj(wbits=31)
            piece = d.decompress(rest, max_body + 1 - size)  # (never 0, zlib's "no limit")
            size += len(piece)
            out.append(piece)
            if size > max_body or d.unconsumed_tail:
                return (413, "body_too_large",
                        f"the decoded body is over {max_body} bytes; send smaller batches")
            if not d.eof:
                return (400, "bad_gzip", "the gzip body is truncated; send the complete stream")
            rest = d.unused_data
            if not rest or (rest[0] == 0 and rest.count(0) == len(rest)):
                break  # (one scan, only when the rest starts like padding: strip() per member
                # over a MiB of NULs was a third of a second)
    except zlib.error as e:
        if not out:
            what = "the body is not valid gzip"
        elif rest.startswith(_GZIP_MAGIC):
            what = f"gzip member {len(out) + 1} is corrupt"
        else:
            what = f"bytes after gzip member {len(out)} are not a gzip member"
        return (400, "bad_gzip", f"{what} ({e}); compress it with gzip or drop the "
                "Content-Encoding header")
    return out[0] if len(out) == 1 else b"".join(out)


def _unsupported_encoding(encoding: bytes) -> tuple[int, str, str] | None:
    enc = encoding.strip().lower()
    if enc in (b"identity", b"gzip", b"x-gzip"):
        return None
    return (415, "unsupported_encoding",
            f"Content-Encoding {enc.decode('latin-1')!r} is not supported; send gzip or no "
            "Content-Encoding")


class _Reply(Deferred):
    """The Deferred of one ingestion request, which is also the segment writer's callback for
    it (`SegmentWriter.submit`'s `done`): called with the writer's verdict, it resolves itself
    with the 202 or the 503. One object and one call per request, on the hot path, where a
    partial, a method and `resolve` were three."""

    __slots__ = ("_ingest", "_kept", "_ids", "_nbytes", "_pixel")

    def __init__(self, ingest: Ingest, kept: _Kept,
                 ids: Sequence[int], nbytes: int, pixel: bool) -> None:
        self._waiter = None
        self._response = None
        self._ingest = ingest
        self._kept = kept
        self._ids = ids
        self._nbytes = nbytes
        self._pixel = pixel

    def __call__(self, error: StorageUnavailable | None) -> None:
        """The writer's verdict on the request's lines (called once, from the event loop)."""
        ingest = self._ingest
        if error is None:
            response = ingest._accepted(self._kept, self._ids, self._nbytes, self._pixel)
        else:
            response = ingest._unavailable(error)
        waiter = self._waiter  # (Deferred.resolve, inlined)
        if waiter is None:
            self._response = response
        else:
            self._waiter = None
            waiter(response)


class Ingest:
    """POST /api/events and GET /api/events/pixel.gif."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.limits = EventLimits(
            max_future_skew=cfg.server.max_future_skew,
            max_events=cfg.server.max_events_per_request,
        )
        self.max_body = cfg.server.max_body_bytes
        self.write_keys = cfg.auth.write_keys
        self.metrics = ctx.metrics
        self._accepted_cell = ctx.metrics.cell("collector_events_accepted_total")
        self._bytes_cell = ctx.metrics.cell("collector_segment_bytes_total")
        self._user_of = rawbatch.user_reader(cfg.stats.user_key)
        self._complete_events = any(p is not ctx.counters for p in ctx.processors)
        self._failures: dict[str, tuple[int, float]] = {}
        """Per processor: failures not logged yet, and when the last log line was written."""

    # -- POST /api/events ----------------------------------------------------------------------

    def post(self, request: Request) -> Response | Deferred:
        if self.write_keys:
            denied = check_write(request, self.write_keys)
            if denied is not None:
                return denied
        body = request.body
        if not body and request.header(b"content-length") is None and \
                request.header(b"transfer-encoding") is None:
            return error_response(
                411, "length_required",
                "send the events as a body with a Content-Length header (or chunked)")
        # Every Content-Encoding line: a second one ("gzip" then "br") is a list to refuse,
        # not a line to ignore (an audit got a 202 for it).
        encoding = request.header(b"content-encoding")
        if encoding is not None:
            encoding = request.header_list(b"content-encoding")  # (the common request has none)
            assert encoding is not None
            decoded = self._decode(body, encoding)
            if type(decoded) is tuple:
                return self._reject(request, body, *decoded)
            body = decoded  # type: ignore[assignment]
        received_at = self.ctx.clock.time()
        procs = self.ctx.processors
        if not procs or (len(procs) == 1 and procs[0] is self.ctx.counters):
            # The fast path, when no processor needs the events as dicts with their params
            # (the Redis counters take columns: type, ts and the user).
            user_of = self._user_of if procs else None
            if body[:1] == b"{":
                one = rawbatch.encode_one(body, received_at, self.limits, self.ctx.ids.next_id)
                if one is not None:
                    return self._submit(one.line, [one.id], None if user_of is None else
                                        _new_single(_Single, (one.event_type, one.ts,
                                                              user_of(one.params))), False)
            batch = rawbatch.decode(body, received_at, self.limits)  # (an array, or NDJSON)
            if batch is not None:
                ids = self.ctx.ids.next_ids(len(batch.types))
                return self._submit(
                    rawbatch.encode(batch, ids, received_at), ids,
                    None if user_of is None else _Columns(
                        batch.types, batch.stamps, list(map(user_of, batch.params))),
                    False)
        try:
            items, _ = parse_body(body)
            texts: list[bytes] = []
            events = validate_batch(items, received_at, self.limits, body=body, texts=texts)
        except TooManyEvents as e:
            return self._reject(request, body, 413, "too_many_events", e.message,
                                events=e.count)
        except BatchRejected as e:
            # All or nothing: every event of the batch is refused, the valid ones too.
            return self._reject(request, body, 400, "invalid_events", e.message, e.errors,
                                events=e.total)
        except BadEvent as e:
            return self._reject(request, body, 400, "invalid_event", e.message)
        return self._store(events, received_at, False, texts)

    def _decode(self, body: bytes, encoding: bytes) -> bytes | tuple[int, str, str]:
        """The decoded body, or (status, code, message) of why it cannot be decoded."""
        refused = _unsupported_encoding(encoding)
        if refused is not None:
            return refused
        if encoding.strip().lower() == b"identity":
            return body
        return gunzip(body, self.max_body)

    def precheck(self, request: Request) -> Response | None:
        """What POST /api/events refuses from the head alone (Route.precheck): a missing or
        wrong write key, an unsupported Content-Encoding."""
        if self.write_keys:
            denied = check_write(request, self.write_keys)
            if denied is not None:
                return denied
        encoding = request.header_list(b"content-encoding")
        refused = None if encoding is None else _unsupported_encoding(encoding)
        if refused is not None:
            self.metrics.inc("collector_requests_rejected_total", reason=refused[1])
            return error_response(*refused)
        return None

    def _reject(self, request: Request, body: bytes, status: int, code: str, message: str,
                errors: list[dict[str, Any]] | None = None, *, events: int = 1) -> Response:
        """`events`: how many events the request held, when that is known (1 otherwise: a
        body that is not JSON, a bad encoding, ...)."""
        self.metrics.inc("collector_events_rejected_total", events, reason=code)
        self.metrics.inc("collector_requests_rejected_total", reason=code)
        rejected = self.ctx.rejected
        if rejected is not None:
            rejected.record(f"{code}: {message}", body, errors=errors, remote=request.client,
                            path=request.path)
        payload: dict[str, Any] = {"error": code, "message": message}
        if errors:
            payload["errors"] = errors
        return json_response(status, payload)

    def _store(self, events: list[dict[str, Any]], received_at: float, pixel: bool,
               texts: list[bytes] | None = None) -> Response | Deferred:
        ctx = self.ctx
        ids = ctx.ids.next_ids(len(events)) if len(events) > 1 else [ctx.ids.next_id()]
        data = encode_batch(events, ids, received_at, texts)
        # The events are only needed again by the processors. Without any, drop them now:
        # holding every request's parsed objects until the end of the loop iteration frees
        # them all at once, and pymalloc then returns its arenas to the kernel and faults them
        # back in on the next iteration (measured: a third of the batch throughput).
        if not ctx.processors:
            return self._submit(data, ids, None, pixel)
        if self._complete_events:
            # Processors of one's own get each event as its segment line holds it.
            ra = round_ms(received_at)
            events = [{**e, "id": str(i), "received_at": ra} for e, i in zip(events, ids,
                                                                           strict=True)]
        return self._submit(data, ids, events, pixel)

    def _submit(self, data: bytes, ids: Sequence[int],
                kept: _Kept,
                pixel: bool) -> Response | Deferred:
        """Hand the lines to the segment writer; the reply resolves once they are written."""
        reply = _Reply(self, kept, ids, len(data), pixel)
        try:
            self.ctx.writer.submit(data, ids[0], reply)
        except StorageUnavailable as e:
            return self._unavailable(e)
        return reply

    def _accepted(self, events: _Kept, ids: Sequence[int],
                  nbytes: int, pixel: bool) -> Response:
        for proc in self.ctx.processors if events is not None else ():
            try:
                if type(events) is _Single:
                    proc.add_one(*events)
                elif type(events) is _Columns:
                    proc.add_columns(*events)
                else:
                    proc.add(events)
            except Exception:
                # A processor never takes ingestion down with it (SPEC §10).
                self._processor_failed(type(proc).__name__)
        self._accepted_cell[0] += len(ids)
        self._bytes_cell[0] += nbytes
        if pixel:
            return Response(200, PIXEL_GIF, "image/gif",
                            [("cache-control", "no-store, max-age=0")])
        if len(ids) == 1:  # the common single-event request: no list to build
            return Response(202, b'{"status":"accepted","accepted":1,"ids":["%d"]}' % ids[0])
        return Response(202, b'{"status":"accepted","accepted":%d,"ids":%b}' % (
            len(ids), ids_json(ids)))

    def _processor_failed(self, name: str) -> None:
        """Count a processor's failure; log its traceback at most once a minute (with how many
        failed since), so a processor that fails on every request cannot flood the log."""
        self.metrics.inc("collector_processor_errors_total", processor=name)
        unlogged, last = self._failures.get(name, (0, -PROCESSOR_LOG_INTERVAL))
        now = self.ctx.clock.monotonic()
        if now - last < PROCESSOR_LOG_INTERVAL:
            self._failures[name] = (unlogged + 1, last)
            return
        self._failures[name] = (0, now)
        since = f" ({unlogged} more failures since the last report)" if unlogged else ""
        log.exception("processor %s failed%s; the events are stored in the segments all the "
                      "same", name, since)

    def _unavailable(self, e: StorageUnavailable) -> Response:
        self.metrics.inc("collector_storage_unavailable_total")
        return error_response(
            503, "storage_unavailable",
            f"events cannot be stored right now ({e}); no event is left half-written: retry "
            "later (events that carry an event_id are never stored twice)",
            headers=[("retry-after", "1")])

    # -- GET /api/events/pixel.gif ---------------------------------------------------------------

    def pixel(self, request: Request) -> Response | Deferred:
        if self.write_keys:
            denied = check_write(request, self.write_keys)
            if denied is not None:
                return denied
        received_at = self.ctx.clock.time()
        try:
            # Strict: Request.query decodes percent-escapes with errors="replace", which would
            # store U+FFFD where a POST body with the same bytes is refused.
            query = parse_qs(request.query_string, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError as bad:
            body = request.query_string.encode("latin-1", "replace")
            return self._reject(request, body, 400, "invalid_event",
                                f"the query string is not UTF-8 once percent-decoded "
                                f"({bad.reason}); encode values with encodeURIComponent")
        args = {k: v[-1] for k, v in query.items()}
        args.pop("key", None)
        try:
            raw = event_from_query(args)
            events = validate_batch([raw], received_at, self.limits)
        except BadEvent as e:
            if request.method == "HEAD":  # (nothing was sent to be stored: nothing to keep)
                return error_response(400, "invalid_event", e.message)
            body = request.query_string.encode("latin-1", "replace")
            return self._reject(request, body, 400, "invalid_event", e.message)
        if request.method == "HEAD":
            # A safe method (RFC 9110 §9.2.1): link checkers and prefetchers send it; the
            # answer is the GET's, nothing is recorded.
            return Response(200, PIXEL_GIF, "image/gif", [("cache-control", "no-store, max-age=0")])
        return self._store(events, received_at, True)


def help_document(routes: list[Route]) -> dict[str, Any]:
    """The seed's /help document, extended with every route registered since."""
    doc: dict[str, Any] = {
        "message": "Move along nothing to see here.",
        "routes": {"/help": "this document", "/api": {"/events": "events", "/stats": "stats"}},
    }
    more: dict[str, str] = {}
    for r in routes:
        key = f"{r.method} {r.path}"
        more[key] = r.summary or ""
    doc["endpoints"] = more
    doc["version"] = __version__
    return doc


def routes(ctx: AppContext, all_routes: list[Route]) -> list[Route]:
    """Core routes; `all_routes` is the router's list, read lazily by /help."""
    ingest = Ingest(ctx)

    def get_help(request: Request) -> Response:
        return json_response(200, help_document(all_routes))

    def healthz(request: Request) -> Response:
        writer = ctx.writer
        if not writer.available:
            writer.tick()
        reason = writer.last_error if not writer.available else storage_problem(
            ctx.config.segments_path)
        if reason is not None:
            # The error shape of SPEC §3 ("error", "message"), with the fields of the 200.
            return json_response(503, {
                "error": "storage_unavailable",
                "message": f"events cannot be stored: {reason}; fix the segment directory "
                           "(space, permissions) and the collector recovers by itself",
                "status": "unavailable", "reason": reason,
                "segments": str(ctx.config.segments_path)}, headers=[("retry-after", "1")])
        return json_response(200, {"status": "ok", "worker": ctx.worker_index,
                                   "segments": str(ctx.config.segments_path)})

    def metrics(request: Request) -> Response:
        return Response(200, render_all_metrics(ctx).encode(),
                        "text/plain; version=0.0.4; charset=utf-8")

    return [
        Route("POST", "/api/events", ingest.post, "register events (one, an array, or NDJSON)",
              precheck=ingest.precheck),
        Route("GET", "/api/events/pixel.gif", ingest.pixel,
              "record one event from the query string; answers a 1x1 GIF"),
        Route("GET", "/help", get_help, "this document"),
        Route("GET", "/healthz", healthz, "200 when events can be accepted, 503 and why"),
        Route("GET", "/metrics", metrics, "Prometheus metrics"),
    ]


def render_all_metrics(ctx: AppContext) -> str:
    """This worker's live metrics plus the latest snapshots of the other workers and loader."""
    snaps = [ctx.metrics.snapshot(),
             *read_peer_snapshots(ctx.config.run_path, ctx.worker_index),
             loader_snapshot(ctx.config)]
    return render(merge_snapshots(snaps))
