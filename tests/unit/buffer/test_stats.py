"""What ``status``, the live view and the checkpoint read from a buffer file (buffer/stats.py).

On real files: the recent events the live view shows, the JSON form with its ``unsent`` total,
and the scan that still reads a file older than schema v4 (``status`` run before the daemon
migrated it), including rows a hand edit left without a ``devices`` row or in no known state.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from buffer.counts import COLUMNS
from buffer.stats import collect_stats, read_recent, read_stats, reader
from buffer.store import Buffer, NewEvent


def scan(device: str, n: int, *, droppable: bool = False) -> NewEvent:
    def render(seq: int) -> bytes:
        return json.dumps({"d": device, "n": n, "seq": seq}).encode()

    return NewEvent(f"{device}-{n}", device, "t", "t", droppable, render)


async def test_recent_events_are_the_newest_first_with_their_state(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    assert await read_recent(path) == []  # no file yet: nothing, and no file created
    assert not path.exists()
    buf = await Buffer.open(path, max_bytes=10**8)
    try:
        for n in range(7):
            await buf.append(scan("dock", n))
        await buf.mark_sent(await buf.claim(2))
        await buf.claim(1)
    finally:
        await buf.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE events SET state = 7 WHERE rowid = 6")  # a state this build lacks
    recent = await read_recent(path)
    assert [(e["n"], e["seq"], e["_state"]) for e in recent] == [
        (6, 7, "pending"),
        (5, 6, "7"),
        (4, 5, "pending"),
        (3, 4, "pending"),
        (2, 3, "in_flight"),
    ]
    assert [e["n"] for e in await read_recent(path, limit=2)] == [6, 5]
    assert (await read_recent(path, limit=9))[-1] == {
        "d": "dock",
        "n": 0,
        "seq": 1,
        "_state": "sent",
    }


async def test_the_json_form_counts_pending_and_in_flight_as_unsent(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buf = await Buffer.open(path, max_bytes=10**8)
    try:
        for n in range(6):
            await buf.append(scan("dock", n))
        claimed = await buf.claim(4)
        await buf.mark_sent(claimed[:1])
        await buf.hold(claimed[1:2])
        out = (await buf.stats()).as_dict()
    finally:
        await buf.close()
    assert (out["by_state"]["pending"], out["by_state"]["in_flight"]) == (2, 2)
    assert out["by_state"]["held_by_broker"] == 1
    assert out["unsent"] == 4  # held events are not counted: the broker refused them
    assert json.loads(json.dumps(out)) == out


async def test_status_of_a_file_older_than_v4_is_scanned_with_the_devices_it_lacks(
    tmp_path: Path,
) -> None:
    """A v3 file, as ``status`` sees it before the daemon's first start after an upgrade: the
    figures come from a scan, with the drops v3 records; events whose device has no ``devices`` row (edited by hand) are
    still counted under their device, and an unknown state under its number."""
    path = tmp_path / "b.db"
    buf = await Buffer.open(path, max_bytes=10**8)
    try:
        for n in range(4):
            await buf.append(scan("dock", n))
            await buf.append(scan("acc", n))
        await buf.mark_sent([e for e in await buf.claim(8) if e.device == "acc"])
        await buf.append(scan("belt", 0))
    finally:
        await buf.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE unsent_states")
        for column in (*COLUMNS, "payload_bytes", "unsent_from", "unsettled_from"):
            conn.execute(f"ALTER TABLE devices DROP COLUMN {column}")
        conn.execute("PRAGMA user_version=3")
        conn.execute("DELETE FROM devices WHERE device <> 'belt'")  # a technician's hand edit
        conn.execute("UPDATE devices SET last_seq = 30, dropped_events = 3")  # v3 records drops
        conn.execute("INSERT INTO dropped VALUES ('belt', 20, 22)")
        conn.execute("UPDATE events SET state = 7 WHERE device = 'dock' AND seq = 4")
    stats = await read_stats(path, awaiting_verdict={"acc"})
    assert stats is not None
    assert stats.by_state["7"] == 1
    assert (stats.by_state["pending"], stats.by_state["in_flight"]) == (1, 3)
    belt = stats.devices["belt"]
    assert (belt.last_seq, belt.pending, belt.dropped_events, belt.dropped_ranges) == (
        30,
        1,
        3,
        [(20, 22)],
    )
    dock, acc = stats.devices["dock"], stats.devices["acc"]
    assert (dock.device, dock.pending, dock.unconfirmed) == ("dock", 3, 0)
    assert (acc.device, acc.pending, acc.unconfirmed, acc.lowest_unconfirmed_seq) == (
        "acc",
        0,
        4,
        1,
    )
    assert await read_stats(tmp_path / "none.db") is None


async def test_status_counts_sent_events_awaiting_a_verdict_for_the_devices_named(
    tmp_path: Path,
) -> None:
    path = tmp_path / "b.db"
    buf = await Buffer.open(path, max_bytes=10**8, keep_unconfirmed=frozenset({"acc"}))
    try:
        for n in range(3):
            await buf.append(scan("acc", n))
        sent = await buf.claim(3)
        await buf.mark_sent(sent)
        await buf.settle([(sent[0].id, True)])
    finally:
        await buf.close()
    acc = (await read_stats(path, awaiting_verdict=["acc"])).devices["acc"]  # type: ignore[union-attr]
    assert (acc.unconfirmed, acc.lowest_unconfirmed_seq) == (2, 2)
    acc = (await read_stats(path)).devices["acc"]  # type: ignore[union-attr]
    assert (acc.unconfirmed, acc.lowest_unconfirmed_seq) == (0, None)


async def test_ages_are_taken_at_the_time_given_and_bytes_as_given(tmp_path: Path) -> None:
    """``collect_stats`` measures ages from ``now`` when given one, and reports the payload
    total it is handed (the daemon's, kept in memory) instead of the file's."""
    path = tmp_path / "b.db"
    buf = await Buffer.open(path, max_bytes=10**8)
    try:
        await buf.append(scan("dock", 0))
    finally:
        await buf.close()
    with sqlite3.connect(path) as conn:
        [(created,)] = conn.execute("SELECT created FROM events").fetchall()
    async with reader(path) as conn:
        stats = await collect_stats(conn, created + 12.5, payload_bytes=4321)
    assert stats.devices["dock"].oldest_pending_age_s == 12.5
    assert stats.oldest_unsent_age_s == 12.5
    assert stats.payload_bytes == 4321


async def test_the_oldest_unsent_event_is_the_first_stored_even_after_the_clock_went_back(
    tmp_path: Path,
) -> None:
    """From schema v4 on a device's oldest unsent event is its lowest unsent seq (one index
    step from the low mark), not the lowest ``created`` (a scan): they differ only when the
    wall clock was set back between two events."""
    path = tmp_path / "b.db"
    buf = await Buffer.open(path, max_bytes=10**8)
    try:
        await buf.append(scan("dock", 0))
        await buf.append(scan("dock", 1))
    finally:
        await buf.close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE events SET created = 1000.0 WHERE seq = 1")
        conn.execute("UPDATE events SET created = 900.0 WHERE seq = 2")  # clock set back
    async with reader(path) as conn:
        stats = await collect_stats(conn, 1010.0)
    assert stats.devices["dock"].oldest_pending_age_s == 10.0
