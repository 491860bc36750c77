"""Request and Response as handlers see them.

Handlers are plain callables `handler(request) -> Response | Awaitable[Response]`. Returning a
Response directly (no coroutine) is the fast path: the protocol writes it without scheduling a
task. Handlers that must wait (group-committed fsync, a store query in a thread) return an
awaitable and the protocol keeps pipelined responses in order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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
    path_params: dict[str, str] = field(default_factory=dict)
    _query: dict[str, list[str]] | None = None

    def header(self, name: bytes, default: bytes | None = None) -> bytes | None:
        """First value of header `name` (give it lowercase)."""
        for k, v in self.headers:
            if k == name:
                return v
        return default

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
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False
    """Close the connection after this response (used after protocol errors)."""


Handler = Callable[[Request], "Response | Awaitable[Response]"]


def json_response(status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, orjson.dumps(obj), "application/json", headers or [])


def error_response(
    status: int,
    code: str,
    message: str,
    headers: list[tuple[str, str]] | None = None,
    close: bool = False,
) -> Response:
    """The error shape of SPEC §3: {"error": code, "message": how to fix it}."""
    body = orjson.dumps({"error": code, "message": message})
    return Response(status, body, "application/json", headers or [], close)
