"""A claim with nothing pending answers without a transaction, and never misses a pending row.

The publisher's pump asks for a claim at every PUBACK that frees window space; most found
nothing (62 % at 500 events/s in bench.latency), each a transaction the next scan's commit
waited behind. The buffer now remembers that its last claim took every pending row, until a
write that can make one (a commit, a release, an unhold) returns. Real SQLite file; another
connection holding the write lock shows whether a claim touched the database at all.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from buffer.store import Buffer, NewEvent


def make_event(device: str, n: int) -> NewEvent:
    def render(seq: int) -> bytes:
        return json.dumps({"n": n, "seq": seq}).encode()

    return NewEvent(f"{device}-{n}", device, "t", "t", False, render)


async def claimed_seqs(buf: Buffer, limit: int = 10) -> list[int]:
    return [e.seq for e in await buf.claim(limit)]


async def test_a_claim_after_one_that_took_everything_touches_no_database(
    buf: Buffer, tmp_path: Path
) -> None:
    """With another connection holding the write lock, a transaction would wait (busy timeout,
    5 s); the claim after one that emptied the pending rows answers at once, with nothing."""
    await buf.append(make_event("a", 1))
    assert await claimed_seqs(buf) == [1]
    holder = sqlite3.connect(tmp_path / "buffer.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        assert await asyncio.wait_for(buf.claim(10), 0.5) == []
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_a_claim_that_filled_its_limit_leaves_the_next_one_looking(buf: Buffer) -> None:
    """Taking exactly ``limit`` rows says nothing about the rest: they are claimed next."""
    for n in range(3):
        await buf.append(make_event("a", n))
    assert await claimed_seqs(buf, 2) == [1, 2]
    assert await claimed_seqs(buf, 2) == [3]
    assert await claimed_seqs(buf, 2) == []


async def test_every_write_that_can_make_a_pending_row_is_seen_by_the_next_claim(
    buf: Buffer,
) -> None:
    """Commit, release, unhold and releasing the whole session each put rows back in reach;
    a hold does not (held rows wait for the next broker session)."""
    await buf.append(make_event("a", 1))
    first = await buf.claim(10)
    assert [e.seq for e in first] == [1]
    assert await claimed_seqs(buf) == []

    await buf.append(make_event("a", 2))
    second = await buf.claim(10)
    assert [e.seq for e in second] == [2]

    await buf.release(first)
    again = await buf.claim(10)
    assert [e.seq for e in again] == [1]

    await buf.hold(again)
    assert await claimed_seqs(buf) == []
    assert await buf.unhold() == 1
    assert await claimed_seqs(buf) == [1]

    assert await buf.release_in_flight() == 2
    assert await claimed_seqs(buf) == [1, 2]


async def test_a_commit_queued_behind_an_emptying_claim_is_claimed(buf: Buffer) -> None:
    """A claim that finds nothing and a commit racing it: whichever order they run in, the
    committed row is claimed by the next claim (the flag is set after the commit's write)."""
    await buf.append(make_event("a", 0))
    await buf.claim(10)
    for n in range(1, 30):
        racing_claim = asyncio.ensure_future(buf.claim(10))
        stored = buf.append_nowait(make_event("a", n))
        got = await racing_claim
        await stored
        if not got:
            assert await claimed_seqs(buf) == [n + 1]
        else:
            assert [e.seq for e in got] == [n + 1]
            assert await claimed_seqs(buf) == []


async def test_a_commit_sharing_the_transaction_of_a_claim_that_ran_before_it_is_claimed(
    buf: Buffer, tmp_path: Path
) -> None:
    """A claim and a commit asked for while another write waits share one transaction
    (buffer/connection.py), the claim first: it finds nothing, the commit adds a row. The
    claim's caller ran that transaction, so it resumes after the commit's caller: had "found
    nothing" been believed when the claim returned, the row would sit unclaimed until the next
    write. The next claim takes it."""
    await buf.append(make_event("a", 1))
    claimed = await buf.claim(10)
    assert await buf.unhold() == 0  # nothing held, but the next claim has to look
    holder = sqlite3.connect(tmp_path / "buffer.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        waiting = asyncio.create_task(buf.mark_sent(claimed))  # waits for the file's lock
        await asyncio.sleep(0.05)
        claim = asyncio.create_task(buf.claim(10))
        await asyncio.sleep(0)
        stored = buf.append_nowait(make_event("a", 2))
        async with asyncio.timeout(5):
            while len(buf._db._asked) < 2:  # the claim and the commit, behind mark_sent
                await asyncio.sleep(0.001)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await waiting
    assert await claim == [], "the claim ran first, before the row was there"
    assert (await stored).seq == 2
    assert await claimed_seqs(buf) == [2]
