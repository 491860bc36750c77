"""GET /: the dashboard (SPEC §3), and the two static files it loads.

The page is three files shipped with the package (collector/static/): dashboard.html, .js and
.css, read once when the routes are built. They load nothing from any other origin, and the
Content-Security-Policy below makes the browser enforce that: scripts and styles only from this
collector (no inline script), fetches only to it, images only as data: URIs. That policy
matters beyond "works offline": the page displays event types and params, which anyone who can
send events controls, and it keeps the read token in localStorage; with no inline script
allowed, an escaping mistake cannot become token theft.

URLs inside the page are relative (`static/...`, `api/...`), so it also works behind a reverse
proxy that mounts the collector under a path prefix.
"""

from __future__ import annotations

from importlib import resources

from collector.context import AppContext
from collector.http.message import Request, Response
from collector.http.router import Route

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

FILES = {
    "/": ("dashboard.html", "text/html; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


def load(name: str) -> bytes:
    return resources.files("collector").joinpath("static", name).read_bytes()


def routes(ctx: AppContext) -> list[Route]:
    out = []
    for path, (name, content_type) in FILES.items():
        response = Response(200, load(name), content_type, [
            ("Content-Security-Policy", CSP),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
        ])

        def serve(request: Request, response: Response = response) -> Response:
            # A fresh Response per request: the protocol may add headers to the one it writes.
            return Response(response.status, response.body, response.content_type,
                            list(response.headers))

        summary = "the dashboard (HTML)" if path == "/" else "a static file of the dashboard"
        out.append(Route("GET", path, serve, summary))
    return out
