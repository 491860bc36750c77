"""The fast path of POST /api/events: events to segment lines without building params objects.

Why it exists: with orjson, an event costs CPython about 24k instructions in a batch and 36k
alone (parse, validate, serialize again), most of it building Python objects for `params`
(`orjson.loads`), checking them, and serializing them back (`orjson.dumps`), only to write the
same JSON to the segment. Here msgspec decodes the body into small structs whose `params` is
a `msgspec.Raw`: a view of the client's own bytes, skipped over by msgspec's parser (which
checks their syntax) but never turned into objects. Those bytes go into the line as they are,
next to the fields that were decoded and checked. The line is the same JSON value
`schema.encode_batch` would write; only insignificant formatting inside params (spaces, the
spelling of a number) can differ. `encode_one` does one event object, `decode` + `encode` an
array of `MIN_EVENTS` or more, or as many lines of NDJSON laid out as msgspec writes them (one
compact event per line, `_ndjson_written`).

This path never decides anything on its own. It answers None for every body it is not sure
about, valid or not, and the caller then runs `schema.parse_body` / `validate_batch`, which
own the rules and every error message. So it must accept only bodies the slow path accepts,
and write lines that mean what the slow path's lines mean (tests/unit/test_rawbatch.py checks
both on generated bodies):

* Shape: events whose only fields are `event_type` (a string), `ts` (a number or null) and
  `params` (an object), or these and an `event_id` (`_Keyed`: a single event, or every event
  of a batch); `forbid_unknown_fields` sends `sent_at` and unknown fields to the slow path,
  and the fields' types strings for numbers, booleans and a null event_id.
* The rules of `schema._validate_columns` on the decoded values (event_type needs no stripping
  and is printable and 1-256 characters; ts within [0, receive time + skew]).
* What msgspec only skims, orjson (the slow path and the loader) parses in full, and it is
  stricter in three ways: it refuses invalid UTF-8 (so the whole body must decode), lone
  surrogate escapes (so a body with any backslash goes to the slow path), and numbers past a
  double's range such as `1e400` (a params whose digits look like one is re-serialized by
  orjson, which then accepts it or says no for the whole body). It also reads an integer
  outside 64 bits as a float, which the slow path refuses (schema.check_integers): a params
  with a number of 19 digits or more goes to the slow path (`_LONG_DIGITS`).
  A raw line break between the tokens of a params would split the NDJSON line: such a
  params is re-serialized as well (a batch with event_ids goes to the slow path instead).
* A field given twice: msgspec keeps the last value, as orjson does, but only skims an
  earlier params, so a body with more `"params"` keys than params goes to the slow path
  (`_hides_values`; needless when the body is msgspec's own writing of the events, which
  names each field once); an earlier ts, event_type or event_id is decoded and checked, and
  msgspec refuses a ts too large (`_Int64`).
* Depth: params may nest at most `max_depth` deep. Each container opens with one `{` or `[`,
  so a params' brackets bound its depth; they are counted per group of params, and per params
  only when the group's count leaves room for doubt.

Most batches then go a shorter way, which is what makes them cheap: msgspec writes the
decoded events back (a ts left out given the receive time, as the slow path gives it), in one
layout whatever the body's (compact, fields in one order), and `_event_texts` cuts that text
into each event's own text, which `encode` copies into the lines behind the id and
received_at, ts included, nothing formatted per event; `_plain_params` checks all the params
at once in their skeleton. (A body laid out as msgspec writes, as most encoders do by default,
is that very text, and so cannot hide a field given twice.) Whatever it is unsure of goes the
general way above.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import repeat
from operator import is_
from typing import Annotated, Any, NamedTuple, TypeVar

import msgspec
import orjson

from collector.schema import (
    _ONLY_INT,
    MAX_EVENT_ID_CHARS,
    MAX_EVENT_TYPE_CHARS,
    MS_THRESHOLD,
    EventLimits,
    _id_pieces,
    _upper_ts,
    round_ms,
)

MIN_EVENTS = 8
"""Smaller batches gain little and go the slow path (fewer shapes to get right)."""

_NO_PARAMS = msgspec.Raw(b"{}")


_Int64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
"""An int ts: any larger one is refused by msgspec while decoding, even a value that a repeated
`ts` then replaces (orjson, parsing the whole body in the slow path, refuses an integer past a
double's range: such a body must not pass here). A negative one is refused (by the slow path
too), here while decoding rather than by a look at each ts afterwards."""
_Float = Annotated[float, msgspec.Meta(ge=0)]
"""A float ts, refused if negative as well (-0.0 is not)."""


class _Event(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One batch event as msgspec decodes it. gc=False: it holds no containers, so no cycles."""

    event_type: str
    ts: _Int64 | _Float | None = None
    params: msgspec.Raw = _NO_PARAMS


