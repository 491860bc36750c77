"""The tailer: whole lines only, stream order, rotation and deletion races."""

from __future__ import annotations

import gc
import math
import os
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.storage.segment import segment_name
from loader.checkpoint import Position
from loader.daemon import gc_paused, parse_json, parse_lines
from loader.tailer import Tailer, scan
from tests.fakes import FakeClock
from tests.fixtures.store import StreamWriter, event_line, seal


def ids(lines: list[bytes]) -> list[str]:
    return [orjson.loads(line)["id"] for line in lines]


def make(tmp_path: Path) -> tuple[Tailer, FakeClock, Path]:
    clock = FakeClock()
    directory = tmp_path / "segments"
    directory.mkdir()
    return Tailer(directory, clock), clock, directory


def test_reads_sealed_segments_of_a_stream_in_order(tmp_path: Path) -> None:
    tailer, _, d = make(tmp_path)
    w = StreamWriter(d)
    first, second = w.events(3), w.events(2)
    w.write(second)  # created out of order on purpose: names, not creation, give the order
    w.write(first)
    batch = tailer.read({}, 100)
    assert ids(batch.lines) == [e["id"] for e in first + second]
    end = Position(int(second[0]["id"]), sum(len(event_line(e)) for e in second))
    assert batch.positions == {(0, 0): end}


def test_max_lines_and_positions_resume_exactly(tmp_path: Path) -> None:
    tailer, _, d = make(tmp_path)
    w = StreamWriter(d)
    events = w.events(10)
    w.write(events)
    positions: dict = {}
    seen: list[str] = []
    while True:
        batch = tailer.read(positions, 3)
        if not batch.lines:
            break
        assert len(batch.lines) <= 3
        seen += ids(batch.lines)
        positions = batch.positions
    assert seen == [e["id"] for e in events]
    assert positions[(0, 0)].offset == sum(len(event_line(e)) for e in events)


def test_never_returns_a_partial_line_of_an_open_segment(tmp_path: Path) -> None:
    tailer, clock, d = make(tmp_path)
    w = StreamWriter(d)
    events = w.events(3)
    path = d / segment_name(int(events[0]["id"]), sealed=False)
    whole = event_line(events[0]) + event_line(events[1])
    third = event_line(events[2])
    path.write_bytes(whole + third[:10])
    batch = tailer.read({}, 100)
    assert ids(batch.lines) == [events[0]["id"], events[1]["id"]]
    assert batch.positions[(0, 0)].offset == len(whole)
    # Still half a line: nothing new, the position does not move.
    clock.advance(5)
    again = tailer.read(batch.positions, 100)
    assert again.lines == [] and again.positions == batch.positions
    with open(path, "ab") as f:
        f.write(third[10:])
    done = tailer.read(batch.positions, 100)
    assert ids(done.lines) == [events[2]["id"]]
    assert done.positions[(0, 0)].offset == len(whole + third)


def test_open_segment_sealed_between_reads_continues_at_the_same_offset(tmp_path: Path) -> None:
    tailer, _, d = make(tmp_path)
    w = StreamWriter(d)
    a, b = w.events(4), w.events(2)
    path = w.write(a[:2], sealed=False)
    first = tailer.read({}, 100)  # the listing now says "open"
    assert ids(first.lines) == [a[0]["id"], a[1]["id"]]
    with open(path, "ab") as f:
        f.write(b"".join(event_line(e) for e in a[2:]))
    seal(path)  # renamed behind the tailer's back; its cached listing is stale
    w.write(b)
    rest = tailer.read(first.positions, 100)
    assert ids(rest.lines) == [e["id"] for e in a[2:] + b]


def test_rename_during_a_read_keeps_reading_the_same_file(tmp_path: Path) -> None:
    tailer, _, d = make(tmp_path)
    w = StreamWriter(d)
    events = w.events(5)
    path = w.write(events, sealed=False)
    fd = os.open(path, os.O_RDONLY)  # what the tailer holds while a rename happens
    try:
        seal(path)
        assert os.pread(fd, 10_000, 0) == b"".join(event_line(e) for e in events)
    finally:
        os.close(fd)
    assert ids(tailer.read({}, 100).lines) == [e["id"] for e in events]


