"""The event (SPEC §2): request body -> validated events -> canonical NDJSON lines.

Pure functions, no I/O, no clock: the receive time comes in as an argument.

This module is on the hot path. The server's target is 400,000 events/s on one core including
HTTP parsing and the file write, which leaves about 1.5 µs per event for validation, id minting
and encoding together (bench/micro_schema.py measures it). Hence the shape of the code, which is
deliberate and measured (instruction counts under callgrind, since wall-clock timings on a
shared machine are noise):

* validation is one loop with the per-event checks inline (`_validate_all`), no function call
  per event; error messages, strings-for-numbers, event_id/sent_at and nested params live in
  helpers the common event never reaches. `validate_event` and error collection run the same
  loop over one item, so every rule is written once;
* type checks with `type(x) is T`, which is both the fastest check and the right one: a JSON
  `true` is a `bool`, and `bool` is a subclass of `int` that must not pass as a timestamp;
* per-batch constants (rounded receive time, the ts bounds) computed once per batch, and the
  params depth limit proven for a whole batch from the body's bracket count when possible;
* orjson both ways; `encode_batch` serializes each validated dict as it is and assembles the
  lines with one `join`, with the decimal ids built from shared pieces (`_id_pieces`).

Decisions where SPEC §2 is silent (tests pin each of them):

* A field whose value is JSON `null` is treated as absent (`"params": null` is `{}`).
* `event_type` is stripped; `event_id` is not (it is an opaque idempotency key, and a retry
  must match byte for byte), but it may not be empty or contain control characters.
* `ts` and `sent_at` accept an int, a float, or a string of ASCII digits with an optional
  decimal part; `bool` is not a number.
* With `sent_at`, the event keeps `sent_at` and the client's original `ts` as `client_ts`, and
  `ts` becomes `client_ts + (received_at - sent_at)` rounded to milliseconds. The raw `ts` and
  `sent_at` must be >= 0 and not look like milliseconds; the *corrected* ts must pass the range
  checks. A corrected ts below 0 is rejected, not clamped: it means the two client values are
  not from the same clock, and a clamped 1970 timestamp would poison every time-based query.
* The default `ts` (no ts sent) is `received_at` rounded to milliseconds, the same value that
  is written as `received_at`.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice, repeat
from operator import eq, itemgetter, lt
from typing import Any, NoReturn

import orjson

from collector import defaults
from collector.errors import BadEvent

MS_THRESHOLD = 1e11
"""A UNIX time in seconds above this (year 5138) is almost surely milliseconds."""
MAX_REPORTED_ERRORS = 100
"""A rejected batch names at most this many invalid events (SPEC §3)."""
MAX_EVENT_TYPE_CHARS = 256
MAX_EVENT_ID_CHARS = 64
MAX_PARAMS_DEPTH = 32
"""Default nesting limit of params (SPEC §2); params itself is depth 1."""

ALLOWED_FIELDS = frozenset(("event_type", "ts", "params", "event_id", "sent_at"))
_ALLOWED_LIST = "event_type, ts, params, event_id, sent_at"
_CONTAINERS = frozenset((dict, list))
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_NUMERIC = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_BODY_HINT = "send one event object, an array of events, or one JSON object per line"
_JSON_TYPE_NAMES = {
    dict: "an object", list: "an array", str: "a string", int: "a number",
    float: "a number", bool: "a boolean", type(None): "null",
}


@dataclass(frozen=True, slots=True)
class EventLimits:
    max_future_skew: float = defaults.MAX_FUTURE_SKEW
    """Seconds an event's (corrected) ts may be ahead of the server's receive time."""
    max_depth: int = MAX_PARAMS_DEPTH
    """Nesting depth allowed in params; params itself is depth 1."""
    max_events: int = defaults.MAX_EVENTS_PER_REQUEST
    """Events per request; above it the whole request is refused with 413."""


class TooManyEvents(BadEvent):
    """More events in one request than `EventLimits.max_events`: the handler answers 413."""

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(
            f"too many events: {count} in one request, the limit is {limit}; "
            f"split them into batches of at most {limit}"
        )
        self.count = count
        self.limit = limit


class BatchRejected(BadEvent):
    """At least one event of a batch is invalid, so none was stored (all-or-nothing).

    `errors` is `[{"index": i, "reason": "..."}]` for the first MAX_REPORTED_ERRORS invalid
    events, in index order; `invalid` counts all of them and `total` the events in the request.
    """

    def __init__(self, errors: list[dict[str, Any]], invalid: int, total: int) -> None:
        if total == 1:
            # A single event: the reason itself is the clearest message.
            message = str(errors[0]["reason"])
        else:
            message = (
                f"{invalid} of {total} events are invalid; nothing was stored. "
                "Fix them and resend the batch."
            )
        super().__init__(message)
        self.errors = errors
        self.invalid = invalid
        self.total = total


# --- parsing ----------------------------------------------------------------------------------


def parse_body(body: bytes) -> tuple[list[Any], bool]:
    """Decode a POST /api/events body into raw items (not validated yet).

    Accepts one JSON object, a JSON array (a batch) or NDJSON (one object per line, blank lines
    ignored). The Content-Type is not consulted: `navigator.sendBeacon` sends `text/plain`.
    The whole body is tried as one JSON document first (the common case, one C call); NDJSON is
    tried only when that fails and the first non-blank line is a JSON document on its own, so
    that a broken pretty-printed object is reported at orjson's line and column instead of as
    "line 1 is not valid NDJSON".

    Returns:
        (items, is_batch): is_batch is False only for a single object.

    Raises:
        BadEvent: empty body, empty array, invalid JSON (with line and column, or the NDJSON line
            number), a top-level value that is neither an object nor an array.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if not body.strip():
            raise BadEvent(f"empty body: {_BODY_HINT}") from None
        if not body.isascii():
            try:
                body.decode()
            except UnicodeDecodeError as bad:
                # orjson's words for this ("surrogates not allowed ... column 1") point
                # nowhere near the byte at fault.
                raise BadEvent(
                    f"body is not valid UTF-8: byte {bad.start} (0x{body[bad.start]:02x}) "
                    f"{bad.reason}; send JSON encoded as UTF-8") from None
        items = _parse_ndjson(body) if b"\n" in body.strip() else None
        if items is None:
            raise BadEvent(f"body is not valid JSON: {_decode_reason(exc)}; {_BODY_HINT}") from None
        check_integers(body, lines=True)
        return items, True
    check_integers(body)
    if type(doc) is dict:
        return [doc], False
    if type(doc) is list:
        if not doc:
            raise BadEvent(f"empty array: the batch has no events; {_BODY_HINT}")
        return doc, True
    raise BadEvent(f"body is {_json_type(doc)}, not an event; {_BODY_HINT}")


