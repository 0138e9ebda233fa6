"""Commits that claim ahead for the publisher (buffer/claims_ahead.py), on a real SQLite file.

When the pump's last claim found nothing pending, the next commit inserts its rows in flight,
up to the room the pump left, and the next claim hands them over from memory: no transaction.
What must hold: the oldest-first order per device (nothing claimed ahead overtakes a pending
row), no row claimed twice or left in flight unseen, the window never exceeded, the kept
counts exact (checked against a full count, as tests/unit/buffer/test_counts.py does).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from buffer.schema import STATE_IN_FLIGHT, STATE_PENDING
from buffer.store import Buffer, NewEvent
from tests.unit.buffer.holds import Blocker
from tests.unit.buffer.test_claim_skip import make_event as scan
from tests.unit.buffer.test_counts import check


async def commit_together(buf: Buffer, events: list[NewEvent]) -> None:
    """Commit ``events`` in one group commit (queued while another write holds the thread)."""
    blocker = Blocker()
    holding = await blocker.hold(buf._db)
    futures = [buf.append_nowait(e) for e in events]
    await asyncio.sleep(0)  # the writer takes them all into one batch
    blocker.release.set()
    await holding
    for future in futures:
        await future


def states(path: Path) -> dict[int, int]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return dict(conn.execute("SELECT seq, state FROM events WHERE device = 'a'").fetchall())


async def test_a_commit_after_an_empty_claim_is_claimed_ahead_and_handed_over_without_sql(
    buf: Buffer, tmp_path: Path
) -> None:
    """The rows go in in flight; the next claim answers with another connection holding the
    file's write lock (a transaction would wait out the 5 s busy timeout)."""
    await buf.append(scan("a", 0))
    assert [e.seq for e in await buf.claim(10)] == [1]
    assert await buf.claim(10) == []  # nothing pending: room for 10
    await buf.append(scan("a", 1))
    assert states(tmp_path / "buffer.db") == {1: STATE_IN_FLIGHT, 2: STATE_IN_FLIGHT}
    holder = sqlite3.connect(tmp_path / "buffer.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        ahead = await asyncio.wait_for(buf.claim(10), 0.5)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [(e.seq, e.device, e.backlog) for e in ahead] == [(2, "a", False)]
    assert json.loads(ahead[0].payload) == {"n": 1, "seq": 2}
    assert buf.transitions["claimed"] == 2
    check(tmp_path / "buffer.db", buf)


async def test_no_more_than_the_room_is_claimed_ahead_and_the_rest_follow_in_order(
    buf: Buffer, tmp_path: Path
) -> None:
    """Room for 3, a commit of 5: 3 in flight, 2 pending; the claims return 3, then 2."""
    await buf.append(scan("a", 0))
    await buf.claim(10)
    assert await buf.claim(3) == []
    await commit_together(buf, [scan("a", n) for n in range(1, 6)])
    assert states(tmp_path / "buffer.db") == {
        1: STATE_IN_FLIGHT,
        **dict.fromkeys((2, 3, 4), STATE_IN_FLIGHT),
        **dict.fromkeys((5, 6), STATE_PENDING),
    }
    check(tmp_path / "buffer.db", buf)
    assert [e.seq for e in await buf.claim(10)] == [2, 3, 4]
    assert [e.seq for e in await buf.claim(10)] == [5, 6]
    check(tmp_path / "buffer.db", buf)


async def test_a_claim_smaller_than_what_was_claimed_ahead_gets_its_limit_and_the_rest_next(
    buf: Buffer,
) -> None:
    await buf.append(scan("a", 0))
    await buf.claim(10)
    assert await buf.claim(10) == []
    await commit_together(buf, [scan("a", n) for n in range(1, 5)])
    assert [e.seq for e in await buf.claim(3)] == [2, 3, 4]
    assert [e.seq for e in await buf.claim(3)] == [5]


async def test_a_pending_row_stops_claiming_ahead_so_nothing_overtakes_it(
    buf: Buffer, tmp_path: Path
) -> None:
    """A released row is pending again: later commits go in pending behind it, and the claims
    return the device's events in seq order."""
    await buf.append(scan("a", 0))
    first = await buf.claim(10)
    assert await buf.claim(10) == []
    await buf.release(first)
    await buf.append(scan("a", 1))
    assert states(tmp_path / "buffer.db") == {1: STATE_PENDING, 2: STATE_PENDING}
    assert [e.seq for e in await buf.claim(10)] == [1, 2]
    check(tmp_path / "buffer.db", buf)


async def test_releasing_every_in_flight_row_takes_back_what_was_claimed_ahead(
    buf: Buffer, tmp_path: Path
) -> None:
    """The session ended before its pump was handed the rows: they are pending again, and
    the next session's first claim reads each of them once."""
    await buf.append(scan("a", 0))
    await buf.claim(10)
    assert await buf.claim(10) == []
    await buf.append(scan("a", 1))
    assert await buf.release_in_flight() == 2
    assert states(tmp_path / "buffer.db") == {1: STATE_PENDING, 2: STATE_PENDING}
    assert [e.seq for e in await buf.claim(10)] == [1, 2]
    assert await buf.claim(10) == []
    check(tmp_path / "buffer.db", buf)


async def test_a_commit_that_returns_after_a_release_asked_behind_it_hands_nothing_out(
    buf: Buffer, tmp_path: Path
) -> None:
    """The commit claims ahead on the SQLite thread; a release asked before it returns runs
    after it and makes its rows pending again: handing them out too would send them twice."""
    await buf.append(scan("a", 0))
    await buf.claim(10)
    assert await buf.claim(10) == []
    first, behind_the_commit = Blocker(), Blocker()
    holding = await first.hold(buf._db)
    stored = buf.append_nowait(scan("a", 1))
    async with asyncio.timeout(5):
        while not buf._db._asked:  # the commit, behind the first blocker
            await asyncio.sleep(0.001)
    sharing = asyncio.create_task(buf._db.write(behind_the_commit, durable=False))
    await asyncio.sleep(0)
    first.release.set()
    await holding
    await behind_the_commit.until_running()  # the commit ran: its row went in in flight
    releasing = asyncio.create_task(buf.release_in_flight())
    await asyncio.sleep(0)
    behind_the_commit.release.set()
    await sharing
    assert (await stored).seq == 2
    assert await releasing == 2, "the row claimed ahead was in flight, then released"
    assert [e.seq for e in await buf.claim(10)] == [1, 2]
    assert await buf.claim(10) == []
    check(tmp_path / "buffer.db", buf)


async def test_a_commit_that_fails_claims_nothing_and_the_next_one_is_claimed(
    buf: Buffer, tmp_path: Path
) -> None:
    """A rolled-back transaction leaves no row and nothing to hand out; the room is not
    lost for good: the next claim looks again and the next commit's rows reach it."""
    await buf.append(scan("a", 0))
    await buf.claim(10)
    assert await buf.claim(10) == []

    def fail(_conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    blocker = Blocker()
    holding = await blocker.hold(buf._db)
    stored = buf.append_nowait(scan("a", 1))
    async with asyncio.timeout(5):
        while not buf._db._asked:
            await asyncio.sleep(0.001)
    failing = asyncio.create_task(buf._db.write(fail, durable=False))
    await asyncio.sleep(0)
    blocker.release.set()
    await holding
    with pytest.raises(sqlite3.OperationalError):
        await failing
    assert (await stored).seq == 2  # the failing write was rolled back alone
    assert [e.seq for e in await buf.claim(10)] == [2]
    check(tmp_path / "buffer.db", buf)


async def test_a_reopened_buffer_puts_rows_claimed_ahead_back_to_pending(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buf = await Buffer.open(path, max_bytes=10**8)
    await buf.append(scan("a", 0))
    await buf.claim(10)
    assert await buf.claim(10) == []
    await buf.append(scan("a", 1))
    await buf.close()
    again = await Buffer.open(path, max_bytes=10**8)
    try:
        assert states(path) == {1: STATE_PENDING, 2: STATE_PENDING}
        assert [e.seq for e in await again.claim(10)] == [1, 2]
        check(path, again)
    finally:
        await again.close()


async def test_a_claim_that_reads_the_rest_of_a_commit_claimed_ahead_returns_the_ahead_first(
    buf: Buffer, tmp_path: Path
) -> None:
    """Room for 3, a commit of 5, and a claim asked behind it: the commit claims 3 ahead and
    leaves 2 pending, which the claim reads. Its caller resumes after the commit's, so it must
    return the 3 claimed ahead before the 2 it read (sent after them, the device's events
    would go out of seq order), and never more than its limit with them."""
    await buf.append(scan("a", 0))
    await buf.claim(10)
    assert await buf.claim(3) == []
    blocker = Blocker()
    holding = await blocker.hold(buf._db)
    futures = [buf.append_nowait(scan("a", n)) for n in range(1, 6)]
    async with asyncio.timeout(5):
        while not buf._db._asked:  # the commit, behind the blocker
            await asyncio.sleep(0.001)
    claiming = asyncio.create_task(buf.claim(10))
    await asyncio.sleep(0)
    blocker.release.set()
    await holding
    for future in futures:
        await future
    assert [e.seq for e in await claiming] == [2, 3, 4, 5, 6]
    assert await buf.claim(10) == []
    check(tmp_path / "buffer.db", buf)
