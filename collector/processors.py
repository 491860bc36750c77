"""Request-path processors of one's own (SPEC §10): `processors.request` in the configuration.

What happens to an accepted event is a list: the segment writer first (it is the log, and the
acknowledgement waits for it), then each processor named in `processors.request`, in order.
"redis_stats" is the built-in real-time counters; "package.module:Class" names a class of
one's own, so a new engine (S3, Kafka, a webhook) is one new class and one line of
configuration:

    class Webhook:
        def __init__(self, ctx: AppContext) -> None:   # once per worker
            ...
        async def start(self) -> None:                 # optional, before the first request
            ...
        def add(self, events: list[dict[str, Any]]) -> None:
            ...                                        # each accepted request's events
        async def close(self) -> None:                 # optional, at a graceful stop
            ...

`add` gets the events as their segment lines hold them (id as a decimal string, event_type,
ts, params, received_at, and event_id and sent_at when sent), only once they are in the
segment: a processor never sees an event the client was told failed. It runs on the event
loop, so it must not block: keep the events and do the I/O in a task of its own. An exception
from it is counted (`collector_processor_errors_total{processor=...}`) and logged at most once
a minute, and reaches neither the client nor the other processors. The loader's processors
(the event store and the daily aggregation) are not configurable: they commit together, in
one transaction per batch, which is what keeps daily_stats exact.
"""

from __future__ import annotations

import importlib
from typing import Any

from collector.config import Config
from collector.errors import ConfigError

BUILT_IN = ("redis_stats",)


def load(name: str) -> Any:
    """The class a `package.module:Class` name points to.

    Raises:
        ConfigError: the module cannot be imported or has no such class.
    """
    module_name, _, class_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # (an ImportError, or whatever the module raised while importing)
        raise ConfigError(f"processors.request: cannot import {module_name!r} for {name!r}: "
                          f"{type(e).__name__}: {e}") from None
    cls = getattr(module, class_name, None)
    if cls is None or not callable(cls):
        raise ConfigError(f"processors.request: {module_name!r} has no class {class_name!r}")
    if not callable(getattr(cls, "add", None)):
        raise ConfigError(f"processors.request: {name} has no add(events) method")
    return cls


def check(cfg: Config) -> None:
    """Import every processor of one's own: `serve` says what is wrong before any worker
    starts (a worker would only exit during startup)."""
    for name in cfg.processors.request:
        if name not in BUILT_IN:
            load(name)