def test_new_segments_are_picked_up_without_a_new_tailer(tmp_path: Path) -> None:
    tailer, clock, d = make(tmp_path)
    w = StreamWriter(d)
    w.write(w.events(2))
    batch = tailer.read({}, 100)
    assert len(batch.lines) == 2
    later = w.events(3)
    w.write(later)
    clock.advance(0.1)
    assert ids(tailer.read(batch.positions, 100).lines) == [e["id"] for e in later]


def test_a_new_stream_is_picked_up(tmp_path: Path) -> None:
    tailer, clock, d = make(tmp_path)
    w0 = StreamWriter(d)
    w0.write(w0.events(2))
    batch = tailer.read({}, 100)
    w7 = StreamWriter(d, worker=7)
    events = w7.events(3)
    w7.write(events)
    clock.advance(2)
    more = tailer.read(batch.positions, 100)
    assert ids(more.lines) == [e["id"] for e in events]
    assert set(more.positions) == {(0, 0), (0, 7)}


def test_streams_keep_their_own_positions(tmp_path: Path) -> None:
    tailer, _, d = make(tmp_path)
    w1, w2 = StreamWriter(d, worker=1), StreamWriter(d, worker=2)
    e1a = w1.events(2)
    e2a = w2.events(2)
    e1b = w1.events(2)
    for evs, w in ((e1a, w1), (e2a, w2), (e1b, w1)):
        w.write(evs)
    seen = ids(tailer.read({}, 100).lines)
    assert sorted(seen) == sorted(e["id"] for e in e1a + e2a + e1b)
    # Within a stream, id order; the streams' relative order is free.
    stream1 = [i for i in seen if i in {e["id"] for e in e1a + e1b}]
    assert stream1 == [e["id"] for e in e1a + e1b]


def test_sealed_segment_fully_read_moves_to_the_next(tmp_path: Path) -> None:
    tailer, clock, d = make(tmp_path)
    w = StreamWriter(d)
    first = w.events(2)
    w.write(first)
    batch = tailer.read({}, 100)
    nxt = w.events(1)
    w.write(nxt, sealed=False)
    clock.advance(2)
    batch = tailer.read(batch.positions, 100)
    assert ids(batch.lines) == [nxt[0]["id"]]
    assert batch.positions[(0, 0)].segment == int(nxt[0]["id"])


def test_vanished_segment_is_skipped_only_when_a_later_one_exists(tmp_path: Path) -> None:
    tailer, clock, d = make(tmp_path)
    w = StreamWriter(d)
    gone = w.write(w.events(2))
    pos = {(0, 0): Position(int(gone.name[:20]), 0)}
    gone.unlink()
    stuck = tailer.read(pos, 100)
    assert stuck.lines == [] and stuck.positions == pos
    later = w.events(2)
    w.write(later)
    clock.advance(2)
    moved = tailer.read(pos, 100)
    assert ids(moved.lines) == [e["id"] for e in later]
    assert tailer.skipped_segments == 1


def test_sealed_segment_without_final_newline_yields_its_tail(tmp_path: Path) -> None:
    tailer, _, d = make(tmp_path)
    w = StreamWriter(d)
    events = w.events(2)
    path = d / segment_name(int(events[0]["id"]), sealed=True)
    path.write_bytes(event_line(events[0]) + event_line(events[1]).rstrip(b"\n"))
    batch = tailer.read({}, 100)
    assert ids(batch.lines) == [e["id"] for e in events]
    assert batch.positions[(0, 0)].offset == path.stat().st_size


def test_scan_ignores_other_files_and_prefers_the_sealed_name(tmp_path: Path) -> None:
    _, _, d = make(tmp_path)
    w = StreamWriter(d)
    events = w.events(1)
    (d / segment_name(int(events[0]["id"]), sealed=False)).write_bytes(event_line(events[0]))
    (d / segment_name(int(events[0]["id"]), sealed=True)).write_bytes(event_line(events[0]))
    (d / "notes.txt").write_text("x")
    (d / "123.ndjson").write_text("x")
    listing = scan(d)
    assert list(listing) == [(0, 0)]
    assert [(r.first_id, r.sealed) for r in listing[(0, 0)]] == [(int(events[0]["id"]), True)]


