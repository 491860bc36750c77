"""gunzip: Content-Encoding gzip bodies of POST /api/events (RFC 1952 members, bounds)."""

from __future__ import annotations

import gzip
import os

import pytest

from collector.http.handlers import gunzip

MAX = 1 << 20


def test_one_member() -> None:
    assert gunzip(gzip.compress(b'{"event_type":"a"}'), MAX) == b'{"event_type":"a"}'


def test_every_member_is_decoded() -> None:
    """`gzip -c a >> f; gzip -c b >> f`: one body, two members; both are the body."""
    body = gzip.compress(b'{"event_type":"m1"}\n') + gzip.compress(b'{"event_type":"m2"}\n') \
        + gzip.compress(b"")
    assert gunzip(body, MAX) == b'{"event_type":"m1"}\n{"event_type":"m2"}\n'


@pytest.mark.parametrize("tail, words", [
    (b"garbage", "bytes after gzip member 1 are not a gzip member"),
    (b"\x1f\x8b\x08\x00", "truncated"),  # the start of a second member, cut off
    (gzip.compress(b"{}")[:10] + b"\xff" * 20, "gzip member 2 is corrupt"),  # a bad block
    (b"\0\0garbage", "bytes after gzip member 1 are not a gzip member"),
], ids=["garbage", "cut-member", "corrupt-member", "padding-then-garbage"])
def test_bytes_after_the_last_member_refuse_the_body(tail: bytes, words: str) -> None:
    status, code, message = gunzip(gzip.compress(b"{}") + tail, MAX)  # type: ignore[misc]
    assert (status, code) == (400, "bad_gzip")
    assert words in message


def test_truncated_and_invalid() -> None:
    whole = gzip.compress(b'{"event_type":"a"}' * 10)
    assert gunzip(whole[:-5], MAX)[:2] == (400, "bad_gzip")  # type: ignore[index]
    status, _, message = gunzip(b'{"event_type":"plain"}', MAX)  # type: ignore[misc]
    assert status == 400 and "not valid gzip" in message


def test_the_bound_counts_every_member() -> None:
    half = gzip.compress(os.urandom(600) * 1)
    assert len(gunzip(half + half, 1200)) == 1200  # type: ignore[arg-type]
    assert gunzip(half + half, 1199)[:2] == (413, "body_too_large")  # type: ignore[index]
    bomb = gzip.compress(b"\0" * (50 * MAX))
    assert gunzip(bomb, MAX)[:2] == (413, "body_too_large")  # type: ignore[index]


def test_nul_padding_after_the_last_member_is_ignored() -> None:
    """gzip(1) and Python's gzip module accept it (tape blocks, some writers pad)."""
    assert gunzip(gzip.compress(b'{"a":1}') + b"\0" * 10, MAX) == b'{"a":1}'


def test_many_members_are_refused_quickly() -> None:
    """Each member copies the rest of the body: 52,000 empty members in 1 MiB took a second
    of the event loop before the cap (this test asserts the answer, not the time)."""
    empty = gzip.compress(b"")
    status, code, message = gunzip(empty * 52_000, MAX)  # type: ignore[misc]
    assert (status, code) == (400, "bad_gzip") and "more than 64 members" in message
    assert gunzip(gzip.compress(b"x") * 64, MAX) == b"x" * 64


def test_padding_after_many_members_is_read_once() -> None:
    """(strip() of the rest after every member cost a third of a second for this body)"""
    body = gzip.compress(b"") * 63 + gzip.compress(b"x") + b"\0" * (1 << 20)
    assert gunzip(body, MAX) == b"x"
