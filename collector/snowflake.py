"""Snowflake IDs (SPEC §4): 64-bit, time-ordered, unique per (datacenter, worker).

Layout, most significant bit first::

    0 | 41 bits: ms since EPOCH_MS | 5 bits: datacenter | 5 bits: worker | 12 bits: sequence

The top bit is always 0, so every id fits a signed 64-bit column (SQLite INTEGER, BSON Int64)
and its decimal form is at most 19 digits (segment names pad to 20).

Invariants of one `SnowflakeGenerator`:

* Ids are strictly increasing, whatever the wall clock does. The generator keeps a *logical*
  millisecond that never goes backwards: it follows the wall clock when the wall clock is ahead
  and ignores it otherwise.
* When the wall clock steps back (an NTP correction, a VM resumed from a snapshot) the generator
  keeps minting from the last logical millisecond instead of sleeping until the clock catches
  up: sleeping would block the event loop of the whole worker. A rate-limited warning is
  logged, because ids then carry a time slightly ahead of the wall clock.
* When the 4096 sequence numbers of one millisecond are used up, the logical millisecond moves
  one ahead ("borrows from the future") instead of spinning on the clock. At 4,096,000 ids/s
  per worker this only happens in bursts; the borrowed time is paid back as soon as the wall
  clock passes it.

Two generators with distinct (datacenter, worker) pairs never mint the same id: those bits
differ. Uniqueness across restarts of the *same* pair relies on the restart taking longer
than the logical clock ran ahead of the wall clock (milliseconds in practice).

Known limit: 41 bits of milliseconds run out in 2085 (EPOCH_MS + 2**41 ms); `next_id` then
raises instead of wrapping around.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from collector.clock import Clock

EPOCH_MS = 1451606400000
"""2016-01-01T00:00:00Z in UNIX milliseconds: the zero of the 41-bit time field."""

SEQUENCE_BITS = 12
WORKER_BITS = 5
DATACENTER_BITS = 5
MAX_SEQUENCE = (1 << SEQUENCE_BITS) - 1
MAX_WORKER_ID = (1 << WORKER_BITS) - 1
MAX_DATACENTER_ID = (1 << DATACENTER_BITS) - 1
WORKER_SHIFT = SEQUENCE_BITS
DATACENTER_SHIFT = SEQUENCE_BITS + WORKER_BITS
TIME_SHIFT = SEQUENCE_BITS + WORKER_BITS + DATACENTER_BITS
MAX_TIME = (1 << 41) - 1
"""Largest representable millisecond offset from EPOCH_MS."""
MAX_ID = (1 << 63) - 1

_EXHAUSTED = "cannot mint id: the 41-bit Snowflake time field is exhausted"

REGRESS_WARNING_INTERVAL = 60.0
"""Seconds (monotonic) between two clock-regression warnings of one generator."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SnowflakeParts:
    """The fields of one id; `ms` is UNIX milliseconds (the epoch offset already added)."""

    ms: int
    datacenter_id: int
    worker_id: int
    sequence: int