class _Keyed(_Event, forbid_unknown_fields=True, gc=False, kw_only=True):
    """An event with its `event_id` (SPEC §2: a client's key for retrying safely), which its
    line keeps after the other fields; the slow path's rules (1-64 characters, no control
    character) are checked by msgspec and `_plain_ids`. Clients that send one send it with
    every event, so a batch is decoded as all `_Keyed` or all `_Event`; a mix, a null
    event_id or `sent_at` (whose clock-skew correction rewrites ts) go the slow path."""

    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EVENT_ID_CHARS)]


_decode_events = msgspec.json.Decoder(list[_Event]).decode
_decode_event = msgspec.json.Decoder(_Event).decode
_decode_keyed_events = msgspec.json.Decoder(list[_Keyed]).decode
_decode_keyed_event = msgspec.json.Decoder(_Keyed).decode
_decode_event_lines = msgspec.json.Decoder(_Event).decode_lines
_decode_keyed_lines = msgspec.json.Decoder(_Keyed).decode_lines
_encode_event_lines = msgspec.json.Encoder().encode_lines
_EVENT_ID = b'"event_id"'
_T = TypeVar("_T")
dumps = orjson.dumps
_INT_TS = b'%d,"params":'
"""A ts written as an int, and what follows it in the line."""

_CLASSES = bytes(
    48 if byte in b"0123456789" else 101 if byte in b"eE" else 123 if byte in b"{[" else
    125 if byte == 125 else 33 if byte in b"\\\n\r" else 10 if byte == 0 else
    34 if byte == 34 else 32
    for byte in range(256))
"""The character classes of params' JSON that the checks look at, so that one translate
serves them all: digits map to "0", the exponent letters to "e", both opening brackets to
"{", "}" and the quote stay, a backslash or a raw line break becomes "!", the NUL that
separates params joined together (JSON text never holds one) becomes a newline, and every
other byte a space (searches then skip through it quickly)."""
_SEPARATOR = b"\x00"
_SUSPECT = b"!"
"""A raw line break (it would split the NDJSON line; a backslash maps here too, though a body
holding one never gets this far): the params is looked at closer (`_suspect`)."""
_LONG_DIGITS = b"0" * 19
"""A run of digits this long might be an integer outside 64 bits (-9223372036854775809 has
19), which orjson would read as a float and the slow path refuses (schema.check_integers):
such params go to the slow path. A number starts after ":", ",", "[", whitespace or "-"
(" ", "{" or, for a raw line break, "!" here); a run right after a quote is a string such as a
19-digit id, left alone. (Other digits inside strings may look like a number: a false alarm
costs the slow path.)"""
_NUMBER_RUNS = (b" " + _LONG_DIGITS, b"{" + _LONG_DIGITS, b"!" + _LONG_DIGITS)
"""(The "!" run was found in review: a raw line break right before an integer past 64 bits
hid it, and its params, re-serialized for the line break, stored it as a float.)"""
_DIGIT_EXPONENT = b"0e"
"""A digit then an exponent letter: a number in exponent notation might overflow (`1e400`)."""
_GROUP = 16
"""Params checked together: small enough that the depth bound of a group (its brackets less
one per params) holds for params with a few containers each, large enough to amortize."""

# (`x.find(y) >= 0` rather than `y in x` throughout: CPython's bytes `in` first tries its
# operand as an int, and the TypeError it raises and clears costs more than the search.)


