"""The minimal hand-written server of issue 2's yardstick: uvloop, validate, append, 202.

Issue 2 sets its targets from measurements of "a minimal hand-written uvloop server that only
validates and appends": 8.8 to 10 times the FastAPI reference with one event per request, and
about a million events/s with batches of 100, on the machine where the issue was written. Rows
m and n of bench/ingest.py run this server on the bench's machine, so the collector's figures
can be read against that yardstick in the same run: the share of the bare minimum the
collector keeps (a/m, d/n) does not depend on how fast the machine is; the absolute targets do.

What it does, per request, and no more: find the end of the head, read Content-Length, parse
the body with orjson, check that it is an event or a list of events, each an object with a
string `event_type`, append one NDJSON line per event with one `os.write` on an `O_APPEND`
descriptor (the collector's `durability = "os"`), answer a canned 202. What it leaves out is
everything the collector is for beyond that: the rest of SPEC section 2's validation, ids,
received_at, chunked bodies, limits, timeouts, pipelining order under a slow writer, metrics,
error bodies that say how to fix the request. So it is a ceiling for Python, not a rival.

    BENCH_EVENTS_FILE=/tmp/events.ndjson python bench/reference_minimal.py --port 8090
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import orjson
import uvloop

EVENTS_FILE_ENV = "BENCH_EVENTS_FILE"

_ACCEPTED = (b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n"
             b"Content-Length: 21\r\n\r\n{\"status\":\"accepted\"}")
_OK = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
       b"Content-Length: 15\r\n\r\n{\"status\":\"ok\"}")
_BAD = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
        b"Content-Length: 20\r\nConnection: close\r\n\r\n{\"error\":\"bad_json\"}")


class Minimal(asyncio.Protocol):
    """One connection: requests are answered in order as they complete in the buffer."""

    __slots__ = ("fd", "transport", "buf")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out: list[bytes] = []
        lines: list[bytes] = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end]
            start = head.lower().find(b"\r\ncontent-length:")
            length = 0
            if start >= 0:
                stop = head.find(b"\r\n", start + 2)
                length = int(head[start + 17:stop if stop >= 0 else len(head)])
            if len(buf) < end + 4 + length:
                break
            body = buf[end + 4:end + 4 + length]
            buf = buf[end + 4 + length:]
            if head.startswith(b"GET "):
                out.append(_OK)
                continue
            accepted = _accepted_lines(body)
            if accepted is None:
                out.append(_BAD)
                break
            lines += accepted
            out.append(_ACCEPTED)
        self.buf = buf
        if lines:
            os.write(self.fd, b"".join(lines))
        if out:
            assert self.transport is not None
            self.transport.write(b"".join(out))


def _accepted_lines(body: bytes) -> list[bytes] | None:
    """The NDJSON lines of a valid body (an event or a list of events), None if invalid."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    events = data if type(data) is list else [data]
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    lines = []
    for event in events:
        if type(event) is not dict or type(event.get("event_type")) is not str:
            return None
        lines.append(dumps(event, option=newline))
    return lines


async def serve(host: str, port: int, path: str) -> None:
    loop = asyncio.get_running_loop()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(lambda: Minimal(fd), host, port, backlog=4096)
    try:
        await stop.wait()
    finally:
        server.close()
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, os.environ.get(EVENTS_FILE_ENV, "events.ndjson")))


if __name__ == "__main__":
    main()