def test_backlog_counts_bytes_after_the_position(tmp_path: Path) -> None:
    tailer, _, d = make(tmp_path)
    w = StreamWriter(d)
    a = w.write(w.events(3))
    b = w.write(w.events(2), sealed=False)
    tailer.refresh()
    pos = {(0, 0): Position(int(a.name[:20]), 10)}
    assert tailer.backlog(pos) == {(0, 0): a.stat().st_size - 10 + b.stat().st_size}


def test_parse_lines_skips_and_counts_what_is_not_an_event() -> None:
    good = event_line({"id": "42", "event_type": "a", "ts": 1.5, "params": {},
                       "received_at": 2.0}).rstrip(b"\n")
    lines = [good, b"", b"{not json", b"[1, 2]", b'{"id": "x", "event_type": "a", "ts": 1}',
             b'{"id": "1", "event_type": 5, "ts": 1}', b'{"id": "1", "event_type": "a"}']
    events, bad = parse_lines(lines)
    assert [e["id"] for e in events] == ["42"]
    assert bad == 5


def line(**fields: object) -> bytes:
    event: dict[str, object] = {"id": "1058897343283200000", "event_type": "a", "ts": 1.5,
                                "params": {"user_id": 1}, "received_at": 2.0}
    event.update(fields)
    return orjson.dumps({k: v for k, v in event.items() if v is not ...})


def test_parse_lines_accepts_events_with_any_optional_field_shape() -> None:
    lines = [line(), line(id=7), line(id="0"), line(ts=3), line(params=None), line(params=...),
             line(received_at=...), line(received_at=None), line(event_id="k", sent_at=4),
             line(event_id=None, sent_at=None), line(client_ts=5.5),
             line(id=str(2**63 - 1)), line(ts=253_402_300_799.5)]
    events, bad = parse_lines(lines)
    assert (len(events), bad) == (len(lines), 0)


def test_parse_lines_rejects_what_a_store_would_fail_on_at_every_retry() -> None:
    # Each of these would make the insert raise (or lose the row) on every retry of the
    # batch, wedging the loader: they are counted and skipped instead.
    lines = [line(id="\u0661\u0662"),  # Arabic-Indic digits: isdigit() yet not SQL integers
             line(id=str(2**63)), line(id="9" * 20), line(id=-1), line(id=2**63), line(id=""),
             line(id=True), line(event_type=None), line(ts=True), line(ts="1"), line(ts=-1),
             line(ts=253_402_300_800), line(ts=2**64 - 1), line(params=[1]),
             line(received_at="now"), line(received_at=2**63), line(event_id=5),
             line(sent_at="x"), line(sent_at=False)]
    events, bad = parse_lines(lines)
    assert (events, bad) == ([], len(lines))


def test_parse_json_takes_each_line_alone_when_one_is_not_json() -> None:
    assert parse_json([b"{}", b"[1]"]) == ([{}, [1]], 0)
    assert parse_json([b"{}", b"  ", b"{x", b"2"]) == ([{}, 2], 1)  # blank: not bad


def one_by_one(lines: list[bytes]) -> tuple[list[object], int]:
    """What parse_json must return: each line parsed alone, blank lines skipped, the other
    lines that do not parse counted."""
    values, bad = [], 0
    for raw in lines:
        try:
            values.append(orjson.loads(raw))
        except orjson.JSONDecodeError:
            bad += bool(raw.strip())
    return values, bad


def test_parse_json_of_a_whole_batch_equals_parsing_each_line() -> None:
    lines = [line(), line(params={"k": [1, {"a": None}], "s": "\u00e9\n\"\\"}), b"[1]",
             b'"x"', b"3.5", b"null", b" {} ", b"{}\r"]
    assert parse_json(lines) == one_by_one(lines) == ([orjson.loads(x) for x in lines], 0)
    assert parse_json([]) == ([], 0)
    # At orjson's depth limit alone, over it inside an array: parsed line by line.
    values, bad = parse_json([b"[" * 1024 + b"]" * 1024, *lines])
    assert (values[1:], bad) == one_by_one(lines)
    depth, value = 0, values[0]
    while value:
        depth, value = depth + 1, value[0]
    assert (depth, value) == (1023, [])
    for extra in ([b""], [b"  "], [b"{x"], [line()[:-7]], [b"1,2"], [b"\xff"],
                  [b"{}{}"], [b'{"a":[1'], [b"1 2"]):
        for at in (0, 3, len(lines)):
            mixed = lines[:at] + extra + lines[at:]
            assert parse_json(mixed) == one_by_one(mixed), mixed


