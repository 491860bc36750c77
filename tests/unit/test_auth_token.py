"""The read token (SPEC §9): never empty, and the refusals say where the token is."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import orjson

from collector.auth import check_read, ensure_read_token, token_source
from collector.config import Config, with_overrides
from collector.http.message import Request


def cfg_in(tmp_path: Path, **auth: object) -> Config:
    return with_overrides(Config(), data_dir=str(tmp_path), auth=auth)


def get(authorization: bytes | None) -> Request:
    headers = () if authorization is None else ((b"authorization", authorization),)
    return Request("GET", "/api/events", "", headers, b"", "1.1", "test")


def test_an_empty_token_file_gets_a_token(tmp_path: Path) -> None:
    # An audit: an empty read_token file made the token "" and "Authorization: Bearer" with
    # nothing after it read every event.
    for content in ("", "  \n"):
        cfg = cfg_in(tmp_path)
        cfg.read_token_file.write_text(content)
        token, created = ensure_read_token(cfg)
        assert created and token and len(token) >= 32
        assert cfg.read_token_file.read_text().strip() == token
        assert stat.S_IMODE(os.stat(cfg.read_token_file).st_mode) == 0o600
        assert not list(tmp_path.glob("*.tmp"))
        assert ensure_read_token(cfg) == (token, False)
        cfg.read_token_file.unlink()


def test_an_empty_bearer_token_is_refused(tmp_path: Path) -> None:
    cfg = cfg_in(tmp_path)
    for header in (b"Bearer", b"Bearer ", b"Bearer    "):
        denied = check_read(get(header), "secret", token_source(cfg))
        assert denied is not None and denied.status == 401
        assert b"empty" in denied.body
    # Even a token that is somehow empty never lets anything in.
    denied = check_read(get(b"Bearer x"), "", token_source(cfg))
    assert denied is not None and denied.status == 403
    assert check_read(get(b"Bearer secret"), "secret", token_source(cfg)) is None


def test_the_refusals_say_where_the_token_is(tmp_path: Path) -> None:
    generated = token_source(cfg_in(tmp_path))
    configured = token_source(cfg_in(tmp_path, read_token="s3cret"))
    assert str(tmp_path / "read_token") in generated
    assert "auth.read_token" in configured and "read_token'" not in configured
    assert str(tmp_path) not in configured
    for header, status in ((None, 401), (b"Bearer wrong", 403)):
        denied = check_read(get(header), "s3cret", configured)
        assert denied is not None and denied.status == status
        assert "auth.read_token of the configuration" in orjson.loads(denied.body)["message"]
