"""The kept counts (buffer/counts.py, schema v4) against a full count, after random operations.

``status``, the checkpoint and metrics no longer scan the events table: they read counts that
every write keeps in its own transaction, and low marks from which one short index walk finds
each device's oldest unsent event and lowest unconfirmed seq. This drives a real buffer file
through random appends (some making room at the size cap), claims, PUBACKs (some for rows no
longer in flight), releases, holds, verdicts, prunes and reopens, and after every step compares
what is kept with what a ``GROUP BY`` over the events says.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import sqlite3
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from buffer import schema
from buffer.counts import COLUMNS, Tally
from buffer.rows import OutgoingEvent
from buffer.stats import read_figures, read_stats, scan_figures
from buffer.store import Buffer, BufferFullError, NewEvent

DEVICES = ("dock", "gate", "belt", "acc")
ACCEPTED = frozenset({"acc"})


def event(device: str, n: int, rng: random.Random) -> NewEvent:
    pad = "x" * rng.randrange(0, 300)
    droppable = device == "belt" or (device == "gate" and rng.random() < 0.3)

    def render(seq: int) -> bytes:
        return json.dumps({"d": device, "n": n, "seq": seq, "pad": pad}).encode()

    return NewEvent(f"{device}-{n}", device, "t", "t", droppable, render)


def check(path: Path, buf: Buffer | None) -> None:
    """Everything kept equals a full count; the low marks are below what they bound."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        columns = ", ".join(COLUMNS)
        kept = {
            row[0]: list(row[1:])
            for row in conn.execute(f"SELECT device, {columns}, payload_bytes FROM devices")
        }
        counted = {
            row[0]: list(row[1:])
            for row in conn.execute(
                "SELECT device, count(*) FILTER (WHERE state < 2),"
                " count(*) FILTER (WHERE state = 2 AND droppable = 0),"
                " count(*) FILTER (WHERE state = 2 AND droppable = 1),"
                " count(*) FILTER (WHERE state = 3), count(*) FILTER (WHERE state = 4),"
                " sum(length(payload)) FROM events GROUP BY device"
            )
        }
        assert {d: v for d, v in kept.items() if any(v)} == counted
        assert dict(
            conn.execute("SELECT state, events FROM unsent_states WHERE events <> 0")
        ) == dict(conn.execute("SELECT state, count(*) FROM events WHERE state < 2 GROUP BY state"))
        assert (
            buf is None
            or buf.stored_bytes
            == conn.execute("SELECT coalesce(sum(length(payload)), 0) FROM events").fetchone()[0]
        )
        for device, unsent_from, unsettled_from in conn.execute(
            "SELECT device, unsent_from, unsettled_from FROM devices"
        ).fetchall():
            first_unsent, first_unsettled = conn.execute(
                "SELECT min(seq) FILTER (WHERE state < 2),"
                " min(seq) FILTER (WHERE droppable = 0 AND state <= 2)"
                " FROM events WHERE device = ?",
                (device,),
            ).fetchone()
            assert first_unsent is None or unsent_from <= first_unsent
            assert first_unsettled is None or unsettled_from <= first_unsettled
        now = time.time()
        kept_stats = read_figures(conn, now, awaiting_verdict=ACCEPTED)
        scanned = scan_figures(conn, now, ACCEPTED)
        scanned.oldest_unsent_age_s = kept_stats.oldest_unsent_age_s  # set by read_figures
        for dev in scanned.devices.values():
            dev.dropped_events = kept_stats.devices[dev.device].dropped_events
            dev.dropped_ranges = kept_stats.devices[dev.device].dropped_ranges
        assert kept_stats.as_dict() == scanned.as_dict()
        ages = [d.oldest_pending_age_s for d in scanned.devices.values()]
        assert kept_stats.oldest_unsent_age_s == max(
            (a for a in ages if a is not None), default=None
        )


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_kept_counts_equal_a_full_count_after_random_operations(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    path = tmp_path / "b.db"

    async def open_buffer() -> Buffer:
        return await Buffer.open(path, max_bytes=40_000, keep_unconfirmed=ACCEPTED)

    buf = await open_buffer()
    claimed: list[OutgoingEvent] = []
    ids: list[str] = []
    n = 0
    seen: set[str] = set()
    transitions: collections.Counter[str] = collections.Counter()
    try:
        for _ in range(250):
            op = rng.choices(
                [
                    "append",
                    "claim",
                    "sent",
                    "release",
                    "hold",
                    "release_all",
                    "unhold",
                    "settle",
                    "prune",
                    "reopen",
                ],
                weights=[30, 15, 15, 4, 4, 3, 3, 10, 4, 2],
            )[0]
            seen.add(op)
            if op == "append":
                batch = [
                    event(rng.choice(DEVICES), n + i, rng) for i in range(rng.randrange(1, 30))
                ]
                n += len(batch)
                results = await asyncio.gather(
                    *(buf.append(e) for e in batch), return_exceptions=True
                )
                for e, r in zip(batch, results, strict=True):
                    assert not isinstance(r, BaseException) or isinstance(r, BufferFullError)
                    if not isinstance(r, BaseException):
                        ids.append(e.id)
            elif op == "claim":
                live_after = None
                if rng.random() < 0.3:
                    live_after = rng.randrange(0, await buf.last_rowid() + 1)
                claimed += await buf.claim(rng.randrange(0, 40), live_after)
            elif op == "sent" and claimed:
                # Some were released, held, settled or deleted since: the careful path.
                picked = rng.sample(claimed, rng.randrange(1, len(claimed) + 1))
                await buf.mark_sent(picked)
                claimed = [e for e in claimed if e not in picked or rng.random() < 0.1]
            elif op in ("release", "hold") and claimed:
                picked = rng.sample(claimed, rng.randrange(1, len(claimed) + 1))
                await (buf.release if op == "release" else buf.hold)(picked)
            elif op == "release_all":
                await buf.release_in_flight()
            elif op == "unhold":
                await buf.unhold()
            elif op == "settle" and ids:
                chosen = rng.sample(ids, min(len(ids), rng.randrange(1, 20)))
                verdicts = [(i, rng.random() < 0.8) for i in chosen] + [("nobody", True)]
                await buf.settle(verdicts)
            elif op == "prune":
                await buf.prune(rng.choice([0.0, 3600.0]))
            elif op == "reopen":
                transitions.update(buf.transitions)
                await buf.close()
                buf = await open_buffer()
                claimed = []
            check(path, buf)
        transitions.update(buf.transitions)
    finally:
        await buf.close()
    buf = await open_buffer()
    try:
        check(path, buf)
    finally:
        await buf.close()
    assert seen >= {"append", "claim", "sent", "settle", "prune"}
    for name in ("stored", "claimed", "sent", "released", "held", "confirmed", "pruned"):
        assert transitions[name], name
    assert transitions["evicted_sent"] + transitions["evicted_unconfirmed"] + transitions["dropped"]
    status = await read_stats(path, awaiting_verdict=ACCEPTED)
    assert status is not None and sum(status.by_state.values()) > 0


async def test_an_older_file_is_counted_and_a_hand_edit_is_recounted(tmp_path: Path) -> None:
    """The v4 migration counts what a v3 file holds; counts a hand edit broke are rebuilt at
    the next move of a whole state (with an error in the log), not trusted for ever."""
    path = tmp_path / "b.db"
    rng = random.Random(7)
    buf = await Buffer.open(path, max_bytes=10**8, keep_unconfirmed=ACCEPTED)
    for i in range(40):
        await buf.append(event(DEVICES[i % 4], i, rng))
    await buf.mark_sent((await buf.claim(25))[:20])
    await buf.close()
    with sqlite3.connect(path) as conn:  # back to v3: no counts, no low marks
        conn.execute("DROP TABLE unsent_states")
        for column in (*COLUMNS, "payload_bytes", "unsent_from", "unsettled_from"):
            conn.execute(f"ALTER TABLE devices DROP COLUMN {column}")
        conn.execute("PRAGMA user_version=3")
    buf = await Buffer.open(path, max_bytes=10**8, keep_unconfirmed=ACCEPTED)
    try:
        check(path, buf)
        await buf.claim(5)
        with sqlite3.connect(path) as conn:  # a technician deletes in-flight rows by hand
            conn.execute("DELETE FROM events WHERE state = 1 AND device = 'dock'")
        await buf.release_in_flight()
        check(path, None)  # the daemon's byte total in memory is not re-read (as before)
    finally:
        await buf.close()


async def test_a_late_puback_for_an_evicted_event_marks_no_other_event_sent(tmp_path: Path) -> None:
    """A row's number is never handed to another event while the publisher may still hold it.

    A live-first drain at the size cap: the newest event goes out first, central's confirm
    overtakes its PUBACK, and the next event evicts it (the only row that may go). SQLite
    would give the new row the freed rowid (the highest), the new row is claimed, and then the
    first event's PUBACK arrives: marking "that rowid" sent would mark an event the broker
    never acknowledged (lost if the session ends before its own PUBACK, since only in-flight
    rows are put back) and count it against the wrong device.
    """
    path = tmp_path / "b.db"

    def scan(device: str, n: int) -> NewEvent:
        def render(seq: int) -> bytes:
            return json.dumps({"n": n, "seq": seq, "pad": "x" * 100}).encode()

        return NewEvent(f"{device}-{n}", device, "t", "t", False, render)

    buf = await Buffer.open(path, max_bytes=600)
    try:
        for i in range(3):
            await buf.append(scan("dock", i))
        boundary = await buf.last_rowid()
        await buf.append(scan("gate", 0))
        [first] = await buf.claim(1, live_after=boundary)
        await buf.settle([(first.id, True)])  # the confirm overtook the PUBACK
        await buf.append(scan("dock", 9))  # at the cap: the confirmed event makes room
        [second] = await buf.claim(1, live_after=boundary)
        assert second.id == "dock-9"
        await buf.mark_sent([first])  # the first event's late PUBACK
        with sqlite3.connect(path) as conn:
            state = conn.execute("SELECT state FROM events WHERE seq = 4 AND device = 'dock'")
            assert state.fetchone() == (1,)  # still in flight: its own PUBACK has not come
        assert await buf.release_in_flight() == 1
        check(path, buf)
    finally:
        await buf.close()


async def test_the_v4_migration_counts_every_state_in_chunks_and_says_how_far_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A v3 file with events in every state: the migration's one chunked pass gives what a full
    recount gives, and reports progress after each chunk (systemd extends its start timeout on
    each report; a big file counted in silence got the gateway killed at every start)."""
    path = tmp_path / "b.db"
    rng = random.Random(11)
    buf = await Buffer.open(path, max_bytes=10**8, keep_unconfirmed=ACCEPTED)
    for i in range(60):
        await buf.append(event(DEVICES[i % 4], i, rng))
    claimed = await buf.claim(45)
    await buf.mark_sent(claimed[:30])
    await buf.hold(claimed[30:35])  # 35..45 stay in flight (killed mid-session)
    await buf.settle([(e.id, i % 3 != 0) for i, e in enumerate(claimed[:12])])
    await buf.set_device_status("idle", "ok", "", "now")  # a device without events
    await buf.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE events SET state = 1 WHERE rowid IN (36, 37, 38)")  # as if killed
        states = {s for (s,) in conn.execute("SELECT DISTINCT state FROM events")}
        assert states == {-1, 0, 1, 2, 3, 4}
        conn.execute("DROP TABLE unsent_states")
        for column in (*COLUMNS, "payload_bytes", "unsent_from", "unsettled_from"):
            conn.execute(f"ALTER TABLE devices DROP COLUMN {column}")
        conn.execute("PRAGMA user_version=3")

    monkeypatch.setattr(schema, "COUNT_CHUNK", 7)
    said: list[str] = []
    conn = await schema.open_database(path, said.append)
    await conn.close()
    assert len(said) == 9  # 60 rows, 7 at a time
    assert said[-1] == "counting buffered events: 100 %"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (schema.SCHEMA_VERSION,)
        migrated = db.execute("SELECT * FROM devices ORDER BY device").fetchall()
        split = db.execute("SELECT * FROM unsent_states ORDER BY state").fetchall()
        db.execute("BEGIN")
        for statement in schema.REBUILD_COUNTS:
            db.execute(statement)
        assert db.execute("SELECT * FROM devices ORDER BY device").fetchall() == migrated
        assert db.execute("SELECT * FROM unsent_states ORDER BY state").fetchall() == split
        db.execute("ROLLBACK")
    check(path, None)
    buf = await Buffer.open(path, max_bytes=10**8, keep_unconfirmed=ACCEPTED)
    try:
        check(path, buf)  # the in-flight and held rows went back to pending, counted
    finally:
        await buf.close()


def test_a_tally_counts_one_event_by_default_and_only_unsent_states_as_unsent() -> None:
    """``add`` and ``move`` count one event unless told more; ``unsent`` holds only held,
    pending and in-flight deltas (there is no kept row for the others)."""
    tally = Tally()
    tally.add("dock", schema.STATE_PENDING, 0)
    assert tally.row("dock") == [1, 0, 0, 0, 0]
    tally.move("dock", 0, schema.STATE_PENDING, schema.STATE_IN_FLIGHT)
    tally.move("dock", 0, schema.STATE_IN_FLIGHT, schema.STATE_SENT, 3)
    assert tally.row("dock") == [-2, 3, 0, 0, 0]
    assert dict(tally.unsent) == {schema.STATE_PENDING: 0, schema.STATE_IN_FLIGHT: -2}


async def test_releasing_with_right_counts_recounts_nothing(tmp_path: Path) -> None:
    """A move of a whole state whose kept count matches the rows moved logs no error and does
    not rebuild (the error says the file was edited by hand: a false alarm otherwise)."""
    path = tmp_path / "b.db"
    rng = random.Random(3)
    buf = await Buffer.open(path, max_bytes=10**8)
    try:
        for i in range(6):
            await buf.append(event("dock", i, rng))
        await buf.claim(4)
        with capture_logs() as logs:
            assert await buf.release_in_flight() == 4
        assert not [e for e in logs if e["event"] == "buffer_counts_rebuilt"]
        check(path, buf)
    finally:
        await buf.close()


async def test_a_missing_kept_state_row_is_recounted(tmp_path: Path) -> None:
    """A hand edit that deleted the in-flight row of ``unsent_states``: the next release counts
    it as 0 against the row it moves, logs the error and rebuilds the row."""
    path = tmp_path / "b.db"
    rng = random.Random(5)
    buf = await Buffer.open(path, max_bytes=10**8)
    try:
        for i in range(3):
            await buf.append(event("dock", i, rng))
        await buf.claim(1)
        with sqlite3.connect(path) as conn:
            conn.execute("DELETE FROM unsent_states WHERE state = 1")
        with capture_logs() as logs:
            assert await buf.release_in_flight() == 1
        assert [
            (e["counted"], e["found"]) for e in logs if e["event"] == "buffer_counts_rebuilt"
        ] == [(0, 1)]
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT state FROM unsent_states ORDER BY state").fetchall() == [
                (-1,),
                (0,),
                (1,),
            ]
        check(path, buf)
    finally:
        await buf.close()


async def test_telemetry_acked_across_chunks_after_a_release_counts_as_telemetry_sent(
    tmp_path: Path,
) -> None:
    """PUBACKs for more than one chunk of rows, some no longer in flight (the session's end
    released them first): the chunk that moved whole is counted by each row's kind, so sent
    telemetry stays telemetry (``sent_telemetry``), not events."""
    path = tmp_path / "b.db"
    rng = random.Random(11)
    buf = await Buffer.open(path, max_bytes=10**8, keep_unconfirmed=ACCEPTED)
    try:
        futures = [buf.append_nowait(event("belt", i, rng)) for i in range(510)]
        await asyncio.gather(*futures)
        claimed = await buf.claim(510)
        assert len(claimed) == 510 and all(e.droppable for e in claimed)
        await buf.release(claimed[-5:])  # in the second chunk of 500: the careful path
        await buf.mark_sent(claimed)  # every PUBACK came, the released ones' late
        check(path, buf)
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            assert conn.execute(
                "SELECT sent_events, sent_telemetry FROM devices WHERE device = 'belt'"
            ).fetchone() == (0, 510)
    finally:
        await buf.close()