def test_parse_json_parses_a_batch_of_good_lines_in_one_call(monkeypatch: Any) -> None:
    calls: list[bytes] = []
    real = orjson.loads

    def loads(data: bytes) -> Any:
        calls.append(data)
        return real(data)

    monkeypatch.setattr(orjson, "loads", loads)  # as loader.daemon calls it
    assert parse_json([b"{}", b"[1]", b"2"]) == ([{}, [1], 2], 0)
    assert calls == [b"[{},[1],2]"]
    calls.clear()
    assert parse_json([b"{}", b"{x", b"2"]) == ([{}, 2], 1)
    assert calls == [b"[{},{x,2]", b"{}", b"{x", b"2"]


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3),
    max_leaves=8)
# Lines as a crash or a hand edit can leave them (torn, blank, not JSON); none of them
# closes more brackets than it opens, or opens a string it does not close, so no two of
# them can add up to valid JSON values across the commas of a batch.
_broken = st.sampled_from([b"", b"   ", b"{x", b"\xff\xfe", b'{"id":"1","params":{"a":[1',
                           b'{"id":"10', b"nul", b"[", b"{", b"1,2", b"{}{}", b'"a",1'])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_json.map(orjson.dumps), _broken), max_size=12))
def test_parse_json_agrees_with_parsing_line_by_line(lines: list[bytes]) -> None:
    assert parse_json(lines) == one_by_one(lines)


def test_gc_paused_restores_the_collector_whatever_happens() -> None:
    assert gc.isenabled()
    try:
        with gc_paused():
            assert not gc.isenabled()
            raise KeyError("boom")
    except KeyError:
        pass
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # it was off before: left off
    finally:
        gc.enable()


def test_each_busy_stream_gets_its_share_of_a_batch(tmp_path: Path) -> None:
    tailer, _, d = make(tmp_path)
    writers = [StreamWriter(d, worker=w) for w in (1, 2, 3)]
    for w in writers[:2]:
        w.write(w.events(50))
    writers[2].write(writers[2].events(4))
    batch = tailer.read({}, 30)
    # 10 lines each at first; the room left by the stream that had 4 goes to the others.
    assert batch.streams[(0, 3)] == 4
    assert sorted(batch.streams.values()) == [4, 13, 13]
    assert len(batch.lines) == 30
    again = tailer.read(batch.positions, 1000)
    assert len(again.lines) == 100 + 4 - 30  # nothing lost or read twice


def test_a_segment_missing_from_one_listing_is_not_skipped(tmp_path: Path,
                                                           monkeypatch: Any) -> None:
    # A directory read concurrent with a seal's rename can miss the segment under both
    # names, while it lists the next one, created before the seal. The stream must not move
    # from X to Z past the Y that one listing missed (an audit lost 4 of 680 segments so).
    import loader.tailer as tailer_module

    tailer, clock, d = make(tmp_path)
    w = StreamWriter(d)
    x, y, z = w.events(3), w.events(2), w.events(1)
    w.write(x)
    y_path = w.write(y)
    w.write(z, sealed=False)
    real_scan = tailer_module.scan
    calls = []

    def scan_missing_y_once(directory: Path) -> dict:
        calls.append(1)
        listing = real_scan(directory)
        if len(calls) == 1:
            listing[(0, 0)] = [r for r in listing[(0, 0)] if r.name() != y_path.name]
        return listing

    monkeypatch.setattr(tailer_module, "scan", scan_missing_y_once)
    batch = tailer.read({}, 100)
    assert ids(batch.lines) == [e["id"] for e in x + y + z]