class RawBatch(NamedTuple):
    """A decoded batch that passed every check: the columns `encode` turns into lines.

    `spans`: when the events' text could be cut between events (`_event_texts`), each event's
    own text from just inside its event_type's opening quote to its end (its params, and its
    event_id if it has one), which `encode` copies into the line as it is (its ts too:
    `int_stamps` is then False, and not looked at).
    """

    types: list[str]
    stamps: list[int | float]
    params: list[msgspec.Raw | bytes]
    int_stamps: bool
    spans: list[bytes] | None = None


class One(NamedTuple):
    """`encode_one`'s event: its line and id, and what the Redis counters need of it."""

    line: bytes
    id: int
    event_type: str
    ts: int | float
    params: bytes


_new_one = tuple.__new__
"""`One(...)` without the Python-level `__new__` a NamedTuple has (a frame per event)."""


def user_reader(key: str) -> Callable[[msgspec.Raw | bytes], Any]:
    """A function giving `params[key]` (None if absent) of a params' JSON, as orjson reads it.

    For the Redis counters, which count unique users by `params.user_id`: msgspec decodes the
    one field and skims the rest. orjson reads an integer outside 64 bits as a float, msgspec as
    an int; the counters classify users by type, so that is mended here (and a user that is an
    array or an object, which could hold such integers, is read by orjson).
    """
    decode_user = msgspec.json.Decoder(
        msgspec.defstruct("_User", [("user", Any, None)], rename={"user": key})).decode

    def user_of(params: msgspec.Raw | bytes) -> Any:
        try:
            user = decode_user(params).user  # type: ignore[attr-defined]
        except msgspec.MsgspecError:  # (not expected: the params passed msgspec already)
            return orjson.loads(bytes(params)).get(key)
        kind = type(user)
        if kind is int and not -(2**63) <= user < 2**64:
            return float(user)
        if kind is list or kind is dict:  # (rare) it may hold such integers itself
            return orjson.loads(bytes(params)).get(key)
        return user

    return user_of


def decode(body: bytes, received_at: float, limits: EventLimits) -> RawBatch | None:
    """The batch of `body` if it is a plain JSON array of valid events, or NDJSON laid out as
    msgspec writes it (`_ndjson_written`), else None.

    None means "use the slow path", never "invalid": see the module docstring for what is
    accepted here. `received_at` is the server's receive time in UNIX seconds.
    """
    first = body[:1]
    if first == b"[":
        decode_plain, decode_keyed = _decode_events, _decode_keyed_events
    elif first == b"{" and body.find(b"\n") >= 0:
        decode_plain, decode_keyed = _decode_event_lines, _decode_keyed_lines
    else:
        return None
    lines = first == b"{"
    keyed = False
    try:
        events: list[_Event] | list[_Keyed] = decode_plain(body)
    except (msgspec.MsgspecError, RecursionError):  # (msgspec's nesting limit)
        keyed_events = _keyed(decode_keyed, body)
        if keyed_events is None or not _plain_ids(keyed_events):
            return None
        events, keyed = keyed_events, True
    count = len(events)
    if count < MIN_EVENTS or count > limits.max_events:
        return None
    types = [event.event_type for event in events]  # (cheaper than map and attrgetter)
    if not all(map(_plain_type, set(types))):
        return None
    if body.find(b"\\") >= 0:
        return None  # (see _hides_values)
    if not body.isascii() and not _utf8(body):
        return None
    ra = round_ms(received_at)
    upper = _upper_ts(ra, limits)
    stamps: list[Any] = [event.ts for event in events]
    params: list[msgspec.Raw | bytes] = [event.params for event in events]
    # msgspec gave each ts as an int, a float (neither below 0) or None (absent or null).
    try:
        high = max(stamps)  # (JSON has no NaN: it is exact)
        every_ts_sent = True
    except TypeError:  # a None among them: the slow path gives those the receive time
        stamps = [ra if ts is None else ts for ts in stamps]
        high = max(stamps)
        every_ts_sent = False
    if high > upper:
        return None
    if lines and not _ndjson_written(body, events):
        return None
    if not every_ts_sent:
        for event in events:  # (written back below: the lines carry the slow path's ts)
            if event.ts is None:
                event.ts = ra
    # (NDJSON too, though `_ndjson_written` wrote its lines already: there the line breaks
    # are what separates events, and a raw one inside a params would hide among them.)
    text = _encode_events(events)
    if not lines and text != body and _hides_values(
            body, count - list(map(is_, params, repeat(_NO_PARAMS))).count(True)):
        return None  # (when msgspec wrote back the very body, no field was given twice)
    pieces = _event_texts(text, count)
    if pieces is not None:
        verdict = _plain_params(params, limits.max_depth)
        if verdict:
            return RawBatch(types, stamps, params, False, pieces)
        if verdict is None:
            return None
        # (False: a number to look at closer, which the general checks below do)
    if keyed or lines:
        # The general way below writes no event_id: the slow path does. An NDJSON body gets
        # here with a raw line break in a params (the slow path splits that line, and says
        # why) or a number to look at closer (left to the slow path: fewer shapes here).
        return None
    int_stamps = set(map(type, stamps)) == _ONLY_INT
    checked = _checked_params(params, limits.max_depth)
    if checked is None:
        return None
    return RawBatch(types, stamps, checked, int_stamps)


