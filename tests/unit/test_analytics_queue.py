"""The analytics queue of the SQLite store (loader/analytics/userhours.py, "Queue rows"): a
load batch is queued as per-stream id ranges, or as a list of ids when some of its rows were
stored already, and the analytics pass folds every event into the tables exactly once, whatever
the interleaving of streams, batches, replays, duplicate event_ids, passes and crashes.

Real SQLite files (tmp_path), no mock. The oracle is brute force over the events table with
the module's pure functions (summarize, pairs_of): for every whole hour before
pending_since (what readers take from the tables), the tables must hold exactly that.
"""

from __future__ import annotations

import math
import random
import sqlite3
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader.analytics import userhours
from loader.stores.sqlite import SQLiteStore
from tests.fixtures.store import make_id

MS = 1_735_000_000_000
"""A Snowflake time (2024-12-24): ids of 19 digits, the plain events' fast path."""
T0 = 1_735_000_000.0


def stream(i: int) -> int:
    return (i >> 12) & 0x3FF


# --- oracle -----------------------------------------------------------------------------------


Summaries = dict[tuple[int, str], tuple[Any, ...]]
Flows = dict[tuple[int, str, str], int]


def expected(con: sqlite3.Connection, below: int | None) -> tuple[Summaries, Flows, set[Any]]:
    """The tables computed from scratch from the events (hours < below; None: every hour)."""
    groups: dict[tuple[int, str], list[userhours.Entry]] = defaultdict(list)
    for id_, event_type, ts, user in con.execute(
            "SELECT id, event_type, ts, user_id FROM events WHERE user_id IS NOT NULL"):
        hour = math.floor(ts / 3600)
        if below is None or hour < below:
            groups[(hour, user)].append((ts, id_, event_type))
    summaries: Summaries = {}
    flows: Counter[tuple[int, str, str]] = Counter()
    events: set[Any] = set()
    for key, seq in groups.items():
        seq.sort()
        s = userhours.summarize(seq)
        summaries[key] = (s.n, s.quarters, s.first, s.last, s.firsts)
        for (a, b), n in userhours.pairs_of(seq).items():
            flows[(key[0], a, b)] += n
        events.update((*key, *e) for e in seq)
    return summaries, dict(flows), events


def actual(con: sqlite3.Connection, below: int | None) -> tuple[Summaries, Flows, set[Any]]:
    """What the tables hold (hours < below; None: every hour)."""
    top = (1 << 62) if below is None else below
    summaries: Summaries = {
        (h, u): (n, q, (fts, fid, ft), (lts, lid, lt), orjson.loads(firsts))
        for h, u, n, q, fts, fid, ft, lts, lid, lt, firsts in con.execute(
            "SELECT hour, user_id, n, quarters, first_ts, first_id, first_type, last_ts, "
            "last_id, last_type, firsts FROM user_hours WHERE hour < ?", (top,))}
    flows: Flows = {(h, a, b): n for h, a, b, n in con.execute(
        "SELECT hour, from_type, to_type, n FROM hour_flows WHERE hour < ? AND n != 0", (top,))}
    events = {tuple(r) for r in con.execute(
        "SELECT hour, user_id, ts, id, event_type FROM user_hour_events WHERE hour < ?",
        (top,))}
    return summaries, flows, events


def check_exact(store: SQLiteStore) -> None:
    """Readers' contract (userhours, "Coverage"): every whole hour before pending_since is
    exactly summarized; with nothing pending, every hour is."""
    con = store._writer
    assert con is not None
    pending = userhours.pending_since(con)
    below = None if pending is None else math.floor(pending / 3600)
    assert actual(con, below) == expected(con, below)
    # And every event not summarized yet is in an hour readers take from the events table.
    if pending is not None:
        folded = {r[0] for r in con.execute("SELECT id FROM user_hour_events")}
        waiting = [ts for i, ts in con.execute(
            "SELECT id, ts FROM events WHERE user_id IS NOT NULL") if i not in folded]
        assert below is not None and min(waiting, default=math.inf) >= below * 3600


def drain(store: SQLiteStore) -> None:
    while store.summarize_pending():
        pass
    check_exact(store)


def queue(store: SQLiteStore) -> list[tuple[str, Any]]:
    """The queue rows as ("ranges", [[lo, hi], ...]) or ("ids", [id, ...])."""
    con = store._writer
    assert con is not None
    out: list[tuple[str, Any]] = []
    for ids, ranges in con.execute("SELECT ids, ranges FROM analytics_queue ORDER BY seq"):
        if ranges is not None:
            assert ids == ""
            out.append(("ranges", orjson.loads(ranges)))
        else:
            out.append(("ids", orjson.loads(ids)))
    return out


