"""The buffer's guarantees where interleavings and error paths decide them (issue 13).

Each test here failed on the buffer before its fix: durability decided outside the lock, a
busy file taken for a corrupt one, per-id settle round trips, a commit abandoned by close, a
byte count restored over a prune. All on real SQLite files; the lock is held by a real process.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buffer.schema import BufferOpenError
from buffer.store import Buffer, BufferClosedError, BufferFullError, NewEvent
from tests.unit.buffer.holds import writer_busy


def make_event(device: str, n: int, *, size: int = 0, event_id: str | None = None) -> NewEvent:
    def render(seq: int) -> bytes:
        return json.dumps({"device": device, "n": n, "seq": seq, "pad": "x" * size}).encode()

    return NewEvent(event_id or f"{device}-{n}", device, "t", "t", False, render)


def held_payload_bytes(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(
            conn.execute("SELECT coalesce(sum(length(payload)), 0) FROM events").fetchone()[0]
        )


@pytest.fixture
async def buf(tmp_path: Path):
    b = await Buffer.open(tmp_path / "state" / "buffer.db", max_bytes=10**8)
    yield b
    await b.close()


def modes_at_event_commits(statements: list[str]) -> list[str]:
    """Replay a statement trace: the synchronous mode in force at each COMMIT that stored events."""
    mode, inserting, found = "", False, []
    for sql in statements:
        text = sql.strip().upper()
        if text.startswith("PRAGMA SYNCHRONOUS="):
            mode = text.split("=", 1)[1]
        elif text.startswith("BEGIN"):
            inserting = False
        elif text.startswith("INSERT INTO EVENTS"):
            inserting = True
        elif text == "COMMIT" and inserting:
            found.append(mode)
    return found


async def test_every_append_commits_with_fsync_even_between_lazy_writes(buf: Buffer) -> None:
    """Defect 1: an append racing a non-durable write (device status, release at disconnect,
    prune) must still commit with synchronous=FULL. Checked on the statements SQLite really ran,
    because neither kill -9 nor a frozen copy can tell NORMAL from FULL."""
    statements: list[str] = []
    await buf._db.read(lambda conn: conn.set_trace_callback(statements.append))
    for n in range(6):
        await asyncio.gather(
            buf.set_device_status("a", "up" if n % 2 else "down", "", "t"),
            buf.append(make_event("a", 2 * n)),
            buf.release_in_flight(),
            buf.append(make_event("a", 2 * n + 1)),
            buf.prune(3600),
        )
    await buf._db.read(lambda conn: conn.set_trace_callback(None))
    modes = modes_at_event_commits(statements)
    assert len(modes) >= 6, statements[:20]
    assert set(modes) == {"FULL"}, modes


async def test_an_append_that_makes_room_commits_with_fsync(tmp_path: Path) -> None:
    """At the cap, the append evicts sent events and inserts in one transaction (the other
    commit path): it must be as durable as any append, after lazy claims and PUBACKs."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=2_000)
    try:
        for n in range(10):
            await b.append(make_event("a", n, size=100))
        await b.mark_sent(await b.claim(10))
        statements: list[str] = []
        await b._db.read(lambda conn: conn.set_trace_callback(statements.append))
        for n in range(10, 16):
            await b.append(make_event("a", n, size=100))
            await b.mark_sent(await b.claim(10))
        await b._db.read(lambda conn: conn.set_trace_callback(None))
        assert b.transitions["evicted_sent"] > 0, "the cap was never reached"
        modes = modes_at_event_commits(statements)
        assert len(modes) == 6, statements[:20]
        assert set(modes) == {"FULL"}, modes
    finally:
        await b.close()


async def test_settle_is_one_round_trip_per_batch(buf: Buffer) -> None:
    """Defect 6: 5,000 verdicts (a few known, the rest unknown ids from anyone allowed to
    publish) cost one round trip to the SQLite thread, not one or two per id; the result still
    tells applied, duplicate and unknown apart."""
    for n in range(3):
        await buf.append(make_event("a", n))
    await buf.mark_sent(await buf.claim(10))
    raw = buf._db._conn
    calls = 0
    original = raw._execute

    async def counting(fn, *args, **kwargs):
        nonlocal calls
        calls += 1
        return await original(fn, *args, **kwargs)

    raw._execute = counting  # type: ignore[method-assign]
    try:
        verdicts = [("a-0", True), ("a-1", False), ("a-0", True)]
        verdicts += [(f"{n:08x}-0000-7000-8000-000000000000", True) for n in range(4997)]
        result = await buf.settle(verdicts)
    finally:
        raw._execute = original  # type: ignore[method-assign]
    assert calls == 1
    assert sorted((s.id, s.seq) for s in result.applied) == [("a-0", 1), ("a-1", 2)]
    assert result.duplicate == 1 and result.unknown == 4997
    again = await buf.settle([("a-0", False), ("a-2", True)])
    assert [s.id for s in again.applied] == ["a-2"] and again.duplicate == 1