class SnowflakeGenerator:
    """Mints strictly increasing ids for one (datacenter, worker) pair.

    Not thread-safe: each worker process owns one generator and uses it from its event loop.
    """

    __slots__ = ("_clock", "_node", "_ms", "_seq", "_wall", "_next_warning", "_suppressed",
                 "datacenter_id", "worker_id")

    def __init__(self, datacenter_id: int, worker_id: int, clock: Clock) -> None:
        """A generator for one node.

        Args:
            datacenter_id: 0..31, from configuration.
            worker_id: 0..31, distinct for every process sharing the datacenter id.
            clock: source of wall-clock milliseconds (and monotonic time for log throttling).

        Raises:
            ValueError: an id is not an int in 0..31.
        """
        for name, value, top in (("datacenter_id", datacenter_id, MAX_DATACENTER_ID),
                                 ("worker_id", worker_id, MAX_WORKER_ID)):
            if type(value) is not int or not 0 <= value <= top:
                raise ValueError(
                    f"cannot create generator: {name} must be an integer from 0 to {top}, "
                    f"got {value!r}"
                )
        self.datacenter_id = datacenter_id
        self.worker_id = worker_id
        self._clock = clock
        self._node = (datacenter_id << DATACENTER_SHIFT) | (worker_id << WORKER_SHIFT)
        # Logical ms (offset from EPOCH_MS) and the last sequence number used in it. Starting at
        # (0, -1) means the first id is minted without a special case, even if the clock reads
        # before the epoch (then it is treated like a clock that went backwards).
        self._ms = 0
        self._seq = -1
        # Last wall-clock offset read: a regression is a read below it, not a read below the
        # logical ms (which may legitimately be ahead after borrowing).
        self._wall = 0
        self._next_warning = float("-inf")
        self._suppressed = 0

    def next_id(self) -> int:
        """One new id, greater than every id this generator returned before."""
        now = self._clock.wall_ms() - EPOCH_MS
        if now > self._ms:
            if now > MAX_TIME:
                raise OverflowError(_EXHAUSTED)
            self._ms = now
            self._seq = 0
        else:
            if now < self._wall:
                self._regressed(now)
            seq = self._seq + 1
            if seq > MAX_SEQUENCE:
                if self._ms >= MAX_TIME:
                    raise OverflowError(_EXHAUSTED)
                self._ms += 1
                seq = 0
            self._seq = seq
        self._wall = now
        return (self._ms << TIME_SHIFT) | self._node | self._seq

    def next_ids(self, n: int) -> range | list[int]:
        """`n` new strictly increasing ids, the same ones `n` calls of `next_id` would give
        under a clock that does not move meanwhile.

        The clock is read once for the whole batch, and each millisecond's run of sequence
        numbers is one `range`: the cost per id is a list slot, not a Python-level loop turn.
        A batch within one millisecond (the common case) is that range itself, which tells
        its readers (`schema.ids_json`, `schema._id_pieces`) that its ids are consecutive
        without a look at each.

        Raises:
            ValueError: n is negative.
        """
        if n <= 0:
            if n == 0:
                return []
            raise ValueError(f"cannot mint ids: n must be >= 0, got {n}")
        now = self._clock.wall_ms() - EPOCH_MS
        ms = self._ms
        if now > ms:
            if now > MAX_TIME:
                raise OverflowError(_EXHAUSTED)
            ms = now
            seq = 0
        else:
            if now < self._wall:
                self._regressed(now)
            seq = self._seq + 1
        self._wall = now
        node = self._node
        last = seq + n - 1
        if last <= MAX_SEQUENCE:
            # Within one ms the three fields do not overlap, so | equals + and ids are a range.
            base = (ms << TIME_SHIFT) | node
            self._ms = ms
            self._seq = last
            return range(base + seq, base + last + 1)
        ids: list[int] = []
        while n:
            if seq > MAX_SEQUENCE:
                if ms >= MAX_TIME:
                    raise OverflowError(_EXHAUSTED)
                ms += 1
                seq = 0
            take = min(n, MAX_SEQUENCE + 1 - seq)
            base = (ms << TIME_SHIFT) | node
            ids.extend(range(base + seq, base + seq + take))
            seq += take
            n -= take
        self._ms = ms
        self._seq = seq - 1
        return ids

    def _regressed(self, now: int) -> None:
        """Log that the wall clock went back, at most once per REGRESS_WARNING_INTERVAL."""
        t = self._clock.monotonic()
        if t < self._next_warning:
            self._suppressed += 1
            return
        self._next_warning = t + REGRESS_WARNING_INTERVAL
        suppressed, self._suppressed = self._suppressed, 0
        logger.warning(
            "wall clock went backwards by %d ms (datacenter %d, worker %d); ids keep counting "
            "from the last millisecond until the clock catches up (%d similar warnings "
            "suppressed)",
            self._wall - now, self.datacenter_id, self.worker_id, suppressed,
        )


def parse_id(snowflake: int) -> SnowflakeParts:
    """Split an id into its fields.

    Raises:
        ValueError: not an int in 0..2**63-1.
    """
    if type(snowflake) is not int or not 0 <= snowflake <= MAX_ID:
        raise ValueError(f"cannot parse id: expected an integer from 0 to 2**63-1, got "
                         f"{snowflake!r}")
    return SnowflakeParts(
        ms=(snowflake >> TIME_SHIFT) + EPOCH_MS,
        datacenter_id=(snowflake >> DATACENTER_SHIFT) & MAX_DATACENTER_ID,
        worker_id=(snowflake >> WORKER_SHIFT) & MAX_WORKER_ID,
        sequence=snowflake & MAX_SEQUENCE,
    )


def min_id_for_ms(unix_ms: int) -> int:
    """The smallest id any generator can mint at UNIX millisecond `unix_ms`.

    For range scans by time: ids minted at or after `unix_ms` are `>= min_id_for_ms(unix_ms)`,
    ids minted before it are smaller. The input is clamped to the representable range (0 before
    the epoch, the last millisecond of 2085 after it), so bounds taken from a user's query never
    overflow a signed 64-bit column.
    """
    offset = min(max(int(unix_ms) - EPOCH_MS, 0), MAX_TIME)
    return offset << TIME_SHIFT


def max_id_for_ms(unix_ms: int) -> int:
    """The largest id any generator can mint at UNIX millisecond `unix_ms` (clamped as in
    `min_id_for_ms`): an inclusive upper bound for range scans."""
    offset = min(max(int(unix_ms) - EPOCH_MS, 0), MAX_TIME)
    return (offset << TIME_SHIFT) | ((1 << TIME_SHIFT) - 1)