_NUMBER_CLASSES = bytes(48 if byte in b"0123456789" else 32 if byte in b":,[ \t\r\n-" else 120
                        for byte in range(256))
_LONG_NUMBER = b" " + b"0" * 19
"""19 digits after what may precede a number (":", ",", "[", whitespace, "-"): the shortest
integer outside [-2**63, 2**64 - 1] is -9223372036854775809. Digits right after a quote, such
as a 19-digit id sent as a string, do not count."""
_MIN_EXACT, _MAX_EXACT = -(2**63), 2**64 - 1


class _Inexact(Exception):
    pass


def _exact_int(text: str) -> int:
    # (len first: int() refuses more than 4300 digits, and such a number is out of range)
    if len(text) > 21 or not _MIN_EXACT <= int(text) <= _MAX_EXACT:
        raise _Inexact(text)
    return int(text)


def check_integers(text: bytes, *, lines: bool = False) -> None:
    """Refuse a JSON text (`lines`: NDJSON, one per line) holding an integer outside
    [-2**63, 2**64 - 1].

    orjson, and so the segment line and the store, reads such an integer as the nearest
    float: 18446744073709551617 would be kept as 1.8446744073709552e+19, a different value,
    and two users whose ids differ only past the 17th digit would become one (an audit). A 400
    that says so beats a silent change. Only a text with a run of 19 digits where a number may
    start is parsed again (the standard library's parser sees each integer literal); the scan
    costs about 2 ns per byte.

    Raises:
        BadEvent: naming the integer and the fix.
    """
    if text.translate(_NUMBER_CLASSES).find(_LONG_NUMBER) < 0:
        return
    for chunk in text.split(b"\n") if lines else (text,):
        if lines and chunk.translate(_NUMBER_CLASSES).find(_LONG_NUMBER) < 0:
            continue
        try:
            json.loads(chunk, parse_int=_exact_int)
        except _Inexact as e:
            shown = str(e.args[0])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise BadEvent(
                f"the integer {shown} is outside -2^63..2^64-1, the range kept exactly (it "
                "would be stored as the nearest float); send it as a string") from None
        except RecursionError:
            # (the standard library's parser stops near 1000 levels, orjson at 1024)
            raise BadEvent("the body nests too deeply to be read; params may nest at most "
                           f"{MAX_PARAMS_DEPTH} levels") from None
        except ValueError:
            pass  # (not one JSON text: the caller's parser already judged the syntax)


