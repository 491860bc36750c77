"""Micro benchmark of the per-event hot path: validate_batch + next_ids + encode_batch.

Budget (SPEC target 400,000 events/s on one core including HTTP and the file write): about
1.5 µs per event for these three steps, i.e. at least ~670,000 events/s here for 100-event
bodies. The "with parse" column adds `parse_body` (orjson.loads of the raw body), which the
handler also pays.

Method: each case is timed over `--repeat` runs of enough iterations to last ~0.2 s; the median
run is reported, so one noisy run (another process, a GC pass) does not skew the figure. With
`--cpu` the runs are timed in process CPU time, which ignores time spent descheduled on a busy
machine. "simple" is the SPEC §2 example event; "rich" has 7 params (two nested) plus event_id
and sent_at, so it takes every slow path of the validator and encoder.

    .venv/bin/python bench/micro_schema.py [--repeat 7] [--cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.clock import SystemClock  # noqa: E402
from collector.schema import EventLimits, encode_batch, parse_body, validate_batch  # noqa: E402
from collector.snowflake import SnowflakeGenerator  # noqa: E402

SIMPLE = {"event_type": "signup", "ts": 1456606932, "params": {"user_id": 42, "plan": "pro"}}
RICH = {
    "event_type": "page_view",
    "ts": 1456606932.125,
    "params": {
        "user_id": 123456, "url": "https://example.com/pricing?ref=ad", "title": "Pricing",
        "referrer": "https://www.google.com/", "screen": [1920, 1080], "lang": "en-US",
        "utm": {"source": "google", "medium": "cpc"},
    },
    "event_id": "2b7f0c1e-9a44-4c3e-8f57-5d3f0a6b2c11",
    "sent_at": 1456606933.5,
}


def measure(
    fn: Callable[[], object], events_per_call: int, repeat: int, timer: Callable[[], float]
) -> float:
    """Median events/s of `fn` over `repeat` timed runs."""
    calls = 1
    while True:  # calibrate: enough calls for ~0.2 s
        t0 = timer()
        for _ in range(calls):
            fn()
        if timer() - t0 > 0.2:
            break
        calls *= 2
    rates = []
    for _ in range(repeat):
        t0 = timer()
        for _ in range(calls):
            fn()
        rates.append(calls * events_per_call / (timer() - t0))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument(
        "--cpu", action="store_true",
        help="time with process CPU time instead of wall time (steadier on a shared machine)",
    )
    args = ap.parse_args()
    timer = time.process_time if args.cpu else time.perf_counter
    clock = SystemClock()
    ids = SnowflakeGenerator(0, 0, clock)
    limits = EventLimits()

    print(f"{'case':<22}{'events/s':>12}{'µs/event':>10}{'with parse':>12}{'µs/event':>10}")
    for name, template in (("simple", SIMPLE), ("rich", RICH)):
        for n in (1, 100):
            body = orjson.dumps(template if n == 1 else [template] * n)
            items, _ = parse_body(body)

            # validate_batch returns new dicts and encode_batch only mutates those, so the
            # parsed items can be reused across calls.
            def core(items: list[object] = items, body: bytes = body) -> None:
                received_at = clock.time()
                events = validate_batch(items, received_at, limits, body=body)
                encode_batch(events, ids.next_ids(len(events)), received_at)

            def full(body: bytes = body) -> None:
                received_at = clock.time()
                events = validate_batch(parse_body(body)[0], received_at, limits, body=body)
                encode_batch(events, ids.next_ids(len(events)), received_at)

            core_rate = measure(core, n, args.repeat, timer)
            full_rate = measure(full, n, args.repeat, timer)
            print(f"{f'{name} x{n}':<22}{core_rate:>12,.0f}{1e6 / core_rate:>10.2f}"
                  f"{full_rate:>12,.0f}{1e6 / full_rate:>10.2f}")


if __name__ == "__main__":
    main()
