"""Parameters of the analytics endpoints (SPEC §11): parsing and validation, nothing else.

Pure functions over strings and decoded JSON: no request objects, no clock (`now` is passed
in), so every rule is unit-tested without a server. Each failure raises `BadParam` whose
message names the parameter, what was wrong and what to send instead; the HTTP layer turns it
into a 400 `{"error": "bad_param", "message": ...}`.

Decisions where SPEC §11 is silent:

* `from` and `to` are UNIX seconds (int or float, >= 0), inclusive. Missing or empty: `to` is
  now and `from` is `to` minus 7 days; `from` alone runs until now. `from` > `to` is a 400,
  not an empty answer: it is almost always swapped arguments.
* `eventType` may be repeated (`?eventType=a&eventType=b`) to select several types; commas are
  not separators because an event type may contain one.
* Unknown query parameters are a 400 naming the accepted ones: a typo such as `event_type=`
  would otherwise silently answer for all types.
* `top` is 1 to 1000. The funnel takes 1 to 20 steps and a `window` in seconds (default one
  day, at most 366 days).
* `uniques` answers one row per day, so its range is capped at 3660 days (ten years).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_RANGE_SECONDS = 7 * 86400
MAX_TOP = 1000
DEFAULT_TOP_USERS = 20
DEFAULT_TOP_FLOWS = 50
MAX_STEPS = 20
DEFAULT_WINDOW = 86400.0
MAX_WINDOW = 366 * 86400.0
MAX_UNIQUES_DAYS = 3660
MAX_EVENT_TYPES = 100
PERIODS = ("day", "week", "month", "year")
UTC = ZoneInfo("UTC")


class BadParam(ValueError):
    """A parameter the endpoint cannot use; `message` says how to fix it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Range:
    """An inclusive [start, end] range of UNIX seconds, start <= end."""

    start: float
    end: float


@dataclass(frozen=True, slots=True)
class FunnelQuery:
    steps: tuple[str, ...]
    window: float
    range: Range


Query = Mapping[str, Sequence[str]]
"""Decoded query string: name -> values in order (urllib.parse.parse_qs with blank values)."""


def check_known(query: Query, allowed: Sequence[str]) -> None:
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise BadParam(
            f"unknown parameter {', '.join(unknown)}; this endpoint takes "
            f"{', '.join(allowed)}")


def last(query: Query, name: str) -> str | None:
    """The last value of `name`, None when absent or empty."""
    values = query.get(name)
    if not values:
        return None
    value = values[-1].strip()
    return value or None


def seconds(name: str, value: Any) -> float | None:
    """UNIX seconds from a query string or a JSON number; None for absent/empty/null."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise BadParam(f"{name} must be UNIX seconds, not a boolean")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise BadParam(
                f"{name}={value!r} is not UNIX seconds; send a number such as 1700000000"
            ) from None
    else:
        raise BadParam(f"{name} must be UNIX seconds (a number)")
    if not math.isfinite(number) or number < 0:
        raise BadParam(f"{name}={value!r} must be UNIX seconds >= 0")
    if number > 1e11:
        raise BadParam(f"{name}={value!r} looks like milliseconds; send UNIX seconds")
    return number


def _plain(number: float) -> str:
    """A number as a client sent or would send it: 1795987511 or 1795987511.25, never the
    1.79599e+09 of `:g`, which makes two different times look equal in a message."""
    return str(int(number)) if number.is_integer() else repr(number)


def time_range(start: Any, end: Any, now: float) -> Range:
    """The inclusive range of `from`/`to` (strings or JSON numbers), defaults applied."""
    lo = seconds("from", start)
    hi = seconds("to", end)
    if hi is None:
        if lo is not None and lo > now:
            raise BadParam(f"from={_plain(lo)} is in the future; give `to` as well")
        hi = now
    if lo is None:
        lo = max(0.0, hi - DEFAULT_RANGE_SECONDS)
    if lo > hi:
        raise BadParam(f"from={_plain(lo)} is after to={_plain(hi)}; "
                       "`from` must not be later than `to`")
    return Range(lo, hi)


def timezone(name: str | None) -> ZoneInfo:
    """An IANA time zone (default UTC)."""
    if name is None:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadParam(
            f"tz={name!r} is not an IANA time zone; use a name such as Europe/Paris, "
            "America/New_York or UTC") from None


def top(value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise BadParam(f"top={value!r} is not a whole number") from None
    if not 1 <= n <= MAX_TOP:
        raise BadParam(f"top={n} must be between 1 and {MAX_TOP}")
    return n


def period(value: str | None) -> str:
    if value is None:
        return "day"
    if value not in PERIODS:
        raise BadParam(f"period={value!r} is not one of {', '.join(PERIODS)}")
    return value


def event_type(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadParam(f"{name} must be a non-empty event type string")
    return value.strip()


def event_types(query: Query, name: str = "eventType") -> tuple[str, ...] | None:
    """The selected types (repeated parameter), None for all types."""
    values = [v for v in query.get(name, ()) if v.strip()]
    if not values:
        return None
    if len(values) > MAX_EVENT_TYPES:
        raise BadParam(f"at most {MAX_EVENT_TYPES} {name} values")
    return tuple(dict.fromkeys(event_type(name, v) for v in values))


def uniques_range(rng: Range) -> Range:
    if (rng.end - rng.start) / 86400 > MAX_UNIQUES_DAYS:
        raise BadParam(
            f"the range covers more than {MAX_UNIQUES_DAYS} days; ask for a shorter one")
    return rng


def funnel(body: Any, now: float) -> FunnelQuery:
    """The decoded JSON body of POST /api/analytics/funnel."""
    if not isinstance(body, dict):
        raise BadParam('the body must be a JSON object: {"steps": [...], "window": seconds, '
                       '"from": ..., "to": ...}')
    unknown = sorted(set(body) - {"steps", "window", "from", "to"})
    if unknown:
        raise BadParam(f"unknown field {', '.join(unknown)}; the funnel takes steps, window, "
                       "from and to")
    steps = body.get("steps")
    if not isinstance(steps, list) or not steps:
        raise BadParam('steps must be a non-empty array of event types, e.g. '
                       '["signup", "purchase"]')
    if len(steps) > MAX_STEPS:
        raise BadParam(f"a funnel has at most {MAX_STEPS} steps, got {len(steps)}")
    names = tuple(event_type(f"steps[{i}]", s) for i, s in enumerate(steps))
    window = body.get("window")
    if window is None:
        window = DEFAULT_WINDOW
    elif isinstance(window, bool) or not isinstance(window, int | float):
        raise BadParam("window must be a number of seconds")
    window = float(window)
    if not (math.isfinite(window) and 0 < window <= MAX_WINDOW):
        raise BadParam(f"window must be more than 0 and at most {_plain(MAX_WINDOW)} seconds "
                       "(366 days)")
    return FunnelQuery(names, window, time_range(body.get("from"), body.get("to"), now))
