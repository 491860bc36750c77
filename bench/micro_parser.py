"""Micro benchmark of the request parser alone: requests/s, single core, no sockets.

    .venv/bin/python bench/micro_parser.py [--seconds 1.0]

Two workloads, each fed as one `feed()` per request on one keep-alive parser, which is what
the server sees under wrk: a typical wrk POST (small JSON event) and a 100-event batch body.
Each loop iteration does feed, next_event() until PAUSED, start_next_cycle(), i.e. all the
parser work the protocol does per request.

If h11 is installed it is measured the same way as a reference. h11 will not start the next
cycle before the server side has sent a response, so its loop also sends a minimal 202; that
cost is counted against h11 and is noted in the output. Numbers depend on the machine and
Python build: compare columns within one run, not across machines. Rounds are timed in
process CPU time and the best round is reported, so other processes on a shared machine skew
the figures less (they still slow caches down; re-run on an idle machine for published numbers).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.http.events import NEED_DATA, PAUSED  # noqa: E402
from collector.http.parser import RequestParser  # noqa: E402

try:  # optional reference, not a dependency of the collector
    import h11
except ImportError:  # pragma: no cover - depends on the environment
    h11 = None  # type: ignore[assignment]


def wrk_post() -> bytes:
    body = orjson.dumps(
        {"event_type": "signup", "ts": 1456606932, "params": {"user_id": "u-1", "plan": "pro"}}
    )
    return _post(body)


def batch_post(events: int = 100) -> bytes:
    body = orjson.dumps(
        [
            {
                "event_type": "page_view",
                "ts": 1456606932 + i,
                "params": {"user_id": f"user-{i % 17}", "path": f"/docs/page/{i}", "ref": "x"},
            }
            for i in range(events)
        ]
    )
    return _post(body)


def _post(body: bytes) -> bytes:
    return (
        b"POST /api/events HTTP/1.1\r\n"
        b"Host: 127.0.0.1:8080\r\n"
        b"User-Agent: wrk/4.2.0\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"\r\n" + body
    )


def ours(request: bytes) -> Callable[[int], None]:
    parser = RequestParser()

    def run(n: int) -> None:
        feed = parser.feed
        next_event = parser.next_event
        start_next_cycle = parser.start_next_cycle
        for _ in range(n):
            feed(request)
            while True:
                event = next_event()
                if event is PAUSED:
                    break
                if event is NEED_DATA:
                    raise AssertionError("request not parsed in one feed")
            start_next_cycle()

    return run


def reference_h11(request: bytes) -> Callable[[int], None]:
    assert h11 is not None
    conn = h11.Connection(h11.SERVER)
    response = h11.Response(status_code=202, headers=[(b"content-length", b"0")])
    end = h11.EndOfMessage()

    def run(n: int) -> None:
        for _ in range(n):
            conn.receive_data(request)
            while True:
                event = conn.next_event()
                if event is h11.PAUSED or event is h11.NEED_DATA:
                    break
            conn.send(response)
            conn.send(end)
            conn.start_next_cycle()

    return run


def rate(run: Callable[[int], None], seconds: float) -> float:
    """Best requests/s over a few timed rounds (best-of filters scheduler noise)."""
    clock = time.process_time
    run(200)  # warm up
    n = 1000
    while True:  # size a round to about a tenth of the budget
        t0 = clock()
        run(n)
        took = clock() - t0
        if took > seconds / 10:
            break
        n *= 2
    best = 0.0
    deadline = clock() + seconds
    while clock() < deadline:
        t0 = clock()
        run(n)
        best = max(best, n / (clock() - t0))
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="timing budget per cell")
    args = parser.parse_args(argv)
    workloads = {"wrk POST": wrk_post(), "100-event batch": batch_post()}
    print(f"{'workload':<18}{'bytes':>8}{'ours req/s':>14}{'us/req':>8}{'h11 req/s':>14}"
          f"{'ratio':>8}")
    for name, request in workloads.items():
        mine = rate(ours(request), args.seconds)
        if h11 is None:
            ref_text, ratio_text = "skipped", "-"
        else:
            ref = rate(reference_h11(request), args.seconds)
            ref_text, ratio_text = f"{ref:,.0f}", f"{mine / ref:.1f}x"
        print(f"{name:<18}{len(request):>8}{mine:>14,.0f}{1e6 / mine:>8.1f}{ref_text:>14}"
              f"{ratio_text:>8}")
    if h11 is not None:
        print("(h11's loop also serialises a minimal 202: it cannot start a cycle without one)")


if __name__ == "__main__":
    main()