_encode_events = msgspec.json.Encoder().encode


def _ndjson_written(body: bytes, events: list[_Event] | list[_Keyed]) -> bool:
    """Whether an NDJSON `body` is msgspec's writing of its decoded `events`, one per line (its
    last line break may be missing).

    The slow path reads NDJSON one line at a time, an object per line (blank lines skipped).
    msgspec's `decode_lines` is more lenient: it also takes objects side by side on a line, or
    one across lines. Only a body that is the very text msgspec writes back, each event
    compact on a line of its own, is sure to be read the same way; that also names each field
    once (no params hidden by a repeated key, see `_hides_values`) and gives every ts (a line
    without one is written back with "ts":null). Raw line breaks inside a params are written
    back as they came, and are looked for later (`_event_texts`): the slow path would split
    such a line.
    """
    written = _encode_event_lines(events)
    return written == body if body[-1:] == b"\n" else \
        len(written) == len(body) + 1 and written.startswith(body)


_BETWEEN = b'},{"event_type":"'
"""What lies between two events as msgspec writes them: the next event_type's text follows."""
_FIRST = b'[{"event_type":"'
"""What comes before the first event_type's text as msgspec writes the events."""


def _event_texts(text: bytes, count: int) -> list[bytes] | None:
    """Each event's text in `text`, msgspec's writing of the `count` decoded events, from just
    inside its event_type's opening quote to the event's end, closing brace excluded; None if
    that text holds a raw line break or a params holds the text between events.

    msgspec writes the events compactly, `[{"event_type":"T","ts":N,"params":{...}},...]` (and
    `,"event_id":"K"` last for `_Keyed` events): the fields in this order, each once, no
    whitespace between them, the ts in its shortest form; the params as they were sent (they
    are Raw). So whatever the body's layout, splitting this text between events gives each
    event's text, which becomes the rest of its segment line behind an id and received_at
    (`encode`): each event is copied, not written anew, and its fields need no formatting.
    Only a params can hold a raw line break (between its tokens), which would split the line,
    or the text between events; `decode` then takes the general way (or, for events with an
    event_id, which that way does not write, and for NDJSON, leaves the batch to the slow
    path).
    """
    if text.find(b"\n") >= 0 or text.find(b"\r") >= 0:
        return None
    pieces = text.split(_BETWEEN)
    if len(pieces) != count:
        return None
    pieces[0] = pieces[0][len(_FIRST):]
    pieces[-1] = pieces[-1][:-2]  # (}])
    return pieces


_SKELETON = bytes(
    48 if byte in b"0123456789" else 101 if byte in b"eE" else
    byte if byte in b'{["' else 32 if byte in b":," else 10 if byte == 0 else 0
    for byte in range(256))
