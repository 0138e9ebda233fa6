"""The buffer on a real SQLite file: seq assignment, durability, states, cap policy, recovery."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import stat
from pathlib import Path

import pytest

from buffer.schema import BufferOpenError
from buffer.stats import read_stats
from buffer.store import Buffer, BufferFullError, NewEvent
from tests.unit.buffer.holds import writer_busy


def make_event(device: str, n: int, *, droppable: bool = False, size: int = 0) -> NewEvent:
    def render(seq: int) -> bytes:
        return json.dumps({"device": device, "n": n, "seq": seq, "pad": "x" * size}).encode()

    return NewEvent(f"{device}-{n}", device, "2026-01-01T00:00:00.000000Z", "t", droppable, render)


@pytest.fixture
async def buf(tmp_path: Path):
    b = await Buffer.open(tmp_path / "state" / "buffer.db", max_bytes=10**8)
    yield b
    await b.close()


def rows(path: Path) -> list[tuple]:
    """Read the file with a separate connection, as a crash-recovery would."""
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT device, seq, state, payload FROM events ORDER BY rowid"
        ).fetchall()


async def test_seq_is_per_device_gap_free_and_in_payload(buf: Buffer) -> None:
    """Interleaved devices each get 1, 2, 3 ... and the stored payload carries that seq."""
    stored = await asyncio.gather(
        *(buf.append(make_event("a" if i % 3 else "b", i)) for i in range(30))
    )
    for device in "ab":
        seqs = [s.seq for s in stored if s.device == device]
        assert seqs == list(range(1, len(seqs) + 1))
    for device, seq, _state, payload in rows(buf.path):
        assert json.loads(payload)["seq"] == seq
        assert json.loads(payload)["device"] == device


async def test_append_returns_only_after_commit_and_groups_commits(buf: Buffer) -> None:
    """Once append returns, another connection sees the row; concurrent appends share commits."""
    results = await asyncio.gather(*(buf.append(make_event("a", i)) for i in range(500)))
    assert len(rows(buf.path)) == 500
    assert results[-1].seq == 500
    assert buf.commits < 100, f"{buf.commits} commits for 500 events: no group commit"


async def test_file_is_private(buf: Buffer) -> None:
    """The database holds business data: 0600."""
    await buf.append(make_event("a", 1))
    assert stat.S_IMODE(buf.path.stat().st_mode) == 0o600


async def test_claim_send_and_in_flight_reset_on_reopen(tmp_path: Path) -> None:
    """Claimed rows are in flight; after a restart they are pending again; sent ones stay sent."""
    path = tmp_path / "b.db"
    b = await Buffer.open(path, max_bytes=10**8)
    for i in range(10):
        await b.append(make_event("a", i))
    first = await b.claim(4)
    assert [e.seq for e in first] == [1, 2, 3, 4]
    await b.mark_sent(first[:2])
    second = await b.claim(2)
    assert [e.seq for e in second] == [5, 6]
    stats = await b.stats()
    assert stats.by_state["sent"] == 2
    assert stats.by_state["in_flight"] == 4
    assert stats.devices["a"].last_sent_seq == 2
    await b.close()

    b = await Buffer.open(path, max_bytes=10**8)
    again = await b.claim(100)
    assert [e.seq for e in again] == list(range(3, 11))
    stored = await b.append(make_event("a", 99))
    assert stored.seq == 11, "seq continues after a restart, never reused"
    await b.close()


async def test_release_returns_events_to_pending_in_order(buf: Buffer) -> None:
    """A lost connection releases in-flight events; they come back oldest first."""
    for i in range(5):
        await buf.append(make_event("a", i))
    claimed = await buf.claim(5)
    await buf.release(claimed[2:])
    assert [e.seq for e in await buf.claim(5)] == [3, 4, 5]


async def test_live_events_come_before_backlog(buf: Buffer) -> None:
    """With a drain boundary, events newer than it are claimed first and backlog is flagged."""
    for i in range(5):
        await buf.append(make_event("a", i))
    boundary = await buf.last_rowid()
    for i in range(5, 8):
        await buf.append(make_event("a", i))
    claimed = await buf.claim(4, live_after=boundary)
    assert [(e.seq, e.backlog) for e in claimed] == [(6, False), (7, False), (8, False), (1, True)]


async def test_cap_refuses_scans_never_drops_them(tmp_path: Path) -> None:
    """At the cap: sent events are evicted first, then telemetry dropped, scans refused."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=2_000)
    scans = [await b.append(make_event("scanner", i, size=200)) for i in range(5)]
    await b.mark_sent(await b.claim(2))
    telemetry = [
        await b.append(make_event("conveyor", i, size=200, droppable=True)) for i in range(4)
    ]
    assert len(scans) == 5 and len(telemetry) == 4
    assert b.transitions["evicted_sent"] >= 1, "sent events make room first"
    with pytest.raises(BufferFullError):
        for i in range(20):
            await b.append(make_event("scanner", 100 + i, size=200))
    assert b.transitions["dropped"] >= 1, "telemetry was dropped before any scan was refused"
    held = rows(b.path)
    scanner_seqs = [seq for dev, seq, _s, _p in held if dev == "scanner"]
    pending_scanner = [seq for dev, seq, st, _p in held if dev == "scanner" and st == 0]
    assert pending_scanner == sorted(pending_scanner)
    assert set(range(3, 6)) <= set(scanner_seqs), "no unsent scan was ever dropped"
    assert b.stored_bytes <= 2_000
    nxt = max(scanner_seqs)
    await b.close()
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    assert (await b.append(make_event("scanner", 999))).seq == nxt + 1, "refusals took no seq"
    await b.close()


