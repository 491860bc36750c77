"""The application context: every long-lived object of a worker, built once in `app.py`.

Feature modules receive it in `routes(ctx)` and keep what they need; nothing is global, so a
test can build a context with a fake clock and a temporary data directory.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from collector.clock import Clock
from collector.config import Config
from collector.metrics import Metrics


@dataclass(slots=True)
class AppContext:
    config: Config
    clock: Clock
    loop: asyncio.AbstractEventLoop
    metrics: Metrics
    worker_index: int = 0
    ids: Any = None
    """SnowflakeGenerator of this worker."""
    writer: Any = None
    """storage.writer.SegmentWriter: the segment log of this worker."""
    rejected: Any = None
    """storage.rejected.RejectedLog."""
    counters: Any = None
    """Real-time Redis counters (StatsCounters) or None when stats are off."""
    redis: Any = None
    """redis.asyncio client for the stats readers, or None."""
    store: Any = None
    """The event store opened for reading (query and analytics endpoints), or None."""
    read_token: str | None = None
    """None when reads are open (auth.open_reads)."""
    processors: list[Any] = field(default_factory=list)
    """Request-path processors after the segment writer: each has add(events) -> None."""