def _parse_ndjson(body: bytes) -> list[Any] | None:
    """Items of an NDJSON body, or None if the body does not look like NDJSON at all."""
    lines = body.split(b"\n")
    items: list[Any] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            if not items:
                return None
            raise BadEvent(
                f"line {number} is not valid JSON: {_decode_reason(exc)}; NDJSON needs one "
                "complete JSON object per line"
            ) from None
        if type(item) is not dict:
            if not items:
                return None
            raise BadEvent(
                f"line {number} is {_json_type(item)}; NDJSON needs one JSON object per line"
            )
        items.append(item)
    return items


def _decode_reason(exc: orjson.JSONDecodeError) -> str:
    # orjson says "unexpected character: line 3 column 5 (char 20)"; the char offset is noise
    # for a person reading the message.
    return re.sub(r" \(char \d+\)$", "", str(exc))


# --- validation -------------------------------------------------------------------------------


def validate_event(obj: Any, received_at: float, limits: EventLimits) -> dict[str, Any]:
    """Validate and normalize one raw event.

    Args:
        obj: one item from `parse_body` or `event_from_query`.
        received_at: server receive time, UNIX seconds.
        limits: the configured limits (`max_events` does not apply to one event).

    Returns:
        `{"event_type": str, "ts": int | float, "params": dict}` plus `event_id`, `sent_at`
        and `client_ts` when they apply (see the module docstring).

    Raises:
        BadEvent: naming the field and how to fix it.
    """
    ra = round_ms(received_at)
    return _validate_all([obj], ra, _upper_ts(ra, limits), limits.max_depth, None)[0]


def validate_batch(
    items: list[Any], received_at: float, limits: EventLimits, *, body: bytes | None = None,
    texts: list[bytes] | None = None,
) -> list[dict[str, Any]]:
    """Validate every item, all-or-nothing.

    Args:
        items: from `parse_body`.
        received_at: server receive time, UNIX seconds.
        limits: the configured limits.
        body: optional, the exact bytes `items` were parsed from. Only a speed hint: it lets
            the params depth check be skipped for the whole batch when the body has too few
            brackets for any params to be that deep (see `_validate_all`). Never pass bytes
            other than those `items` came from.
        texts: optional, an empty list that may be filled with each returned event's JSON
            (as `orjson.dumps` gives it), when validation had to serialize them anyway; pass
            it on to `encode_batch`. Left empty otherwise.

    Returns:
        The normalized events, in order (see `validate_event`).

    Raises:
        TooManyEvents: more than `limits.max_events` items (checked before any validation).
        BadEvent: no items at all.
        BatchRejected: any item is invalid; carries index and reason of the first 100.
    """
    count = len(items)
    if count > limits.max_events:
        raise TooManyEvents(count, limits.max_events)
    if not count:
        raise BadEvent(f"no events: {_BODY_HINT}")
    ra = round_ms(received_at)
    upper = _upper_ts(ra, limits)
    if body is None:
        openers = None
    elif len(body) < 4096:
        openers = body.count(b"{") + body.count(b"[")
    else:  # one translate keeping only the brackets: half the cost of two counts, once long
        openers = len(body.translate(None, _NOT_OPENER))
    if count >= _COLUMNS_FROM:
        fast = _validate_columns(items, ra, upper, limits.max_depth, openers, texts)
        if fast is not None:
            return fast
    try:
        return _validate_all(items, ra, upper, limits.max_depth, openers)
    except BadEvent:
        # Only a rejected batch pays for per-item error collection.
        errors, invalid = _collect_errors(items, ra, upper, limits.max_depth)
        raise BatchRejected(errors, invalid, count) from None


def _collect_errors(
    items: list[Any], ra: float, upper: float, max_depth: int
) -> tuple[list[dict[str, Any]], int]:
    """Index and reason of each invalid item (the first MAX_REPORTED_ERRORS), and their count."""
    errors: list[dict[str, Any]] = []
    invalid = 0
    for index, item in enumerate(items):
        try:
            _validate_all([item], ra, upper, max_depth, None)
        except BadEvent as exc:
            invalid += 1
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append({"index": index, "reason": exc.message})
    return errors, invalid


def _upper_ts(ra: float, limits: EventLimits) -> float:
    # One bound for both range checks of ts: the future skew and the milliseconds guard.
    upper = ra + limits.max_future_skew
    return upper if upper < MS_THRESHOLD else MS_THRESHOLD


def round_ms(seconds: float) -> float:
    """UNIX seconds rounded to milliseconds, the precision of received_at and corrected ts.

    The same float as `round(seconds, 3)` except within float error of a half-millisecond tie,
    for half the cost (no decimal string conversion). Every rounding in this module goes
    through here, so the default ts of an event and the received_at written next to it are
    the same float.
    """
    return round(seconds * 1000) / 1000