"""What `_plain_params` keeps of params' JSON text, mapped to the classes that its checks look
at: digits to "0", exponent letters to "e", opening brackets and quotes as they are, the two
characters a number can follow (":" and ","; "[" is kept) to a space, the NUL that separates
params joined together (JSON text never holds one) to a newline."""
_NOT_SKELETON = bytes(byte for byte in range(256) if not _SKELETON[byte])
"""And what it drops: all else (letters, signs, closing brackets, whitespace, points,
non-ASCII...). Dropping bytes can join two runs of digits, or bring a digit next to an "e"
(false alarms, as digits in strings are), but it never parts what was together, nor takes
away what comes before a number (a space or a "["; its sign is dropped), so no number the
checks are for goes unseen."""
_BRACKETS = bytes(123 if byte == 91 else byte for byte in range(256))
"""Both opening brackets as "{": with the rest of the skeleton dropped (`_NOT_BRACKETS`), the
brackets of each params are one run."""
_NOT_BRACKETS = b'0e "'
_SKELETON_NUMBER_RUNS = (b" " + _LONG_DIGITS, b"[" + _LONG_DIGITS)
"""`_NUMBER_RUNS` in the skeleton: a run of 19 digits after what a number can follow."""
_BIG_EXPONENT = b"0e000"
"""An exponent of three digits or more (its sign dropped): a number orjson may find past a
double's range. With fewer, the largest is below 1e18 * 1e99, since 19 digits (before and
after the point, which is dropped) are `_LONG_DIGITS`. Other exponents are copied as they
were sent; orjson reads the same value from them as from the way it would write it."""


def _plain_params(params: list[msgspec.Raw | bytes], max_depth: int) -> bool | None:
    """Whether the params may be copied into the lines as they were sent: True; None (decline
    the batch) if one is not an object, or holds more opening brackets than `max_depth` (which
    bound its depth); False if a number in them must be looked at closer (`_checked_params`
    does, so the caller goes the general way).

    All the params at once, in their skeleton (`_SKELETON`): one join, two translates and a few
    scans in C. (Backslashes were looked for in the whole body, raw line breaks in msgspec's
    writing of the events: `_event_texts`.)
    """
    skeleton = _SEPARATOR.join(params).translate(_SKELETON, _NOT_SKELETON)
    # Every params is an object: the JSON values that open with "{" (here a string opens with
    # a quote, a number with a digit, true and false with an "e", null with nothing).
    if skeleton[:1] != b"{" or skeleton.count(b"\n{") != len(params) - 1:
        return None
    if skeleton.find(_BIG_EXPONENT) >= 0 or (
            skeleton.find(_LONG_DIGITS) >= 0 and
            any(skeleton.find(run) >= 0 for run in _SKELETON_NUMBER_RUNS)):
        return False
    # Depth. Each container opens with one bracket, so a params' brackets bound its depth
    # (brackets inside strings only loosen the bound): no params may hold a run of more.
    brackets = skeleton.translate(_BRACKETS, _NOT_BRACKETS)
    return brackets.find(b"{" * (max_depth + 1)) < 0 or None


_TYPES: dict[str, tuple[str, bytes]] = {}
"""The event types `encode_one` found plain (`_plain_type`): each with the first string of it
seen and its JSON. An application sends a few dozen types, each request one of them, so the
checks and the dumps of a type are one dict hit; and the one string stands for all the equal
ones msgspec decodes, so the Redis counters, which keep every request's type until their next
flush, hold one object with its hash computed instead of one per request. Emptied when
`_TYPES_KEPT` are held (a client inventing types cannot grow it)."""
_TYPES_KEPT = 4096


