"""Adversarial review of shared write transactions (buffer/connection.py) and the claim's
nothing-pending flag (``Buffer._may_have_pending``), as of 6a6c4bb.

On a real SQLite file through aiosqlite and real asyncio. Which writes share a transaction is
decided by the test, not by timing: a write (standing for any other: a sent mark, a settle, a
claim) holds aiosqlite's thread on a ``threading.Event`` until the test has asked for the
others. The first two tests were PROVEN holes (xfail strict), fixed since and now plain tests;
the others pin a dismissal.

Proven, as of 6a6c4bb: a finished write's caller resumed only once it got the lock again, and
might first run the next transaction itself (whoever took the lock ran every write waiting);
so what callers update in memory after their write (``prune``'s ``self._bytes -= freed``) was
not applied when the next transaction ran, and ``_insert_making_room`` (on the SQLite thread)
read ``self._bytes`` from the loop's object, counting bytes a prune already deleted: a scan
refused in an emptied buffer. And a caller running a transaction cancelled let the lock go,
so a prune's caller resumed while ``_insert_making_room`` ran and its bytes were counted back:
the buffer's size overstated for good. Fixed: the connection runs its round trips from a queue
of its own, starting the next only once the last one's outcomes were handed out (their callers
resume before it reaches the SQLite thread), and ``_insert_making_room`` reads the bytes held
from the devices' kept counts inside its own transaction, handing back only its difference.
(Dismissals below written against 6a6c4bb's lock and "leader"; the queue keeps their reasons:
round trips still run in the order asked, one at a time, and a cancelled caller's write that
started still commits, its outcome dropped.)

Dismissed:

- Outcomes before COMMIT, or to the wrong write: ``_hand_out`` is the transaction task's done
  callback, after ``run_in_one_transaction`` returned (after COMMIT); outcomes are zipped
  (strict) with the writes in the order they ran. A claim after an insert in the same
  transaction returns its rows only once COMMIT returned; if SQLite ends the transaction, every
  write fails, the claim too (pinned below).
- Exceptions shared: only a whole-transaction failure hands one exception object to several
  futures, and then none of the writes committed; a shared traceback is cosmetic.
- Durability: every events row is inserted by a durable write, and a shared transaction is
  FULL if any write in it is, so a claim (lazy) can only see rows whose COMMIT fsynced; settle
  is durable, and its caller hears of it only after COMMIT (inbound acks only after settle).
- A failing COMMIT / ``ROLLBACK TO`` failing: the error leaves ``each`` or COMMIT, ``run_in_
  transaction`` rolls back, every write gets the error; nothing of theirs committed. (A COMMIT
  whose WAL fsync failed but whose frames recover after a crash is SQLite's and predates this.)
- BaseException inside a write: not caught per savepoint, so the whole transaction rolls back
  and all writes get it; the leader re-raises it (not an ``Exception``): consistent.
- No write function catches an sqlite3 error itself (grep), so none can carry on in
  autocommit after SQLite ended the transaction; the ``in_transaction`` check sees the rest.
- Seqs: only the writer task inserts, one ``_insert`` at a time, and ``_last_seq`` changes only
  in it, before its next ``_rows``; ``_insert_making_room``'s read of ``_last_seq`` is safe.
- Leader cancelled: the transaction is shielded and aiosqlite's thread runs round trips in
  order, so a transaction started after the lock is let go still runs after it; reads and
  ``close()`` taking the lock meanwhile queue behind it on the thread. Writes waiting for the
  lock behind a ``close()`` fail with aiosqlite's "no active connection", as they did when
  each write took the lock alone, and never hang (pinned below). No write is stranded in ``_asked``: nothing awaits
  between appending to it and waiting for the lock, and a cancelled one removes itself.
- Writer task cancelled (``Buffer._abandon``) / loop shutdown (transaction task cancelled):
  outcomes become "unknown" (no feedback), as a commit already on the thread always did; the
  window now also covers a non-leader whose outcome was set but which waits for the lock.
- The flag: every write that can make a pending row (insert, ``_move``/``_move_all`` to
  pending) bumps the counter synchronously right before it is appended to ``_asked``; writes
  run in the order asked (FIFO list, FIFO ``asyncio.Lock``, serial aiosqlite thread, also after
  a leader's cancellation); settle, mark_sent (``max(state, sent)``), hold, prune and eviction
  never make a pending row; ``_load`` runs before the flag is ever cleared (it starts True); a
  claim asked after such a write sees its rows, one asked before it does not clear the flag;
  claims with ``live_after`` take rows on both sides of the boundary before comparing with the
  limit; a failed or cancelled claim never clears it; a commit whose caller failed or was
  cancelled had bumped the counter before asking. Pinned below for a release asked after a
  claim in the same transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from buffer.store import Buffer, BufferFullError, NewEvent
from tests.unit.buffer.holds import Blocker


def sized(device: str, n: int, size: int) -> NewEvent:
    """A scan whose payload is ``size`` bytes."""
    return NewEvent(f"{device}-{n}", device, "t", "t", False, lambda _seq: b"x" * size)


def gated(
    device: str, n: int, size: int, gate: threading.Event
) -> tuple[NewEvent, threading.Event]:
    """A scan of ``size`` bytes whose rendering off the loop's thread (``_insert_making_room``
    renders again on the SQLite thread) waits for ``gate``; the event set when it does."""
    main = threading.main_thread()
    rendering = threading.Event()

    def render(_seq: int) -> bytes:
        if threading.current_thread() is not main:
            rendering.set()
            assert gate.wait(10), "gate never opened"
        return b"x" * size

    return NewEvent(f"{device}-{n}", device, "t", "t", False, render), rendering


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not check():
            await asyncio.sleep(0.001)


async def held_bytes(buf: Buffer) -> int:
    return int(
        (
            await buf._db.read(
                lambda conn: conn.execute(
                    "SELECT coalesce(sum(length(payload)), 0) FROM events"
                ).fetchone()
            )
        )[0]
    )


@pytest.fixture
async def full(tmp_path: Path) -> AsyncIterator[Buffer]:
    """A buffer capped at 1,000 bytes holding 900 bytes of sent scans (nine of 100)."""
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=1_000)
    for n in range(9):
        await buf.append(sized("a", n, 100))
    await buf.mark_sent(await buf.claim(10))
    assert buf.stored_bytes == 900
    yield buf
    await buf.close()


async def prune_everything(buf: Buffer) -> asyncio.Task[int]:
    task = asyncio.create_task(buf.prune(0, now=time.time() + 60))
    await asyncio.sleep(0)
    return task


async def test_a_commit_after_a_shared_prune_sees_the_room_the_prune_made(full: Buffer) -> None:
    buf = full
    first = Blocker()
    holder = await first.hold(buf._db)
    second = Blocker()  # a sent mark, a settle: any write asked before the prune
    asker = asyncio.create_task(buf._db.write(second, durable=False))
    await asyncio.sleep(0)
    pruning = await prune_everything(buf)
    first.release.set()
    await holder
    await second.until_running()  # one transaction: [second, prune]
    stored = buf.append_nowait(sized("a", 9, 200))  # 900 + 200 > 1,000: must make room
    await until(lambda: len(buf._db._asked) == 1)
    second.release.set()
    await asker
    assert await pruning == 9
    try:
        result = await stored
    except BufferFullError as exc:
        pytest.fail(f"scan refused in an empty buffer (cap 1,000, 200 bytes asked): {exc}")
    assert result.seq == 10
    assert buf.stored_bytes == await held_bytes(buf) == 200


async def test_the_buffer_size_stays_true_when_a_caller_is_cancelled_during_eviction(
    full: Buffer,
) -> None:
    buf = full
    first = Blocker()
    holder = await first.hold(buf._db)
    second = Blocker()
    asker = asyncio.create_task(buf._db.write(second, durable=False))
    await asyncio.sleep(0)
    # Any write whose caller can be cancelled (the publisher's at a session's end, say); as of
    # 6a6c4bb its caller ran the next transaction.
    status = asyncio.create_task(buf.set_device_status("a", "ok", "", "t"))
    await asyncio.sleep(0)
    pruning = await prune_everything(buf)
    first.release.set()
    await holder
    await second.until_running()  # [second, status, prune]
    gate = threading.Event()
    scan, rendering = gated("a", 9, 200, gate)
    stored = buf.append_nowait(scan)
    await until(lambda: len(buf._db._asked) == 1)
    second.release.set()
    await asker
    await until(rendering.is_set)
    status.cancel()  # cancelled while the commit that makes room runs
    assert await pruning == 9  # the prune's caller got the lock, and its bytes off
    gate.set()
    with contextlib.suppress(BufferFullError):  # refused here by the hole proven above
        await stored
    assert buf.stored_bytes == await held_bytes(buf), "counts what the prune deleted"
    # Else for good: a scan that fits (the prune emptied the buffer) is refused.
    assert (await buf.append(sized("a", 10, 200))).seq in (10, 11)


async def test_a_claim_sharing_a_transaction_sqlite_ended_returns_nothing_it_claimed(
    full: Buffer,
) -> None:
    """A commit, then a claim, then a write on which SQLite rolls the whole transaction back
    (a full disk): the claim fails with the others, no row is left in flight, the scan is
    refused as on a full disk, and the next commit is claimed."""
    buf = full

    def disk_full(conn: sqlite3.Connection) -> None:
        conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("database or disk is full")

    first = Blocker()
    holder = await first.hold(buf._db)
    stored = buf.append_nowait(sized("b", 0, 10))
    await until(lambda: len(buf._db._asked) == 1)
    claiming = asyncio.create_task(buf.claim(10))
    await asyncio.sleep(0)
    failing = asyncio.create_task(buf._db.write(disk_full, durable=True))
    await asyncio.sleep(0)
    assert len(buf._db._asked) == 3
    first.release.set()
    await holder
    with pytest.raises(BufferFullError):
        await stored
    with pytest.raises(sqlite3.OperationalError, match="full"):
        await claiming
    with pytest.raises(sqlite3.OperationalError, match="full"):
        await failing
    states = await buf._db.read(
        lambda conn: conn.execute("SELECT device, state FROM events WHERE state < 2").fetchall()
    )
    assert states == []
    assert (await buf.append(sized("b", 1, 10))).seq == 1
    assert [e.seq for e in await buf.claim(10)] == [1]


async def test_a_release_asked_after_an_emptying_claim_in_its_transaction_is_claimed(
    full: Buffer,
) -> None:
    """The claim runs first in the shared transaction and finds nothing; the release after it
    puts a row back. Whichever of the two callers resumes first, the next claim takes it."""
    buf = full
    await buf.append(sized("b", 0, 10))
    taken = await buf.claim(10)
    assert [e.seq for e in taken] == [1]
    assert await buf.unhold() == 0  # nothing held, but the next claim has to look
    first = Blocker()
    holder = await first.hold(buf._db)
    claiming = asyncio.create_task(buf.claim(10))
    await asyncio.sleep(0)
    releasing = asyncio.create_task(buf.release(taken))
    await asyncio.sleep(0)
    first.release.set()
    await holder
    assert await claiming == []
    await releasing
    assert [e.seq for e in await buf.claim(10)] == [1]


async def test_a_write_asked_while_close_waits_for_the_lock_fails_rather_than_hangs(
    tmp_path: Path,
) -> None:
    """``close()`` takes the lock before a write asked after it: that write finds the
    connection closed and says so (aiosqlite's "no active connection"); it is not left in
    ``_asked`` with nobody to run it."""
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=1_000)
    first = Blocker()
    holder = await first.hold(buf._db)
    closing = asyncio.create_task(buf.close())
    await asyncio.sleep(0.05)  # the writer stopped; close waits for the connection's lock
    late = asyncio.create_task(buf.set_device_status("a", "ok", "", "t"))
    await asyncio.sleep(0)
    first.release.set()
    await holder
    await asyncio.wait_for(closing, 5)
    with pytest.raises(ValueError, match="no active connection"):
        await asyncio.wait_for(late, 5)
    assert buf._db._asked == []


async def test_the_eviction_path_decides_on_the_bytes_in_the_file_not_the_loops_figure(
    full: Buffer,
) -> None:
    """The fix's second half, on its own: the loop's byte total lags behind a prune whose
    caller has not resumed yet (stood for here by raising it by what a prune freed). The commit
    then takes the path that makes room, which reads what the file holds in its own transaction:
    nothing is evicted or refused that fits, and the lag is not made permanent."""
    buf = full
    await buf.prune(0, now=time.time() + 60)
    assert buf.stored_bytes == 0
    buf._bytes += 900  # a prune's freed bytes, not yet subtracted on the loop
    stored = await buf.append(sized("a", 9, 200))
    assert stored.seq == 10
    assert buf.transitions["refused"] == 0
    assert buf.stored_bytes - 900 == await held_bytes(buf) == 200
