"""(method, path) to handler, with `:name` path parameters, 404 and 405 with Allow.

Exact paths are a dict lookup (the hot path is `POST /api/events`); patterns with parameters
are tried in registration order only when no exact path matches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from collector.http.message import Handler, Request, Response

Precheck = Callable[[Request], "Response | None"]
"""What a route can refuse from the head alone (auth, encoding): the refusal, or None."""


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str = ""
    precheck: Precheck | None = None
    """Run before a body the client holds back for `Expect: 100-continue` is asked for: a
    refusal is sent instead of "100 Continue" (RFC 9110 §10.1.1), so the client does not
    upload a body only to learn that its key or encoding is refused."""


class Router:
    def __init__(self) -> None:
        self.exact: dict[str, dict[str, Handler]] = {}
        """Path -> method -> handler of the routes without parameters: the protocol looks a
        request up here first (two dict hits, no call), and asks `resolve` only when that
        finds nothing (HEAD, patterns, 404, 405)."""
        self._patterns: list[tuple[list[str], dict[str, Handler]]] = []
        self.routes: list[Route] = []
        self._prechecks: dict[Handler, Precheck] = {}

    def precheck(self, handler: Handler) -> Precheck | None:
        """The precheck of the route `handler` serves, if it has one."""
        return self._prechecks.get(handler)

    def add(self, route: Route) -> None:
        if route.precheck is not None:
            self._prechecks[route.handler] = route.precheck
        if ":" in route.path:
            parts = route.path.strip("/").split("/")
            for pat, methods in self._patterns:
                if pat == parts:
                    methods[route.method] = route.handler
                    break
            else:
                self._patterns.append((parts, {route.method: route.handler}))
        else:
            self.exact.setdefault(route.path, {})[route.method] = route.handler
        self.routes.append(route)

    def add_all(self, routes: list[Route]) -> None:
        for r in routes:
            self.add(r)

    def resolve(self, request: Request) -> tuple[Handler | None, list[str]]:
        """The handler for the request, or None and the methods the path allows ([] for 404).

        HEAD is served by the GET handler (the protocol drops the body).
        """
        method = "GET" if request.method == "HEAD" else request.method
        methods = self.exact.get(request.path)
        if methods is None:
            parts = request.path.strip("/").split("/")
            for pat, pmethods in self._patterns:
                params = _match(pat, parts)
                if params is not None:
                    methods = pmethods
                    request.path_params = params
                    break
        if methods is None:
            return None, []
        handler = methods.get(method)
        if handler is None:
            allowed = sorted(set(methods) | ({"HEAD"} if "GET" in methods else set()))
            return None, [*allowed, "OPTIONS"]
        return handler, []


def _match(pattern: list[str], parts: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(parts):
        return None
    params: dict[str, str] = {}
    for p, s in zip(pattern, parts, strict=True):
        if p.startswith(":"):
            if not s:
                return None
            params[p[1:]] = s
        elif p != s:
            return None
    return params
