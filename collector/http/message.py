"""Request and Response as handlers see them.

Handlers are plain callables `handler(request) -> Response | Deferred | Awaitable[Response]`.
Returning a Response directly (no coroutine) is the fast path: the protocol writes it without
scheduling a task. Ingestion returns a `Deferred` (answered by a callback once the segment
writer has the bytes, still without a task). Handlers that must wait on something else (a store
query in a thread) return an awaitable. Either way the protocol keeps pipelined responses in
order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query_string: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes = b""
    version: str = "1.1"
    client: str = ""
    fields: Mapping[bytes, bytes] | None = None
    """Each header name with its first value (`RequestHead.fields`), when the parser gave
    them: `header` is then one dict hit. None: `header` scans `headers`."""
    path_params: Mapping[str, str] | None = None
    """Set by the router for a pattern route (`/api/stats/:type`); None for an exact path."""
    _query: dict[str, list[str]] | None = None

    def header(self, name: bytes, default: bytes | None = None) -> bytes | None:
        """First value of header `name` (give it lowercase)."""
        fields = self.fields
        if fields is not None:
            return fields.get(name, default)
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def header_list(self, name: bytes) -> bytes | None:
        """Every value of header `name` (lowercase) joined by ", ", as RFC 9110 §5.3 reads
        repeated field lines of a list header; None when absent."""
        values = [v for k, v in self.headers if k == name]
        if not values:
            return None
        return values[0] if len(values) == 1 else b", ".join(values)

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            self._query = parse_qs(self.query_string, keep_blank_values=True)
        return self._query

    def arg(self, name: str, default: str | None = None) -> str | None:
        """Last value of query parameter `name`."""
        values = self.query.get(name)
        return values[-1] if values else default


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: Sequence[tuple[str, str]] = ()
    close: bool = False
    """Close the connection after this response (used after protocol errors)."""


class Deferred:
    """A response that a callback will supply later: the cheap alternative to a coroutine.

    Ingestion answers only once the segment writer has the bytes, which happens at the end of
    the event-loop iteration (all requests of an iteration share one write). Wrapping every
    request in a task to wait for that would cost more than the rest of the request; instead
    the handler returns a Deferred, the protocol registers itself with `on_response` and the
    writer's completion callback calls `resolve`. Either may come first.
    """

    __slots__ = ("_waiter", "_response")

    def __init__(self) -> None:
        self._waiter: Callable[[Response], None] | None = None
        self._response: Response | None = None

    def on_response(self, waiter: Callable[[Response], None]) -> None:
        """Call `waiter(response)` once the response is known (now, if it already is)."""
        response = self._response
        if response is not None:
            self._response = None
            waiter(response)
        else:
            self._waiter = waiter

    def resolve(self, response: Response) -> None:
        waiter = self._waiter
        if waiter is None:
            self._response = response
        else:
            self._waiter = None
            waiter(response)


Handler = Callable[[Request], "Response | Deferred | Awaitable[Response]"]


def json_response(status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, orjson.dumps(obj), "application/json", headers or ())


def error_response(
    status: int,
    code: str,
    message: str,
    headers: list[tuple[str, str]] | None = None,
    close: bool = False,
) -> Response:
    """The error shape of SPEC §3: {"error": code, "message": how to fix it}."""
    body = orjson.dumps({"error": code, "message": message})
    return Response(status, body, "application/json", headers or (), close)
