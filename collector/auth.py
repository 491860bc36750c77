"""Read token and write keys (SPEC §9).

Reading events exposes everything collected, so it needs `Authorization: Bearer <token>` even
from loopback (behind a reverse proxy every request looks local). With no token configured, one
is generated at first start and kept with mode 0600 in the data directory.
"""

from __future__ import annotations

import hmac
import os
import secrets

from collector.config import Config
from collector.http.message import Request, Response, error_response


def ensure_read_token(cfg: Config) -> tuple[str | None, bool]:
    """The read token, and whether it was created just now (so it is printed once).

    Returns (None, False) when `auth.open_reads` is on.
    """
    if cfg.auth.open_reads:
        return None, False
    if cfg.auth.read_token:
        return cfg.auth.read_token, False
    path = cfg.read_token_file
    empty = False
    try:
        token = path.read_text().strip()
        if token:
            return token, False
        empty = True  # (an empty file must not become an empty token: see check_read)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, token.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if empty:
            os.replace(tmp, path)  # (one serve per data directory: serve.lock)
        else:
            # O_EXCL-like: another process may have won the race; keep whichever landed first.
            os.link(tmp, path)
    except FileExistsError:
        token = path.read_text().strip()
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    if not token:
        raise RuntimeError(f"{path} holds no read token; delete it and start again")
    return token, True


def token_source(cfg: Config) -> str:
    """Where an operator finds the read token, for the 401/403 messages."""
    if cfg.auth.read_token:
        return "the token is auth.read_token of the configuration (COLLECTOR_AUTH_READ_TOKEN)"
    return f"the token is in {cfg.read_token_file} (or set auth.read_token / " \
        "COLLECTOR_AUTH_READ_TOKEN)"


def check_read(request: Request, token: str | None, where: str) -> Response | None:
    """None when the request may read; otherwise the 401/403 response to send. `where` says
    where the token is (token_source)."""
    if token is None:
        return None
    auth = request.header(b"authorization")
    scheme, _, given = (auth or b"").decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer":
        # No credentials of the kind asked for (none, or Basic, ...): 401 says which kind,
        # as RFC 9110 wants; 403 is for a bearer token that is wrong.
        # Named only when it looks like a scheme followed by credentials: a bare token sent
        # without "Bearer" would otherwise be echoed back.
        sent = f" (this request sent {scheme!r} credentials)" if (
            given.strip() and scheme.isalpha() and len(scheme) <= 16) else ""
        return error_response(
            401, "unauthorized",
            f"reading events needs 'Authorization: Bearer <read token>'{sent}; {where}",
            headers=[("WWW-Authenticate", "Bearer")],
        )
    given = given.strip()
    if not given:
        return error_response(401, "unauthorized",
                              f"the bearer token is empty; send 'Authorization: Bearer <read "
                              f"token>'; {where}", headers=[("WWW-Authenticate", "Bearer")])
    # (never an empty token: ensure_read_token and the configuration refuse one)
    if not token or not hmac.compare_digest(given.encode(), token.encode()):
        return error_response(403, "forbidden", f"the bearer token is not the read token; {where}")
    return None


def check_write(request: Request, keys: tuple[str, ...]) -> Response | None:
    """None when ingestion is allowed: no keys configured, or a matching X-Write-Key / ?key=."""
    if not keys:
        return None
    given = request.header(b"x-write-key")
    value = given.decode("latin-1") if given else (request.arg("key") or "")
    if not value:
        return error_response(
            401, "unauthorized",
            "this collector needs a write key: send 'X-Write-Key: <key>' or '?key=<key>'",
        )
    if not any(hmac.compare_digest(value.encode(), k.encode()) for k in keys):
        return error_response(403, "forbidden", "the write key is not one of auth.write_keys")
    return None
