"""Brute-force reference answers of SPEC §11, for tests: plain Python over a list of events.

Deliberately naive and independent of the store code paths: it converts every event with
`datetime.fromtimestamp(ts, tz)`, sorts in Python, and walks funnels by re-scanning lists, so
a bug in the offset pieces, the SQL or the aggregation pipelines cannot hide in both places.
Events are the dicts the loader inserts (segment lines): `id` (decimal string or int),
`event_type`, `ts`, `params`.
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from loader.aggregate import period_start
from loader.stores.base import user_text

Event = dict[str, Any]


def _in_range(events: list[Event], start: float, end: float,
              types: tuple[str, ...] | None = None) -> list[Event]:
    return [e for e in events if start <= e["ts"] <= end
            and (types is None or e["event_type"] in types)]


def _tie_order(user: str) -> tuple[int, Decimal | str]:
    """Integer ids by value first, then the other ids as text (Decimal: any number of
    digits)."""
    digits = user[1:] if user.startswith("-") else user
    integer = digits.isascii() and digits.isdigit() and (digits == "0" or digits[0] != "0")
    return (0, Decimal(user)) if integer and user != "-0" else (1, user)


def _user(e: Event, user_key: str) -> str | None:
    params = e.get("params")
    return user_text(params.get(user_key)) if isinstance(params, dict) else None


def _by_user(events: list[Event], user_key: str) -> dict[str, list[Event]]:
    """Each user's events in (ts, id) order."""
    out: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        u = _user(e, user_key)
        if u is not None:
            out[u].append(e)
    for evs in out.values():
        evs.sort(key=lambda e: (e["ts"], int(e["id"])))
    return out


def rollup(events: list[Event], period: str, start: float, end: float,
           types: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Totals per period of the events in the inclusive range."""
    totals: Counter[tuple[str, str]] = Counter()
    for e in _in_range(events, start, end, types):
        # (the day by floor division: fromtimestamp rounds to microseconds, which moves a
        # time a hair before midnight to the next day)
        day = _dt.date(1970, 1, 1) + _dt.timedelta(days=int(e["ts"] // 86400))
        totals[(period_start(day.isoformat(), period), e["event_type"])] += 1
    return {"period": period, "rows": [{"start": s, "event_type": t, "total": n}
                                       for (s, t), n in sorted(totals.items())]}


def peak_times(events: list[Event], start: float, end: float, tz: ZoneInfo,
               types: tuple[str, ...] | None = None) -> dict[str, Any]:
    matrix = [[0] * 24 for _ in range(7)]
    for e in _in_range(events, start, end, types):
        local = _dt.datetime.fromtimestamp(e["ts"], tz)
        matrix[local.weekday()][local.hour] += 1
    return {"by_hour": [sum(matrix[w][h] for w in range(7)) for h in range(24)],
            "by_weekday": [sum(r) for r in matrix], "matrix": matrix}


def uniques(events: list[Event], start: float, end: float, tz: ZoneInfo,
            user_key: str = "user_id") -> dict[str, Any]:
    seen: dict[_dt.date, set[str]] = defaultdict(set)
    for e in _in_range(events, start, end):
        u = _user(e, user_key)
        if u is not None:
            seen[_dt.datetime.fromtimestamp(e["ts"], tz).date()].add(u)
    day = _dt.datetime.fromtimestamp(start, tz).date()
    last = _dt.datetime.fromtimestamp(end, tz).date()
    days = []
    while day <= last:
        days.append({"date": day.isoformat(), "users": len(seen.get(day, ()))})
        day += _dt.timedelta(days=1)
    return {"days": days}


def users(events: list[Event], start: float, end: float, top: int,
          user_key: str = "user_id") -> dict[str, Any]:
    counts = Counter(u for e in _in_range(events, start, end)
                     if (u := _user(e, user_key)) is not None)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], _tie_order(kv[0])))
    dist = Counter(counts.values())
    return {"users": [{"user_id": u, "events": n} for u, n in ranked[:top]],
            "distribution": [{"events": k, "users": m} for k, m in sorted(dist.items())]}


def flows(events: list[Event], start: float, end: float, top: int,
          start_type: str | None = None, user_key: str = "user_id") -> dict[str, Any]:
    pairs: Counter[tuple[str, str]] = Counter()
    for evs in _by_user(_in_range(events, start, end), user_key).values():
        for a, b in zip(evs, evs[1:], strict=False):
            if start_type is None or a["event_type"] == start_type:
                pairs[(a["event_type"], b["event_type"])] += 1
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"flows": [{"from": a, "to": b, "count": n} for (a, b), n in ranked[:top]]}


def funnel(events: list[Event], steps: list[str] | tuple[str, ...], window: float,
           start: float, end: float, user_key: str = "user_id") -> dict[str, Any]:
    reached = [0] * len(steps)
    for evs in _by_user(_in_range(events, start, end), user_key).values():
        firsts = [i for i, e in enumerate(evs) if e["event_type"] == steps[0]]
        if not firsts:
            continue
        pos = firsts[0]
        deadline = evs[pos]["ts"] + window
        reached[0] += 1
        for k in range(1, len(steps)):
            nxt = next((i for i in range(pos + 1, len(evs))
                        if evs[i]["event_type"] == steps[k] and evs[i]["ts"] <= deadline), None)
            if nxt is None:
                break
            reached[k] += 1
            pos = nxt
    out = []
    for k, step in enumerate(steps):
        prev = reached[k - 1] if k else reached[0]
        out.append({"event_type": step, "users": reached[k],
                    "conversion": reached[k] / prev if prev else 0.0})
    return {"steps": out}