def _validate_all(
    items: list[Any], ra: float, upper: float, max_depth: int, openers: int | None
) -> list[dict[str, Any]]:
    """The one implementation of the rules: normalize every item or raise at the first bad one.

    `validate_event` calls this with a one-item list and error collection re-runs it item by
    item, so every rule lives here once.

    The loop body is the per-event fast path, inline (no call per event), for the common
    event: a dict with event_type and non-null ts and params, nothing else, which a length
    comparison proves. Any other shape is checked for unknown fields, and event_id/sent_at go
    to `_with_optional`. An int ts is compared with an int bound (an int/float comparison
    costs twice as much in CPython).

    Params depth: a params nested deeper than `max_depth` contains at least `max_depth`
    containers besides itself, each of which put a `{` or `[` in the body. So when the body's
    `{`/`[` count (`openers`; brackets inside strings only make it larger) minus one per event
    object and one per params object is below `max_depth`, no params can be too deep and the
    per-event check is skipped. Otherwise (or without `openers`) `_check_depths` checks each.
    """
    upper_int = math.floor(upper)
    missing_params = 0
    out: list[dict[str, Any]] = []
    append = out.append
    for obj in items:
        if type(obj) is not dict:
            raise BadEvent(
                'an event must be a JSON object like {"event_type": "signup"}, '
                f"not {_json_type(obj)}"
            )
        event_type = obj.get("event_type")
        ts = obj.get("ts")
        params = obj.get("params")
        optional = False
        if len(obj) != 3 or ts is None or params is None:
            # Not the three-field shape: there may be unknown or optional fields.
            if not obj.keys() <= ALLOWED_FIELDS:
                _unknown_field(obj)
            event_id = obj.get("event_id")
            sent_at = obj.get("sent_at")
            optional = event_id is not None or sent_at is not None

        if type(event_type) is not str:
            _bad_event_type(event_type)
        event_type = event_type.strip()
        if not event_type or len(event_type) > MAX_EVENT_TYPE_CHARS or not event_type.isprintable():
            _check_text("event_type", event_type, MAX_EVENT_TYPE_CHARS)

        if params is None:
            params = {}
            missing_params += 1
        elif type(params) is not dict:
            raise BadEvent(
                f"params must be a JSON object (string keys), not {_json_type(params)}"
            )

        if optional:
            append(_with_optional(event_type, ts, params, event_id, sent_at, ra, upper))
            continue
        if ts is None:
            ts = ra
        else:
            tt = type(ts)
            if tt is int:
                if ts < 0 or ts > upper_int:
                    _check_ts("ts", ts, ra, upper)
            elif tt is float:
                if not 0.0 <= ts <= upper:
                    _check_ts("ts", ts, ra, upper)
            else:
                ts = _number("ts", ts)
                if not 0 <= ts <= upper:
                    _check_ts("ts", ts, ra, upper)
        append({"event_type": event_type, "ts": ts, "params": params})
    if openers is None or openers - 2 * len(out) + missing_params >= max_depth:
        _check_depths(out, max_depth)
    return out


_COLUMNS_FROM = 8
"""Batches of at least this many items try `_validate_columns` first; below it the loop wins."""
_SHAPE = ("event_type", "ts", "params")
_ONLY_DICT = {dict}
_ONLY_STR = {str}
_ONLY_INT = {int}
_NUMBERS = frozenset((int, float))
_get_type = itemgetter("event_type")
_get_ts = itemgetter("ts")
_get_params = itemgetter("params")
_NOT_OPENER_OR_NL = bytes(sorted(set(range(256)) - set(b"{[\n")))
_NOT_OPENER = bytes(sorted(set(range(256)) - set(b"{[")))