async def test_close_answers_every_append_of_the_commit_under_way(tmp_path: Path) -> None:
    """Closing while a group commit runs: each append hears how it ended (stored or closed), and
    every one reported stored is in the file. Before, the batch being committed was abandoned
    and its callers waited forever."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    appends = [asyncio.ensure_future(b.append(make_event("a", n, size=2000))) for n in range(400)]
    await asyncio.sleep(0)
    await asyncio.sleep(0.001)
    await b.close()
    async with asyncio.timeout(5):
        results = await asyncio.gather(*appends, return_exceptions=True)
    stored = [r for r in results if not isinstance(r, BaseException)]
    closed = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, BufferClosedError) for r in closed), closed[:3]
    with sqlite3.connect(tmp_path / "b.db") as conn:
        seqs = [s for (s,) in conn.execute("SELECT seq FROM events ORDER BY seq")]
    assert seqs == sorted(s.seq for s in stored)
    with pytest.raises(BufferClosedError):
        await b.append(make_event("a", 999))


async def test_close_returns_once_every_append_has_its_answer(tmp_path: Path) -> None:
    """When ``close`` returns, no append is left waiting (each is stored or refused, nothing
    settles later), no task of the buffer's runs on, and the counts match the file."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    appends = [asyncio.ensure_future(b.append(make_event("a", n, size=500))) for n in range(300)]
    await asyncio.sleep(0)
    await b.close()
    assert all(a.done() for a in appends), sum(not a.done() for a in appends)
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert left == [], "the writer (or anything of the buffer's) still running after close"
    refused = [a for a in appends if a.exception() is not None]
    assert all(isinstance(a.exception(), BufferClosedError) for a in refused)
    assert b.transitions["refused"] == len(refused)
    assert b.transitions["stored"] == len(appends) - len(refused)
    with sqlite3.connect(tmp_path / "b.db") as conn:
        held = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    assert held == len(appends) - len(refused)


async def test_failed_commit_does_not_undo_a_prune_in_between(buf: Buffer) -> None:
    """A commit that fails after a prune ran (both queued behind the lock) must not restore the
    byte count from before the prune: the cap would then be hit early."""
    await buf.append(make_event("a", 1, size=5000))
    await buf.mark_sent(await buf.claim(10))
    await buf.append(make_event("a", 2, event_id="dup"))  # pending: prune keeps it
    async with writer_busy(buf._db):
        prune = asyncio.ensure_future(buf.prune(-1))
        await asyncio.sleep(0.01)
        failing = asyncio.ensure_future(buf.append(make_event("a", 3, event_id="dup")))
        await asyncio.sleep(0.01)
    assert await prune == 1
    with pytest.raises(sqlite3.IntegrityError):
        await failing
    assert buf.stored_bytes == held_payload_bytes(buf.path) < 5000


async def test_refused_event_takes_no_seq_without_a_reopen(tmp_path: Path) -> None:
    """At the cap a scan is refused; once room is made (in the same process) the next scan
    gets last+1, not last+2."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=3_000)
    try:
        for n in range(2):
            await b.append(make_event("s", n, size=1000))
        with pytest.raises(BufferFullError):
            await b.append(make_event("s", 2, size=1000))
        await b.mark_sent(await b.claim(10))
        assert (await b.append(make_event("s", 3, size=1000))).seq == 3
    finally:
        await b.close()


async def test_seq_survives_pruning_everything_and_a_reopen(tmp_path: Path) -> None:
    """Append N, send, prune all, reopen, append: N+1 (the devices table remembers, not the
    events table, which is empty)."""
    path = tmp_path / "b.db"
    b = await Buffer.open(path, max_bytes=10**8)
    for n in range(7):
        await b.append(make_event("s", n))
    await b.mark_sent(await b.claim(10))
    assert await b.prune(-1) == 7
    await b.close()
    b = await Buffer.open(path, max_bytes=10**8)
    try:
        assert (await b.append(make_event("s", 7))).seq == 8
    finally:
        await b.close()


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


def hold_exclusive_lock(path: Path, seconds: float) -> subprocess.Popen[str]:
    """A technician's sqlite3 shell in exclusive locking mode, as a real second process."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