def event(ident: int, ts: float, user: Any, event_type: str = "a",
          event_id: str | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {"id": str(ident), "event_type": event_type, "ts": ts,
                         "params": {} if user is None else {"user_id": user},
                         "received_at": ts}
    if event_id is not None:
        e["event_id"] = event_id
    return e


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = SQLiteStore(tmp_path / "events.db")
    yield s
    s.close()


# --- id_ranges ----------------------------------------------------------------------------------


_STREAMS = st.tuples(st.integers(0, 31), st.integers(0, 31))


@given(st.lists(st.tuples(st.integers(0, 2**41 - 1), _STREAMS, st.integers(0, 4095)),
                min_size=1, max_size=60),
       st.booleans())
def test_id_ranges_are_the_bounds_of_each_stream(parts: list[Any], one_dc: bool) -> None:
    ids = [(ms << 22) | ((0 if one_dc else dc) << 17) | (w << 12) | seq
           for ms, (dc, w), seq in parts]
    by_stream: dict[int, list[int]] = defaultdict(list)
    for i in ids:
        by_stream[stream(i)].append(i)
    want = [[min(v), max(v)] for _, v in sorted(by_stream.items())]
    assert userhours.id_ranges(ids) == want
    assert userhours.id_ranges(list(reversed(ids))) == want


def test_id_ranges_tell_streams_apart_in_both_byte_paths() -> None:
    ms = MS - 1_451_606_400_000
    # Workers 0-15 of datacenter 0: one byte per id tells them apart (find/rfind).
    same_high = [make_id(MS + k, 0, w, k) for k in range(5) for w in (0, 1, 15)]
    assert userhours.id_ranges(same_high) == [
        [make_id(MS, 0, w, 0), make_id(MS + 4, 0, w, 4)] for w in (0, 1, 15)]
    # Worker 16 or another datacenter differ in the upper bits: the grouping loop.
    for other in ((0, 16), (1, 0), (31, 31)):
        ids = [make_id(MS + k, *key, k) for k in range(3) for key in ((0, 0), other)]
        got = userhours.id_ranges(ids)
        assert sorted(map(tuple, got)) == sorted(
            (make_id(MS, *key, 0), make_id(MS + 2, *key, 2)) for key in ((0, 0), other))
    assert userhours.id_ranges([]) == []
    assert userhours.id_ranges([ms << 22]) == [[ms << 22, ms << 22]]


# --- the queue rows -----------------------------------------------------------------------------


def test_new_rows_are_queued_as_one_range_per_stream(store: SQLiteStore) -> None:
    # Two workers minting in the same milliseconds: their ids interleave in value.
    batch = [event(make_id(MS + k, 0, w, k), T0 + k, f"u{k % 3}") for k in range(10)
             for w in (1, 2)]
    batch.append(event(make_id(MS + 3, 0, 1, 99), T0 + 3, "u1", event_id="e-1"))  # not plain
    assert store.insert_batch(batch) == 21
    assert queue(store) == [("ranges", [[make_id(MS, 0, 1, 0), make_id(MS + 9, 0, 1, 9)],
                                        [make_id(MS, 0, 2, 0), make_id(MS + 9, 0, 2, 9)]])]
    drain(store)
    con = store._writer
    assert con is not None
    assert con.execute("SELECT SUM(n) FROM user_hours").fetchone()[0] == 21


def test_interleaving_streams_in_unequal_batches_are_each_counted_once(
        store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fast and a slow worker: each batch covers a different stretch of time of each, so a
    range over all of a batch's ids would take in the other stream's rows of earlier batches;
    per-stream ranges take in nothing but the batch's own."""
    fast = [event(make_id(MS + k * 10, 0, 0, 0), T0 + k * 60, f"u{k % 4}", "ab"[k % 2])
            for k in range(300)]
    slow = [event(make_id(MS + k * 100 + 5, 0, 1, 0), T0 + k * 600, f"u{k % 4}", "c")
            for k in range(30)]
    folded: list[int] = []
    real = userhours.apply_batch

    def apply_batch(con: sqlite3.Connection, rows: Any) -> None:
        rows = list(rows)
        folded.extend(r[0] for r in rows)
        real(con, rows)

    monkeypatch.setattr(userhours, "apply_batch", apply_batch)
    at_fast = at_slow = 0
    for i in range(10):
        store.insert_batch(fast[at_fast:at_fast + 30] + slow[at_slow:at_slow + 3 * (i % 2)])
        at_fast += 30
        at_slow += 3 * (i % 2)
        assert queue(store)[-1][0] == "ranges"
        if i % 3 == 2:
            store.summarize_pending(max_batches=2)
            check_exact(store)
    store.insert_batch(slow[at_slow:])
    drain(store)
    # Each event was read back once: the ranges named nothing but their batches' rows.
    assert sorted(folded) == sorted(int(e["id"]) for e in fast + slow)


def test_a_batch_with_rows_already_stored_lists_its_new_ids(store: SQLiteStore) -> None:
    old = [event(make_id(MS + k, 0, 0, 0), T0 + k, "u") for k in range(0, 10, 2)]
    assert store.insert_batch(old) == 5
    store.summarize_pending()
    # A replay of the old rows with new ones between them: a range would span the old ones.
    mixed = [event(make_id(MS + k, 0, 0, 0), T0 + k, "u") for k in range(10)]
    assert store.insert_batch(mixed) == 5
    assert queue(store) == [("ids", [make_id(MS + k, 0, 0, 0) for k in range(1, 10, 2)])]
    drain(store)


def test_a_retried_event_id_is_skipped_and_its_batch_still_counted_once(
        store: SQLiteStore) -> None:
    first = [event(make_id(MS + k, 0, 0, 0), T0 + k, "u", event_id=f"k{k}") for k in range(5)]
    assert store.insert_batch(first) == 5
    # The client retried k3 and k4 (new Snowflakes), among events that are new.
    retry = [event(make_id(MS + 10 + k, 0, 0, 0), T0 + 10 + k, "u",
                   event_id=f"k{k}" if k >= 3 else None) for k in range(6)]
    assert store.insert_batch(retry) == 4
    kinds = [kind for kind, _ in queue(store)]
    assert kinds == ["ranges", "ids"]
    drain(store)
    con = store._writer
    assert con is not None
    assert con.execute("SELECT SUM(n) FROM user_hours").fetchone()[0] == 9


def test_a_replay_after_a_crash_between_load_and_pass_counts_each_event_once(
        tmp_path: Path) -> None:
    events = [event(make_id(MS + k // 2, 0, k % 2, k), T0 + (k * 37) % 5000, f"u{k % 5}",
                    "abc"[k % 3]) for k in range(200)]
    store = SQLiteStore(tmp_path / "events.db")
    for i in range(0, 120, 40):
        store.insert_batch(events[i:i + 40])
    store.summarize_pending(max_batches=1)
    store.close()  # kill -9 after the commits: two batches queued, one summarized
    store = SQLiteStore(tmp_path / "events.db")
    try:
        assert [kind for kind, _ in queue(store)] == ["ranges", "ranges"]
        check_exact(store)
        # The positions were lost (a store from before loader_position): everything again.
        for i in range(0, 200, 40):
            store.insert_batch(events[i:i + 40])
        assert [kind for kind, _ in queue(store)] == ["ranges", "ranges", "ranges", "ranges"]
        store.summarize_pending(max_batches=1)
        check_exact(store)
        drain(store)
        con = store._writer
        assert con is not None
        assert con.execute("SELECT SUM(n) FROM user_hours").fetchone()[0] == 200
    finally:
        store.close()


def test_an_id_inside_an_older_range_is_counted_once(store: SQLiteStore) -> None:
    """A worker restarted with its clock stepped back mints ids inside a range already queued:
    two rows name the event, in one pass (folded once: the pass gathers rows by id) or in two
    (the second skips it: apply_batch ignores events user_hour_events holds)."""
    def at(k: int, event_type: str = "a") -> dict[str, Any]:
        return event(make_id(MS + k, 0, 0, 0), T0 + k, "u", event_type)

    store.insert_batch([at(0), at(10, "b"), at(20)])
    store.insert_batch([at(5, "c")])  # inside the queued range [MS, MS + 20]
    assert queue(store) == [("ranges", [[make_id(MS, 0, 0, 0), make_id(MS + 20, 0, 0, 0)]]),
                            ("ranges", [[make_id(MS + 5, 0, 0, 0)] * 2])]
    assert store.summarize_pending(max_batches=2) == 2  # both rows in one pass
    check_exact(store)
    store.insert_batch([at(30), at(40)])
    store.insert_batch([at(35, "c")])
    assert store.summarize_pending(max_batches=1) == 1  # [30, 40], with 35 in it
    check_exact(store)
    assert store.summarize_pending(max_batches=1) == 1  # 35's own row: folded already
    drain(store)
    con = store._writer
    assert con is not None
    assert con.execute("SELECT SUM(n) FROM user_hours").fetchone()[0] == 7


def test_a_queue_from_before_ranges_is_read_and_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    events = [event(make_id(MS + k, 0, 0, 0), T0 + k, "u") for k in range(6)]
    store = SQLiteStore(path)
    store.insert_batch(events)
    con = store._writer
    assert con is not None
    # What an older loader left: the table without `ranges`, a row listing ids.
    con.execute("DROP TABLE analytics_queue")
    con.execute("CREATE TABLE analytics_queue (seq INTEGER PRIMARY KEY, min_ts REAL NOT NULL, "
                "ids TEXT NOT NULL)")
    con.execute("INSERT INTO analytics_queue (min_ts, ids) VALUES (?, ?)",
                (T0, orjson.dumps([int(e["id"]) for e in events]).decode()))
    store.close()
    store = SQLiteStore(path)
    try:
        assert queue(store) == [("ids", [int(e["id"]) for e in events])]
        store.insert_batch([event(make_id(MS + 9, 0, 0, 0), T0 + 9, "u")])
        assert [kind for kind, _ in queue(store)] == ["ids", "ranges"]
        drain(store)
    finally:
        store.close()


def test_older_versions_fail_on_a_range_row_rather_than_skip_its_events(
        store: SQLiteStore) -> None:
    """The reason `ids` is '' in a range row: a pass from before ranges reads it with
    json_each, which refuses it (the pass is retried; readers use the events table)."""
    store.insert_batch([event(make_id(MS, 0, 0, 0), T0, "u")])
    con = store._writer
    assert con is not None
    (ids,) = con.execute("SELECT ids FROM analytics_queue").fetchone()
    with pytest.raises(sqlite3.OperationalError, match="malformed JSON"):
        con.execute("SELECT * FROM json_each(?)", (ids,)).fetchall()


def test_plain_ids_with_leading_zeros_are_bound_and_queued_as_their_numbers(
        store: SQLiteStore) -> None:
    batch = [event(0, T0, "u"), event(0, T0 + 1, "u")]
    batch[0]["id"], batch[1]["id"] = "0" * 17 + "42", "0" * 16 + "420"
    assert store.insert_batch(batch) == 2
    con = store._writer
    assert con is not None
    assert con.execute("SELECT id FROM events ORDER BY id").fetchall() == [(42,), (420,)]
    assert queue(store) == [("ranges", [[42, 420]])]
    drain(store)


# --- everything at once -----------------------------------------------------------------------


def _scenario(rng: random.Random) -> tuple[list[dict[str, Any]], list[tuple[str, Any]]]:
    """Events of 1-3 streams (a datacenter or worker >= 16 among them at times) whose ids
    interleave, and a sequence of loads (in-order chunks, replays, shuffled subsets, retried
    event_ids), passes of 1-3 queue rows, and reopenings of the store."""
    keys = rng.sample([(0, 0), (0, 1), (0, 2), (0, 17), (3, 4)], rng.randint(1, 3))
    events: list[dict[str, Any]] = []
    for dc, worker in keys:
        ms = MS + rng.randrange(50)
        for k in range(rng.randint(5, 60)):
            ms += rng.randrange(3)
            user = rng.choice([None, "u1", "u2", "u3", 7])
            event_id = rng.choice([None, None, None, "k1", "k2", f"x{dc}-{worker}-{k}"])
            events.append(event(make_id(ms, dc, worker, k), T0 + rng.uniform(0, 4 * 3600),
                                user, rng.choice("abcd"), event_id))
    ops: list[tuple[str, Any]] = []
    by_stream: dict[int, list[int]] = defaultdict(list)
    for i, e in enumerate(events):
        by_stream[stream(int(e["id"]))].append(i)
    cursors = dict.fromkeys(by_stream, 0)
    for _ in range(rng.randint(3, 12)):
        roll = rng.random()
        if roll < 0.45:  # the loader: the next chunk of each stream, in file order
            batch = []
            for s, idx in by_stream.items():
                n = rng.randint(0, 15)
                batch += idx[cursors[s]:cursors[s] + n]
                cursors[s] += n
            ops.append(("load", batch))
        elif roll < 0.6:  # anything at all, loaded or not, in any order
            ops.append(("load", rng.sample(range(len(events)), rng.randint(1, len(events)))))
        elif roll < 0.85:
            ops.append(("pass", rng.randint(1, 3)))
        else:
            ops.append(("reopen", None))
    ops.append(("load", list(range(len(events)))))
    return events, ops


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_any_interleaving_of_loads_passes_and_crashes_counts_each_event_once(
        tmp_path_factory: pytest.TempPathFactory, seed: int) -> None:
    rng = random.Random(seed)
    events, ops = _scenario(rng)
    path = tmp_path_factory.mktemp("queue") / "events.db"
    store = SQLiteStore(path)
    try:
        for op, arg in ops:
            if op == "load":
                store.insert_batch([events[i] for i in arg])
            elif op == "pass":
                store.summarize_pending(max_batches=arg)
            else:
                store.close()
                store = SQLiteStore(path)
            check_exact(store)
        drain(store)
        con = store._writer
        assert con is not None
        (with_user,) = con.execute(
            "SELECT COUNT(*) FROM events WHERE user_id IS NOT NULL").fetchone()
        assert con.execute("SELECT COALESCE(SUM(n), 0) FROM user_hours").fetchone()[0] == (
            with_user)
    finally:
        store.close()