def test_an_old_backlog_is_not_listed_again_per_segment(tmp_path: Path,
                                                        monkeypatch: Any) -> None:
    # The confirming listing is for the head of a stream: moving through sealed segments
    # written long before the listing costs no listing each (thousands of them would).
    import loader.tailer as tailer_module

    tailer, clock, d = make(tmp_path)
    w = StreamWriter(d)
    paths = [w.write(w.events(2)) for _ in range(20)]
    old = clock.time() - 2 * tailer_module.CONFIRM_WINDOW
    for path in paths:
        os.utime(path, (old, old))
    real_scan = tailer_module.scan
    calls = []
    monkeypatch.setattr(tailer_module, "scan", lambda directory: calls.append(1) or
                        real_scan(directory))
    batch = tailer.read({}, 1000)
    assert len(batch.lines) == 40
    assert len(calls) <= 2


def test_scan_keeps_a_segment_renamed_while_it_is_listed(tmp_path: Path,
                                                        monkeypatch: Any) -> None:
    # The name was read, then the seal renamed the file before its stat: still listed.
    _, _, d = make(tmp_path)
    w = StreamWriter(d)
    events = w.events(2)
    w.write(events, sealed=False)
    real_scandir = os.scandir

    class Renamed:
        def __init__(self, entry: Any) -> None:
            self.name = entry.name

        def stat(self) -> os.stat_result:
            raise FileNotFoundError(self.name)

    monkeypatch.setattr(os, "scandir", lambda p: [Renamed(e) for e in real_scandir(p)])
    listing = scan(d)
    assert [r.first_id for r in listing[(0, 0)]] == [int(events[0]["id"])]
    # Finite: the loader's lag_seconds is computed from it (inf broke /metrics with a 500).
    assert math.isfinite(listing[(0, 0)][0].mtime)


def test_a_segment_missing_from_two_listings_in_a_row_is_not_skipped(
        tmp_path: Path, monkeypatch: Any) -> None:
    # Y created while one listing ran and sealed while the next ran: two listings in a row
    # can miss it; a third, after both, cannot.
    import loader.tailer as tailer_module

    tailer, _, d = make(tmp_path)
    w = StreamWriter(d)
    x, y, z = w.events(3), w.events(2), w.events(1)
    w.write(x)
    y_path = w.write(y)
    w.write(z, sealed=False)
    real_scan = tailer_module.scan
    calls = []

    def scan_missing_y(directory: Path) -> dict:
        listing = real_scan(directory)
        listing[(0, 0)] = [r for r in listing[(0, 0)] if r.name() != y_path.name]
        return listing

    real_listdir = os.listdir

    def listdir_missing_y_once(directory: Any) -> list[str]:
        calls.append(1)
        names = real_listdir(directory)
        return [n for n in names if n != y_path.name] if len(calls) == 1 else names

    monkeypatch.setattr(tailer_module, "scan", scan_missing_y)  # the listing, and ...
    monkeypatch.setattr(os, "listdir", listdir_missing_y_once)  # ... the first confirmation
    x_read = {(0, 0): Position(int(x[0]["id"]), sum(len(event_line(e)) for e in x))}
    batch = tailer.read(x_read, 100)
    assert ids(batch.lines) == [e["id"] for e in y + z]
    assert len(calls) >= 2  # (the move from Y to Z is confirmed too)


def test_a_first_segment_missing_from_the_first_listing_is_not_skipped(
        tmp_path: Path, monkeypatch: Any) -> None:
    import loader.tailer as tailer_module

    tailer, _, d = make(tmp_path)
    w = StreamWriter(d)
    first, second = w.events(2), w.events(1)
    first_path = w.write(first)
    w.write(second, sealed=False)
    real_scan = tailer_module.scan
    calls = []

    def scan_missing_first_once(directory: Path) -> dict:
        calls.append(1)
        listing = real_scan(directory)
        if len(calls) == 1:
            listing[(0, 0)] = [r for r in listing[(0, 0)] if r.name() != first_path.name]
        return listing

    monkeypatch.setattr(tailer_module, "scan", scan_missing_first_once)
    batch = tailer.read({}, 100)
    assert ids(batch.lines) == [e["id"] for e in first + second]
