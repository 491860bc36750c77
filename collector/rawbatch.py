"""The batch fast path: a JSON array of events to segment lines without building params objects.

Why it exists: with orjson, a batch event costs about 6 µs on one core, most of it building
Python objects for `params` (`orjson.loads`), checking them, and serializing them again
(`orjson.dumps`), only to write the same JSON back to the segment. The 400,000 events/s target
of issue 2 leaves 2.5 µs per event for everything including HTTP and the write. Here msgspec
decodes the array into small structs whose `params` is a `msgspec.Raw`: a view of the
client's own bytes, skipped over by msgspec's parser (which checks its syntax) but never turned
into objects. Those bytes go into the line as they are, next to the fields we did decode and
check. The line is the same JSON value `schema.encode_batch` would write; only insignificant
formatting inside params (spaces, number spelling, escapes) can differ.

This path never decides anything on its own. `decode` answers None for every body it is not
sure about, valid or not, and the caller then runs `schema.parse_body` / `validate_batch`,
which own the rules and every error message. So it must accept only bodies the slow path
accepts, and produce lines that mean what the slow path's lines mean:

* Shape: an array of 8 to `max_events` objects whose only fields are `event_type` (a string),
  `ts` (a number or null) and `params` (an object); `forbid_unknown_fields` sends
  `event_id`, `sent_at`, unknown fields, strings for numbers and booleans to the slow path.
* The checks of `schema._validate_columns` on the decoded columns (event_type needs no
  stripping and is printable and 1-256 characters; ts within [0, receive time + skew]).
* Where msgspec's skipping of a Raw value is more lenient than orjson, which the slow path and
  the loader parse with, the bytes are checked: the whole body must be valid UTF-8 (msgspec
  does not check skipped strings), and a params holding something orjson reads differently or
  refuses is re-serialized through orjson, exactly as the slow path would store it:
  a `\\u` escape (orjson refuses lone surrogates), a raw line break (it would split the NDJSON
  line; JSON only allows one between tokens), or a number that might overflow a double
  (orjson refuses `1e400`). Those are found by two scans of the whole body in C; only a body
  that has one of them pays for looking at each params.
* Depth: params may nest at most `max_depth` deep. Each container opens with one `{` or `[`,
  so the brackets of the whole body bound the depth of any one params; a body with too many
  brackets for that bound to hold goes to the slow path.
"""

from __future__ import annotations

from itertools import repeat
from operator import attrgetter
from typing import NamedTuple

import msgspec
import orjson

from collector.schema import MAX_EVENT_TYPE_CHARS, EventLimits, _id_pieces, _upper_ts, round_ms

MIN_EVENTS = 8
"""Smaller batches gain little and go the slow path (fewer shapes to get right)."""

_NO_PARAMS = msgspec.Raw(b"{}")