def _validate_columns(
    items: list[Any], ra: float, upper: float, max_depth: int, openers: int | None,
    texts: list[bytes] | None,
) -> list[dict[str, Any]] | None:
    """The rules of `_validate_all` checked a column at a time, for the common batch.

    The per-event loop costs about 1.5 µs of bytecode per event; the target of 400,000
    events/s on one core leaves less than that for everything. Here every check runs over a
    whole column inside C (`map`, `set`, `min`/`max`, `all`), so the Python cost is per batch,
    not per event. It accepts only batches in which every item has exactly the canonical shape
    `{"event_type": str, "ts": int|float, "params": dict}` in that key order, with an
    event_type that needs no stripping; such items are already normalized, so they are
    returned as they are (the list itself: no copy). Anything else, valid or not, answers None
    and the caller runs the loop, which owns the error messages and every other shape. The
    loop is the specification: this function must never accept what the loop would reject
    (tests/unit/test_schema.py compares the two on generated batches).
    """
    if set(map(type, items)) != _ONLY_DICT or set(map(tuple, items)) != {_SHAPE}:
        return None
    types = list(map(_get_type, items))
    if set(map(type, types)) != _ONLY_STR or list(map(str.strip, types)) != types:
        return None
    for event_type in set(types):
        if not event_type or len(event_type) > MAX_EVENT_TYPE_CHARS or \
                not event_type.isprintable():
            return None
    stamps = list(map(_get_ts, items))
    kinds = set(map(type, stamps))
    if kinds == _ONLY_INT:
        if min(stamps) < 0 or max(stamps) > math.floor(upper):
            return None
    elif not kinds <= _NUMBERS or not all(map(eq, stamps, stamps)) or min(stamps) < 0 or \
            max(stamps) > upper:
        # (x == x is False only for NaN, which min/max would let through.)
        return None
    params = list(map(_get_params, items))
    if set(map(type, params)) != _ONLY_DICT:
        return None
    if openers is None or openers - 2 * len(items) >= max_depth:
        # The bracket count of each params' JSON bounds its depth (see _check_depths); here
        # it is counted in the JSON of the whole event (one more `{`), which encode_batch can
        # then use instead of serializing each event a second time. One translate over all of
        # them keeps only the brackets and the separators (JSON from orjson has no raw
        # newline), so the count per event is a len().
        try:
            dumped = list(map(orjson.dumps, items))
        except orjson.JSONEncodeError:
            return None
        brackets = b"\n".join(dumped).translate(None, _NOT_OPENER_OR_NL).split(b"\n")
        if max(map(len, brackets)) > max_depth + 1:
            return None
        if texts is not None:
            texts[:] = dumped
    return items


def _check_depths(events: list[dict[str, Any]], max_depth: int) -> None:
    """Apply the depth limit to each event's params.

    Flat params (the common case) cost one type test per value. For a params holding a
    container, its depth is bounded by the number of `{` and `[` in its JSON (each container
    writes one; brackets inside strings only add): serializing it with orjson and counting
    costs about half of the Python walk, which runs only when the count exceeds `max_depth`.
    If orjson refuses the params (its own nesting limit is 255, well past ours; or a non-JSON
    value from a direct caller) the walk decides.
    """
    containers = _CONTAINERS
    dumps = orjson.dumps
    for event in events:
        params = event["params"]
        for value in params.values():
            if type(value) in containers:
                try:
                    text = dumps(params)
                except orjson.JSONEncodeError:
                    _check_depth(params, max_depth)
                    break
                if text.count(b"{") + text.count(b"[") > max_depth:
                    _check_depth(params, max_depth)
                break


def _with_optional(
    event_type: str, ts: Any, params: dict[str, Any], event_id: Any, sent_at: Any, ra: float,
    upper: float,
) -> dict[str, Any]:
    """The normalized event when event_id or sent_at is present (the clock-skew correction).

    With sent_at, the raw ts and sent_at only have to be plausible UNIX seconds; the range
    check that matters (not negative, not too far ahead) is made on the corrected ts.
    """
    if event_id is not None:
        if type(event_id) is not str:
            raise BadEvent(
                f"event_id must be a string of 1 to {MAX_EVENT_ID_CHARS} characters (a UUID, "
                f"for example), not {_json_type(event_id)}"
            )
        if not event_id or len(event_id) > MAX_EVENT_ID_CHARS or not event_id.isprintable():
            _check_text("event_id", event_id, MAX_EVENT_ID_CHARS)
    if ts is not None and type(ts) is not int and type(ts) is not float:
        ts = _number("ts", ts)
    event: dict[str, Any]
    if sent_at is None:
        if ts is None:
            ts = ra
        elif not 0 <= ts <= upper:
            _check_ts("ts", ts, ra, upper)
        event = {"event_type": event_type, "ts": ts, "params": params}
    else:
        if type(sent_at) is not int and type(sent_at) is not float:
            sent_at = _number("sent_at", sent_at)
        if not 0 <= sent_at <= MS_THRESHOLD:
            _check_ts("sent_at", sent_at, ra, math.inf)
        if ts is None:
            event = {"event_type": event_type, "ts": ra, "params": params, "sent_at": sent_at}
        else:
            if not 0 <= ts <= MS_THRESHOLD:
                _check_ts("ts", ts, ra, math.inf)
            corrected = round_ms(ts + (ra - sent_at))
            if not 0 <= corrected <= upper:
                _bad_correction(corrected, ts, sent_at, ra, upper)
            event = {
                "event_type": event_type, "ts": corrected, "params": params,
                "sent_at": sent_at, "client_ts": ts,
            }
    if event_id is not None:
        event["event_id"] = event_id
    return event