def encode_one(body: bytes, received_at: float, limits: EventLimits,
               next_id: Callable[[], int]) -> One | None:
    """The segment line of a body holding one plain event object, and its id; else None.

    The single-event request is the most common one, and every call here is a fixed cost
    paid per event, so this is `decode` and `encode` for one value, written flat (no
    helpers on the common path, the id minted by `next_id` only once the event passed).
    None, as for `decode`, only means "use the slow path".
    """
    key = b""
    try:
        event = _decode_event(body)
    except (msgspec.MsgspecError, RecursionError):  # (msgspec's nesting limit)
        keyed = _keyed(_decode_keyed_event, body)
        if keyed is None or not keyed.event_id.isprintable():  # (_plain_ids)
            return None
        event, key = keyed, b',"event_id":%b' % dumps(keyed.event_id)
    event_type = event.event_type
    known = _TYPES.get(event_type)
    if known is None:
        if not _plain_type(event_type):
            return None
        if len(_TYPES) >= _TYPES_KEPT:
            _TYPES.clear()
        known = _TYPES[event_type] = (event_type, dumps(event_type))
    event_type, type_json = known
    ra = round(received_at * 1000) / 1000  # schema.round_ms, inlined
    ts = event.ts
    if ts is None:
        ts_json = dumps(ra)
    else:
        upper = ra + limits.max_future_skew  # schema._upper_ts, inlined
        if upper > MS_THRESHOLD:
            upper = MS_THRESHOLD
        if ts > upper:  # (msgspec refused any below 0)
            return None
        ts_json = b"%d" % ts if type(ts) is int else dumps(ts)
    # (_hides_values, inlined)
    if body.find(b"\\") >= 0 or body.count(b'"params"') != (event.params is not _NO_PARAMS):
        return None
    if not body.isascii() and not _utf8(body):
        return None
    params = bytes(event.params)
    classes = params.translate(_CLASSES)
    if classes.find(_SUSPECT) >= 0 or classes.find(_DIGIT_EXPONENT) >= 0 or (
            classes.find(_LONG_DIGITS) >= 0 and _long_number(classes)):  # (_looks_suspect)
        reserialized = _reserialized([params])
        if reserialized is None:
            return None
        params = bytes(reserialized[0])
        classes = params.translate(_CLASSES)
    if classes[-1:] != b"}" or classes.count(b"{") > limits.max_depth:
        return None  # not an object, or maybe too deep (see _checked_params)
    snowflake = next_id()
    return _new_one(One, (
        b'{"id":"%d","event_type":%b,"ts":%b,"params":%b,"received_at":%b%b}\n' % (
            snowflake, type_json, ts_json, params, dumps(ra), key),
        snowflake, event_type, ra if ts is None else ts, params))


def _plain_type(event_type: str) -> bool:
    """An event_type the slow path keeps as it is: 1-256 characters, printable (stricter than
    its control-character rule; whatever this refuses, the slow path judges), nothing to
    strip. (A batch asks once per distinct event_type.)"""
    return bool(event_type) and len(event_type) <= MAX_EVENT_TYPE_CHARS and \
        event_type.isprintable() and event_type.strip() == event_type


def _keyed(decode: Callable[[bytes], _T], body: bytes) -> _T | None:
    """What `decode` (a `_Keyed` decoder) makes of a body the plain decoder refused, if the
    body names an event_id at all; else None. (Only then: the refusal is usually for
    something else, and the plain decode is the common one, so it is tried first.)"""
    if body.find(_EVENT_ID) < 0:
        return None
    try:
        return decode(body)
    except (msgspec.MsgspecError, RecursionError):  # (msgspec's nesting limit)
        return None


def _plain_ids(events: list[_Keyed]) -> bool:
    """Whether every event_id is one the slow path keeps as it is: printable (stricter than
    its control-character rule; whatever this refuses, the slow path judges). Their lengths
    msgspec checked. (One string of them all: one scan in C.)"""
    return "".join([event.event_id for event in events]).isprintable()


def _utf8(body: bytes) -> bool:
    """Whether a non-ASCII body is valid UTF-8: msgspec does not check the strings it skips,
    and orjson (the slow path, the loader) refuses invalid ones."""
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