async def test_a_locked_buffer_is_not_quarantined(tmp_path: Path, monkeypatch) -> None:
    """Defect 2: another process holding the file locked at start is a clear error that leaves
    the file alone, not corruption: the stored events are still there afterwards and the next
    seq continues after them."""
    monkeypatch.setattr("buffer.schema.BUSY_TIMEOUT_MS", 300)
    path = tmp_path / "b.db"
    b = await Buffer.open(path, max_bytes=10**8)
    for n in range(10):
        await b.append(make_event("s", n))
    await b.close()
    locker = hold_exclusive_lock(path, 3)
    try:
        started = time.monotonic()
        with pytest.raises(BufferOpenError, match="left as it is"):
            await Buffer.open(path, max_bytes=10**8)
        assert time.monotonic() - started < 2.5, "gave up while still locked"
    finally:
        locker.kill()
        locker.wait()
    assert not list(tmp_path.glob("b.db.corrupt-*"))
    b = await Buffer.open(path, max_bytes=10**8)
    try:
        assert (await b.stats()).by_state["pending"] == 10
        assert (await b.append(make_event("s", 10))).seq == 11
    finally:
        await b.close()


async def test_quarantine_continues_seqs_after_the_damaged_files(tmp_path: Path) -> None:
    """Defect 2: when a buffer really is damaged and set aside, the fresh one's seqs continue
    after the highest the damaged file still shows, so no seq is ever given twice."""
    path = tmp_path / "b.db"
    b = await Buffer.open(path, max_bytes=10**8)
    for n in range(300):
        await b.append(make_event("s", n, size=300))
    await b.append(make_event("t", 0))
    await b.close()
    data = bytearray(path.read_bytes())
    for page in range(len(data) // 4096 - 6, len(data) // 4096):  # the last events pages
        data[page * 4096 + 8 : page * 4096 + 4000] = bytes([0x5A]) * 3992
    path.write_bytes(bytes(data))
    b = await Buffer.open(path, max_bytes=10**8)
    try:
        assert list(tmp_path.glob("b.db.corrupt-*")), "the damage was not noticed"
        assert (await b.append(make_event("s", 300))).seq == 301
        assert (await b.append(make_event("t", 1))).seq == 2
    finally:
        await b.close()


async def test_a_range_missing_only_its_first_event_is_refused(tmp_path: Path) -> None:
    """A replay is complete or refused: prune exactly the first event of a range and ask for
    the range; it must be refused, naming the oldest retained seq, not answered ok with one
    event missing. (The same for the last event: an off-by-one at either end.)"""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    try:
        for n in range(10):
            await b.append(make_event("s", n))
        claimed = await b.claim(10)
        await b.mark_sent(claimed[:1])
        assert await b.prune(-1) == 1
        await b.mark_sent(claimed[1:])
        refused = await b.check_replay("s", 1, 10)
        assert refused.error is not None and "oldest retained in range is 2" in refused.error
        assert (await b.check_replay("s", 2, 10)).error is None
        assert (await b.check_replay("s", 1, 1)).error is not None
        assert (await b.check_replay("s", 2, 11)).error is not None, "beyond the last seq"
    finally:
        await b.close()


async def test_events_the_broker_refused_are_held_not_sent_not_pruned(tmp_path: Path) -> None:
    """Held (refused by the broker): never claimed again in the same session, never counted as
    sent or pruned, back to pending at the next session (unhold) or the next start."""
    path = tmp_path / "b.db"
    b = await Buffer.open(path, max_bytes=10**8)
    try:
        for n in range(3):
            await b.append(make_event("s", n))
        claimed = await b.claim(10)
        await b.hold(claimed[1:2])
        await b.mark_sent([claimed[0], claimed[2]])
        assert await b.claim(10) == []
        assert await b.unsent_count() == 0, "a held event does not keep a drain going"
        assert await b.prune(-1) == 2, "only the two sent ones"
        assert (await b.stats()).by_state["held_by_broker"] == 1
        assert await b.unhold() == 1
        assert [e.seq for e in await b.claim(10)] == [2]
        await b.release_in_flight()
        await b.hold(await b.claim(10))
    finally:
        await b.close()
    b = await Buffer.open(path, max_bytes=10**8)
    try:
        assert [e.seq for e in await b.claim(10)] == [2], "a restart tries held events again"
    finally:
        await b.close()


async def test_a_replay_range_check_takes_no_buffer_lock(tmp_path: Path) -> None:
    """The range check reads on a connection of its own (WAL): it answers while the writer's
    lock is held, so a commit never waits behind it (issue 18, finding 8)."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    try:
        for n in range(20):
            await b.append(make_event("s", n))
        await b.mark_sent(await b.claim(20))
        async with writer_busy(b._db):  # a long write in progress
            async with asyncio.timeout(2):
                span = await b.check_replay("s", 1, 20)
            assert span.error is None and span.unsent == 0
            async with asyncio.timeout(2):
                assert (await b.check_replay("s", 1, 21)).error is not None
    finally:
        await b.close()


async def test_a_range_with_a_hole_inside_is_refused_and_unsent_counted(tmp_path: Path) -> None:
    """Both ends held but one event inside gone: refused. Events not yet delivered are counted
    in ``unsent`` (the cheap check must not miss either)."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    try:
        for n in range(10):
            await b.append(make_event("s", n))
        claimed = await b.claim(10)
        await b.mark_sent(claimed[:8])  # seqs 9 and 10 stay in flight
        assert (await b.check_replay("s", 1, 10)).unsent == 2
        await b._db.write(
            lambda c: c.execute("DELETE FROM events WHERE device = 's' AND seq = 5"), durable=True
        )
        refused = await b.check_replay("s", 1, 10)
        assert refused.error is not None and "no longer fully retained" in refused.error
    finally:
        await b.close()


async def test_seqs_a_replay_skipped_are_lost_only_if_deleted(tmp_path: Path) -> None:
    """Of the seqs a replay skipped, those still stored (undelivered) are not lost; those
    deleted since are, as ranges (issue 18: a replay that loses rows mid-way says so)."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    try:
        for n in range(10):
            await b.append(make_event("s", n))
        await b._db.write(
            lambda c: c.execute("DELETE FROM events WHERE device = 's' AND seq IN (3, 4, 9)"),
            durable=True,
        )
        assert await b.replay_lost("s", [(2, 5), (7, 10)]) == (3, [(3, 4), (9, 9)])
        assert await b.replay_lost("s", [(1, 2)]) == (0, [])
    finally:
        await b.close()


async def test_a_second_writer_on_the_same_file_is_refused(tmp_path: Path) -> None:
    """Two writers each keep their own seq counters: once the first one's rows are pruned, the
    second would give ``seq 1`` to a new id (found by the issue 13 review). The buffer file
    takes one writer; the second open is a clear error, and works once the first closed."""
    path = tmp_path / "b.db"
    first = await Buffer.open(path, max_bytes=10**8)
    try:
        with pytest.raises(BufferOpenError, match="another writer"):
            await Buffer.open(path, max_bytes=10**8)
        for n in range(3):
            await first.append(make_event("a", n))
        await first.mark_sent(await first.claim(10))
        assert await first.prune(-1) == 3
    finally:
        await first.close()
    second = await Buffer.open(path, max_bytes=10**8)
    try:
        assert (await second.append(make_event("a", 3))).seq == 4
    finally:
        await second.close()


async def test_a_buffer_in_a_new_directory_is_private_to_its_owner(tmp_path: Path) -> None:
    """A state_dir that does not exist yet is made, parents too, and readable by its owner
    alone (events carry what was scanned), as is the writer lock beside the buffer file.
    (Python gives the mode to the last directory only: the contents are what it protects.)"""
    path = tmp_path / "state" / "site" / "buffer.db"
    old_umask = os.umask(0o022)
    try:
        buf = await Buffer.open(path, max_bytes=10**6)
    finally:
        os.umask(old_umask)
    try:
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(Path(f"{path}.lock").stat().st_mode) == 0o600
    finally:
        await buf.close()