def _bad_correction(
    corrected: float, ts: float, sent_at: float, ra: float, upper: float
) -> NoReturn:
    skew = round(ra - sent_at, 3)
    if corrected < 0:
        where = "negative"
    else:
        ahead, limit = round(corrected - ra, 3), round(upper - ra, 3)
        where = f"{ahead} s ahead of the server clock (the limit is {limit} s)"
    raise BadEvent(
        f"ts {ts} corrected for the client's clock skew (received_at - sent_at = {skew} s) is "
        f"{corrected}, which is {where}; send ts and sent_at from the same clock, both in UNIX "
        "seconds"
    )


def _number(field: str, value: Any) -> int | float:
    """An int or float as is, or a decimal string of digits converted; anything else fails."""
    t = type(value)
    if t is int or t is float:
        return value  # type: ignore[no-any-return]
    if t is str:
        if _NUMERIC.fullmatch(value):
            # Past 18 digits the value is out of range anyway; float() keeps a 5000-digit string
            # from hitting int()'s digit limit (ValueError) and yields inf for absurd lengths.
            return float(value) if "." in value or len(value) > 18 else int(value)
        raise BadEvent(
            f"{field} {value[:40]!r} is not a number; send UNIX seconds such as 1456606932 "
            "(an integer, a decimal, or a string of digits)"
        )
    raise BadEvent(
        f"{field} must be a number of UNIX seconds such as 1456606932, not {_json_type(value)}"
    )


def _check_ts(field: str, value: float, ra: float, upper: float) -> NoReturn:
    """Raise the message explaining why `value` failed `0 <= value <= upper`."""
    if value != value or value in (math.inf, -math.inf):
        raise BadEvent(f"{field} must be a finite number of UNIX seconds, got {value}")
    if value < 0:
        raise BadEvent(f"{field} must be >= 0 (UNIX seconds), got {value}")
    if value > MS_THRESHOLD:
        raise BadEvent(
            f"{field} {value} looks like milliseconds; divide it by 1000 to send UNIX seconds"
        )
    if value > upper:
        raise BadEvent(
            f"{field} {value} is {round(value - ra, 3)} s ahead of the server clock, more than "
            f"the {round(upper - ra, 3)} s allowed; send UNIX seconds from a correct clock"
        )
    # Unreachable when the caller's range check used the same bounds.
    raise AssertionError(f"{field} {value} failed the range check without a reason")


def has_control(value: str) -> bool:
    """Whether a string holds a control character, which no stored string field may."""
    return _CONTROL.search(value) is not None


def _check_text(field: str, value: str, max_chars: int) -> None:
    """Length and control characters of a string field (after any stripping)."""
    if not value:
        raise BadEvent(f"{field} is empty; send 1 to {max_chars} characters")
    if len(value) > max_chars:
        raise BadEvent(f"{field} is {len(value)} characters long; the limit is {max_chars}")
    bad = _CONTROL.search(value)
    if bad is not None:
        raise BadEvent(
            f"{field} contains the control character U+{ord(bad.group()):04X} at position "
            f"{bad.start()}; remove it"
        )
    # Not printable but no control character: format characters such as the zero-width joiner
    # of emoji sequences, or non-ASCII spaces. Those are fine.


def _bad_event_type(value: Any) -> NoReturn:
    if value is None:
        raise BadEvent('event_type is required: a non-empty string such as "signup"')
    raise BadEvent(f'event_type must be a string such as "signup", not {_json_type(value)}')


def _unknown_field(obj: dict[str, Any]) -> NoReturn:
    unknown = sorted(str(k) for k in obj if k not in ALLOWED_FIELDS)
    label = "unknown field" if len(unknown) == 1 else "unknown fields"
    names = ", ".join(repr(k) for k in unknown[:5])
    raise BadEvent(
        f"{label} {names}; an event may only have {_ALLOWED_LIST} (put your own data in params)"
    )


def _check_depth(params: dict[str, Any], max_depth: int) -> None:
    """Reject params nested deeper than `max_depth` (params itself is depth 1).

    Breadth-first, one level per turn: iterative, so the check never meets Python's recursion
    limit, and it stops as soon as a level lies past the limit. Each turn keeps only the
    containers of the level, so flat leaves cost one type test each.
    """
    containers = _CONTAINERS
    level: list[Any] = [params]
    depth = 1
    while True:
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) in containers
        ]
        if not level:
            return
        depth += 1
        if depth > max_depth:
            raise BadEvent(
                f"params is nested more than {max_depth} levels deep (params itself is level "
                "1); flatten it"
            )