async def test_prune_removes_only_old_sent_events(buf: Buffer) -> None:
    """Retention applies to sent events; pending ones are kept whatever their age."""
    for i in range(6):
        await buf.append(make_event("a", i))
    await buf.mark_sent(await buf.claim(3))
    assert await buf.prune(retention=3600) == 0
    assert await buf.prune(retention=-1) == 3
    assert [seq for _d, seq, _s, _p in rows(buf.path)] == [4, 5, 6]


async def test_corrupt_file_is_quarantined_and_a_fresh_one_created(tmp_path: Path) -> None:
    """A garbage file is moved aside loudly, never deleted, and the gateway carries on."""
    path = tmp_path / "b.db"
    path.write_bytes(b"this is not a database" * 100)
    b = await Buffer.open(path, max_bytes=10**8)
    assert (await b.append(make_event("a", 1))).seq == 1
    await b.close()
    moved = list(tmp_path.glob("b.db.corrupt-*"))
    assert len(moved) == 1
    assert moved[0].read_bytes().startswith(b"this is not a database")


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file from a newer release is not migrated backwards or overwritten."""
    path = tmp_path / "b.db"
    b = await Buffer.open(path, max_bytes=10**8)
    await b.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(BufferOpenError, match="newer"):
        await Buffer.open(path, max_bytes=10**8)


async def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    """A state dir that cannot be created gives BufferOpenError naming the path."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BufferOpenError, match="cannot create"):
        await Buffer.open(blocker / "sub" / "b.db", max_bytes=10**8)


async def test_stats_do_not_need_the_writer_lock_and_count_payload_from_memory(
    buf: Buffer,
) -> None:
    """Stats scan the table (seconds at a million rows): they must not stall commits behind the
    buffer lock, and the payload total they report must equal what the file holds."""
    for n in range(1, 6):
        await buf.append(make_event("a", n, size=100))
    async with writer_busy(buf._db):  # a commit or claim in progress
        stats = await asyncio.wait_for(buf.stats(), 5)
    assert stats.by_state["pending"] == 5
    assert stats.payload_bytes == sum(len(r[-1]) for r in rows(buf.path))
    assert stats.payload_bytes == (await read_stats(buf.path)).payload_bytes  # type: ignore[union-attr]