def _checked_params(params: list[msgspec.Raw | bytes], max_depth: int
                    ) -> list[msgspec.Raw | bytes] | None:
    """The params, with any whose numbers orjson might refuse re-serialized, if every one of
    them is an object nested at most `max_depth` deep; else None.

    Groups of `_GROUP` params are looked at together: joined by NULs and mapped to `_CLASSES`,
    a few scans in C answer for the whole group.
    """
    out: list[msgspec.Raw | bytes] = []
    for start in range(0, len(params), _GROUP):
        group = params[start:start + _GROUP]
        classes = _SEPARATOR.join(group).translate(_CLASSES)
        if _looks_suspect(classes):
            reserialized = _reserialized(group)
            if reserialized is None:
                return None
            group = reserialized
            classes = _SEPARATOR.join(group).translate(_CLASSES)
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
    untouched; None if orjson refuses one, or if one may hold an integer of 19 digits or more
    (the slow path then says why, or refuses one outside 64 bits: schema.check_integers)."""
    try:
        out = []
        for p in params:
            if _suspect(p):
                if _long_number(bytes(p).translate(_CLASSES)):
                    return None
                p = orjson.dumps(orjson.loads(bytes(p)))
            out.append(p)
        return out
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):  # (encode: nesting past 255)
        return None


def _hides_values(body: bytes, params_sent: int) -> bool:
    """Whether `body` may hold a params value that msgspec skimmed and no check here saw.

    A field given twice: msgspec keeps the last value, as orjson does, but only skims the
    earlier params, and orjson, parsing the whole body in the slow path, may refuse them: e.g.
    `"params": 1e400, "params": {}`. Every params key is found by its text unless it is
    spelled with an escape, so a body with a backslash anywhere goes to the slow path; then a
    `"params"` more than the params decoded is a repeated key (or the word quoted inside a
    params: a harmless false alarm). Repeated `event_type`, `ts` and `event_id` values are
    decoded and checked by msgspec itself (a string; a number within `_Int64` or a finite
    float; a string of 1-64 characters). `decode` asks only when the body is not msgspec's own
    writing of the events, which names each field once.
    """
    return body.find(b"\\") >= 0 or body.count(b'"params"') != params_sent


def _looks_suspect(classes: bytes) -> bool:
    """Whether params mapped to `_CLASSES` may hold JSON that orjson reads differently from a
    byte copy, or refuses: then `_reserialized` looks at each of them."""
    return classes.find(_SUSPECT) >= 0 or classes.find(_DIGIT_EXPONENT) >= 0 or \
        _long_number(classes)


def _long_number(classes: bytes) -> bool:
    """Whether params mapped to `_CLASSES` may hold a number of 19 digits or more."""
    return classes.find(_LONG_DIGITS) >= 0 and any(
        classes.find(run) >= 0 for run in _NUMBER_RUNS)


def _suspect(data: msgspec.Raw | bytes) -> bool:
    """Whether one params' bytes may hold JSON that orjson reads differently or refuses.

    A raw line break (it would split the NDJSON line) or a number that might overflow a
    double. (No backslash gets this far: `_hides_values` sent such a body away, lone
    surrogate escapes with it.)
    """
    raw = bytes(data)
    if raw.find(b"\n") >= 0 or raw.find(b"\r") >= 0:
        return True
    classes = raw.translate(_CLASSES)
    return classes.find(_DIGIT_EXPONENT) >= 0 or _long_number(classes)


def encode(batch: RawBatch, ids: Sequence[int], received_at: float) -> bytes:
    """The segment lines of `batch`, the same JSON values as `schema.encode_batch` writes.

    With `spans`, the events' own text behind each id and received_at (`_spliced`). Else one
    `join` of six pieces per event, laid out with slice assignments (no Python code per event
    for the common all-int ts):

        {"id":"<head> | <3 digits>", | "event_type":"<t>","ts": | <ts>,"params": | {...}
        | ,"received_at":...}\\n
    """
    count = len(ids)
    if count != len(batch.types):
        raise ValueError(f"cannot encode batch: {len(batch.types)} events but {count} ids")
    dumps = orjson.dumps
    if batch.spans is not None:
        return _spliced(batch, ids, dumps(round_ms(received_at)))
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


def _spliced(batch: RawBatch, ids: Sequence[int], received_at: bytes) -> bytes:
    """The lines of a batch with `spans`: four pieces per event and no formatting per event.

        }\\n{"id":"<head> | <3 digits>", | "received_at":...,"event_type":" | <span>

    (the first line without the brace and newline before it, and the last one's after it).
    """
    count = len(ids)
    parts: list[bytes] = [b'"received_at":%b,"event_type":"' % received_at] * (4 * count + 1)
    parts[0:-1:4], parts[1::4] = _id_pieces(ids, b'}\n{"id":"')
    parts[3::4] = batch.spans  # type: ignore[assignment]
    parts[0] = parts[0][2:]
    parts[-1] = b"}\n"
    return b"".join(parts)