class _Event(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One batch event as msgspec decodes it. gc=False: it holds no containers, so no cycles."""

    event_type: str
    ts: int | float | None = None
    params: msgspec.Raw = _NO_PARAMS


_decode_events = msgspec.json.Decoder(list[_Event]).decode
_get_type = attrgetter("event_type")
_get_ts = attrgetter("ts")
_get_params = attrgetter("params")
_ONLY_INT = {int}
_NUMBERS = frozenset((int, float))
_INT_TS = b'%d,"params":'
"""A ts written as an int, and what follows it in the line."""

_CLASSES = bytes(
    48 if byte in b"0123456789" else 101 if byte in b"eE" else 123 if byte in b"{[" else
    byte if byte in b"}\n" else 32 for byte in range(256))
"""The character classes of params' JSON that `decode` looks at: digits map to "0", the
exponent letters to "e", both opening brackets to "{"; "}" and newlines stay, and every other
byte becomes a space (so that searches skip through it quickly)."""
_GROUP = 16
"""Params checked together: small enough that the depth bound of a group (its brackets less
one per params) holds for params with a few containers each, large enough to amortize."""
_LONG_DIGITS = b"0" * 200
"""A run of digits this long might be an integer past a double's range (orjson refuses them)."""
_DIGIT_EXPONENT = b"0e"
"""A digit then an exponent letter: a number in exponent notation might overflow (`1e400`)."""


class RawBatch(NamedTuple):
    """A decoded batch that passed every check: the columns `encode` turns into lines."""

    types: list[str]
    stamps: list[int | float]
    params: list[msgspec.Raw | bytes]
    int_stamps: bool


def decode(body: bytes, received_at: float, limits: EventLimits) -> RawBatch | None:
    """The batch of `body` if it is a plain JSON array of valid events, else None.

    None means "use the slow path", never "invalid": see the module docstring for what is
    accepted here. `received_at` is the server's receive time in UNIX seconds.
    """
    if body[:1] != b"[":
        return None
    try:
        events = _decode_events(body)
    except msgspec.MsgspecError:
        return None
    count = len(events)
    if count < MIN_EVENTS or count > limits.max_events:
        return None
    types = list(map(_get_type, events))
    if list(map(str.strip, types)) != types:
        return None
    for event_type in set(types):
        if not event_type or len(event_type) > MAX_EVENT_TYPE_CHARS or \
                not event_type.isprintable():
            return None
    ra = round_ms(received_at)
    upper = _upper_ts(ra, limits)
    stamps = list(map(_get_ts, events))
    kinds = set(map(type, stamps))
    if type(None) in kinds:
        stamps = [ra if ts is None else ts for ts in stamps]
        kinds = set(map(type, stamps))
    int_stamps = kinds == _ONLY_INT
    if int_stamps:
        if min(stamps) < 0 or max(stamps) > upper // 1:
            return None
    elif not kinds <= _NUMBERS or min(stamps) < 0 or max(stamps) > upper:
        return None  # (JSON has no NaN, so min and max are exact here.)
    params: list[msgspec.Raw | bytes] = list(map(_get_params, events))
    if not body.isascii():
        try:
            body.decode()  # msgspec does not check the strings it skips
        except UnicodeDecodeError:
            return None
    if b"\\" in body or b"\n" in body or b"\r" in body:
        reserialized = _reserialized(params)
        if reserialized is None:
            return None
        params = reserialized
    checked = _checked_params(params, limits.max_depth)
    if checked is None:
        return None
    return RawBatch(types, stamps, checked, int_stamps)


def _checked_params(params: list[msgspec.Raw | bytes], max_depth: int
                    ) -> list[msgspec.Raw | bytes] | None:
    """The params, with any whose numbers orjson might refuse re-serialized, if every one of
    them is an object nested at most `max_depth` deep; else None.

    Groups of `_GROUP` params are looked at together: joined by newlines (none of them holds
    one any more) and mapped to `_CLASSES`, a few scans of C answer for the whole group.
    """
    out: list[msgspec.Raw | bytes] = []
    for start in range(0, len(params), _GROUP):
        group = params[start:start + _GROUP]
        classes = b"\n".join(group).translate(_CLASSES)
        if _DIGIT_EXPONENT in classes or _LONG_DIGITS in classes:
            reserialized = _reserialized(group)
            if reserialized is None:
                return None
            group = reserialized
            classes = b"\n".join(group).translate(_CLASSES)
        size = len(group)
        # Every params is an object: a JSON value that ends in "}" is one (arrays end in "]",
        # strings in a quote, the rest in a digit or a letter).
        if classes.count(b"}\n") != size - 1 or classes[-1:] != b"}":
            return None
        # Depth. Each container opens with one bracket (both map to "{"), so a params'
        # brackets bound its depth (brackets inside strings only loosen the bound). First for
        # the group at once: each params has at least its own, so what the others leave over
        # bounds any one of them; only if that is not enough, each is counted.
        if classes.count(b"{") - (size - 1) > max_depth and \
                max(map(bytes.count, classes.split(b"\n"), repeat(b"{"))) > max_depth:
            return None
        out += group
    return out


def _reserialized(params: list[msgspec.Raw | bytes]) -> list[msgspec.Raw | bytes] | None:
    """Each `_suspect` params as orjson writes it (what the slow path would store), the others
    untouched; None if orjson refuses one (the slow path then says why)."""
    try:
        return [orjson.dumps(orjson.loads(p)) if _suspect(p) else p for p in params]
    except orjson.JSONDecodeError:
        return None


def _suspect(data: msgspec.Raw | bytes) -> bool:
    """Whether a params' bytes may hold JSON that orjson reads differently or refuses.

    A `\\u` escape (orjson refuses lone surrogates), a raw line break (it would split the
    NDJSON line), or a number that might overflow a double. Runs only for a body in which
    `decode` found one of them, to find which params it is in.
    """
    raw = bytes(data)
    if b"\\u" in raw or b"\n" in raw or b"\r" in raw:
        return True
    classes = raw.translate(_CLASSES)
    return _DIGIT_EXPONENT in classes or _LONG_DIGITS in classes


def encode(batch: RawBatch, ids: list[int], received_at: float) -> bytes:
    """The segment lines of `batch`, the same JSON values as `schema.encode_batch` writes.

    One `join` of six pieces per event, laid out with slice assignments (no Python code per
    event for the common all-int ts):

        {"id":"<head> | <3 digits>", | "event_type":"<t>","ts": | <ts>,"params": | {...}
        | ,"received_at":...}\\n
    """
    count = len(ids)
    if count != len(batch.types):
        raise ValueError(f"cannot encode batch: {len(batch.types)} events but {count} ids")
    dumps = orjson.dumps
    openings = {t: b'"event_type":%b,"ts":' % dumps(t) for t in set(batch.types)}
    if batch.int_stamps:
        stamps = list(map(_INT_TS.__mod__, batch.stamps))
    else:
        stamps = [_INT_TS % ts if type(ts) is int else b'%b,"params":' % dumps(ts)
                  for ts in batch.stamps]
    parts: list[msgspec.Raw | bytes] = [b""] * (6 * count)
    parts[0::6], parts[1::6] = _id_pieces(ids)
    parts[2::6] = map(openings.__getitem__, batch.types)
    parts[3::6] = stamps
    parts[4::6] = batch.params
    parts[5::6] = [b',"received_at":%b}\n' % dumps(round_ms(received_at))] * count
    return b"".join(parts)  # (a Raw has the buffer protocol)