def _json_type(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


# --- encoding ---------------------------------------------------------------------------------


def encode_line(event: dict[str, Any], snowflake: int, received_at: float) -> bytes:
    """One canonical segment line, ending in a newline.

    Keys in order: id (a decimal string: ids exceed JavaScript's 2**53), event_type, ts,
    params, received_at (rounded to milliseconds), then event_id, sent_at, client_ts when
    present. Does not modify `event`. `encode_batch` produces the same bytes, faster.
    """
    line = _canonical(event, round_ms(received_at))
    return orjson.dumps({"id": str(snowflake), **line}, option=orjson.OPT_APPEND_NEWLINE)


def encode_batch(
    events: list[dict[str, Any]], ids: Sequence[int], received_at: float,
    texts: list[bytes] | None = None,
) -> bytes:
    """The lines of `encode_line` for every event, joined into one bytes object.

    Also adds `"id"` (int) and `"received_at"` to each event dict, so that the caller can hand
    the same dicts to the request-path processors without parsing the lines back.

    How, for speed: each event dict is serialized by orjson as it is (no second dict per
    event) and its braces are cut off, and the line is assembled by one `join` of four
    pieces per event, laid out with slice assignments (no per-event Python code):

        {"id":"<head>   <last 3 digits>",   "event_type":...,"params":{...}   ,"received_at":..}\\n

    The first two pieces come from `_id_pieces` and are shared bytes objects, not new ones.
    An event with more than the three basic keys (event_id, sent_at, client_ts, or an event
    encoded before) is serialized from its canonical dict, which already holds received_at
    in its place, and ends in a bare `}\\n`.

    `texts`, if given, is what `validate_batch` filled in: `orjson.dumps` of each event as it
    is now (three keys), used instead of serializing them again.

    Raises:
        ValueError: `events` and `ids` differ in length.
    """
    count = len(events)
    if count != len(ids):
        raise ValueError(f"cannot encode batch: {count} events but {len(ids)} ids")
    if count == 1:
        # One event (a single POST, the pixel): the batch machinery costs more than it saves.
        event, snowflake = events[0], ids[0]
        ra = round_ms(received_at)
        if len(event) == 3:
            line = b'{"id":"%d",%b,"received_at":%b}\n' % (
                snowflake, (texts[0] if texts else orjson.dumps(event))[1:-1], orjson.dumps(ra))
        else:
            line = encode_line(event, snowflake, received_at)
        event["id"] = snowflake
        event["received_at"] = ra
        return line
    if not count:
        return b""
    ra = round_ms(received_at)
    dumps = orjson.dumps
    tail = b',"received_at":%b}\n' % dumps(ra)
    parts: list[bytes] = [b""] * (4 * count)
    parts[0::4], parts[1::4] = _id_pieces(ids)
    if texts:
        parts[2::4] = map(_inner, texts)
        parts[3::4] = [tail] * count
    elif max(map(len, events)) == 3:
        parts[2::4] = map(_inner, map(dumps, events))
        parts[3::4] = [tail] * count
    else:
        bodies: list[bytes] = []
        ends: list[bytes] = []
        for event in events:
            if len(event) == 3:
                bodies.append(dumps(event)[1:-1])
                ends.append(tail)
            else:
                bodies.append(dumps(_canonical(event, ra))[1:-1])
                ends.append(b"}\n")
        parts[2::4] = bodies
        parts[3::4] = ends
    # event["id"] = snowflake; event["received_at"] = ra, for every event, looped in C.
    deque(map(dict.__setitem__, events, repeat("id"), ids), maxlen=0)
    deque(map(dict.__setitem__, events, repeat("received_at"), repeat(ra, count)), maxlen=0)
    return b"".join(parts)


def _canonical(event: dict[str, Any], ra: float) -> dict[str, Any]:
    """The event's fields in line order, without the id."""
    line = {
        "event_type": event["event_type"],
        "ts": event["ts"],
        "params": event["params"],
        "received_at": ra,
    }
    for key in ("event_id", "sent_at", "client_ts"):
        if key in event:
            line[key] = event[key]
    return line


_inner = itemgetter(slice(1, -1))
"""A JSON object's bytes without its braces."""
_RUN = 1000
_ID_TAILS = tuple(b'%03d",' % low for low in range(_RUN))
"""The last three digits of an id, and what follows the id in a line."""


def _id_pieces(ids: Sequence[int], opening: bytes = b'{"id":"') -> tuple[list[bytes], list[bytes]]:
    """Each id's line opening split in two: `b'{"id":"<all but 3 digits>'`, `b'<3 digits>",'`.

    Converting a 64-bit int to decimal costs CPython about as much as serializing a small
    event. Ids of one batch are mostly consecutive (one `range` per millisecond, see
    `SnowflakeGenerator.next_ids`), so a run of ids that differ only in their last three
    digits shares one formatted head, and the digits come from the `_ID_TAILS` table. A run
    is recognised by its first and last ids alone, which is exact only for a strictly
    increasing list; that is checked first (in C; a `range` of step 1, as `next_ids` gives for
    one millisecond, is taken as it says), and anything else is formatted id by id.
    `ids` must not be empty. `opening` replaces `{"id":"` (see `ids_json`).
    """
    count = len(ids)
    if type(ids) is range and ids.step == 1 and ids.start >= 0:
        pass  # (the common batch, from `next_ids`: consecutive, no need to look at each)
    elif ids[0] < 0 or not all(map(lt, ids, islice(ids, 1, None))):
        return [b'%b%d' % (opening, snowflake) for snowflake in ids], [b'",'] * count
    heads: list[bytes] = []
    tails: list[bytes] = []
    i = 0
    while i < count:
        first = ids[i]
        head, low = divmod(first, _RUN)
        take = min(_RUN - low, count - i)
        if ids[i + take - 1] - first != take - 1:
            # A gap inside this run (the batch spans a millisecond): find where it ends.
            take = 1
            while ids[i + take] == first + take:
                take += 1
        if head:
            heads += [b'%b%d' % (opening, head)] * take
            tails += _ID_TAILS[low : low + take]
        else:
            # Ids below 1000 have no head, so no zero padding either.
            heads += [opening] * take
            tails += [b'%d",' % snowflake for snowflake in ids[i : i + take]]
        i += take
    return heads, tails


_ID_DIGITS = tuple(b"%03d" % low for low in range(_RUN))


def ids_json(ids: Sequence[int]) -> bytes:
    """The JSON array of `ids` as decimal strings (SPEC §2), for the 202: `["1","2"]`.

    Built from the same shared pieces as the lines (`_id_pieces`), for the same reason; and
    for consecutive ids (the common batch) with one join per run of a thousand.
    """
    if not ids:
        return b"[]"
    if type(ids) is range and ids.step == 1 and ids.start >= _RUN:  # (from `next_ids`)
        count = len(ids)
        first = ids.start
        runs = []
        i = 0
        while i < count:
            head, low = divmod(first + i, _RUN)
            take = min(_RUN - low, count - i)
            runs.append(b'"%d%b"' % (head, (b'","%d' % head).join(_ID_DIGITS[low:low + take])))
            i += take
        return b"[%b]" % b",".join(runs)
    heads, tails = _id_pieces(ids, b'"')
    parts: list[bytes] = [b""] * (2 * len(ids))
    parts[0::2] = heads
    parts[1::2] = tails
    parts[-1] = parts[-1][:-1]  # the last tail's comma
    return b"[%b]" % b"".join(parts)


# --- GET pixel --------------------------------------------------------------------------------


def event_from_query(args: dict[str, str]) -> dict[str, Any]:
    """The raw event of `GET /api/events/pixel.gif?event_type=...&params=<JSON>&ts=...`.

    Every value is a string: `params` is parsed as JSON, `ts` and `sent_at` stay strings (the
    validator accepts strings of digits). `key` (the write key) and names starting with `_`
    (cache busters such as `_=1712345678`) are ignored; any other unknown name is an error, as
    an unknown field of a JSON event is. Empty values count as absent. Pass the result to
    `validate_event`.

    Raises:
        BadEvent: params is not a JSON object, or an unknown parameter.
    """
    raw: dict[str, Any] = {}
    for name, value in args.items():
        if name in ALLOWED_FIELDS:
            if value != "":
                raw[name] = value
        elif name != "key" and not name.startswith("_"):
            raise BadEvent(
                f"unknown query parameter {name!r}; the pixel takes {_ALLOWED_LIST} (params as "
                "URL-encoded JSON)"
            )
    params = raw.get("params")
    if params is not None:
        try:
            parsed = orjson.loads(params)
            check_integers(params.encode())
        except orjson.JSONDecodeError as exc:
            raise BadEvent(
                f"params is not valid JSON: {_decode_reason(exc)}; send a URL-encoded JSON "
                "object, e.g. params=%7B%22user_id%22%3A42%7D"
            ) from None
        if type(parsed) is not dict:
            raise BadEvent(
                f"params must be a URL-encoded JSON object, e.g. params=%7B%22user_id%22%3A42%7D, "
                f"not {_json_type(parsed)}"
            )
        raw["params"] = parsed
    for name in ("ts", "sent_at"):
        # A number written as JSON writes it ("-1", "1e9") is judged as that number, so the
        # message says what is wrong with it ("must be >= 0"), not that it is no number.
        text = raw.get(name)
        if text is not None and not text.isdigit():
            try:
                number = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
            if type(number) in (int, float):
                raw[name] = number
    return raw
