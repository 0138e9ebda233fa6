"""Review of 64376c7 (``Buffer.close`` twice is harmless; close no longer drains the queue) on
a real SQLite file: the three holes it proved (an append queued before a writer that never ran
left unanswered, two concurrent closes hanging, a close cut short never finished), now fixed,
and what it dismissed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from buffer.store import Buffer, BufferClosedError
from tests.unit.buffer.test_append_nowait import (
    WriteHold,
    file_rows,
    make_event,
    seq_after_reopen,
)


async def thread_ended(conn: aiosqlite.Connection) -> bool:
    """Whether aiosqlite's worker thread ends within 2 s (its close returns just before)."""
    for _ in range(200):
        if not conn._thread.is_alive():
            return True
        await asyncio.sleep(0.01)
    return False


async def test_an_append_queued_before_a_writer_that_never_ran_is_settled_by_close(
    tmp_path: Path,
) -> None:
    """Fixed (PROVEN by the review). ``Buffer.open`` returns before the writer task took its first step, and until
    that task is done ``append_nowait`` queues (``healthy`` is True). Cancelled then (the loop
    shutting down, a task group torn down), the coroutine never starts: no ``_abandon``. The
    old ``close`` refused what was left in the queue; the new one skips a done writer and
    leaves the future (which refuses cancellation) unsettled for good: its awaiter hangs.
    Passes on 64376c7^ (its drain refused the event): a regression of that commit."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    writer = b._writer
    assert writer is not None
    future = b.append_nowait(make_event("a", 1))  # the writer has not run yet
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    await b.close()
    assert file_rows(b.path) == [], "never committed: refusing it is the right answer"
    assert future.done(), "close left a queued append unsettled: its awaiter waits forever"
    assert isinstance(future.exception(), BufferClosedError)


async def test_two_concurrent_closes_with_the_stats_reader_open_both_return(
    tmp_path: Path,
) -> None:
    """Fixed (PROVEN by the review). "Twice is harmless" holds one after the other (``_reader`` is None by then), not
    from two tasks: both find ``self._reader`` set and call ``aiosqlite.Connection.close``;
    aiosqlite's ``close`` ends with ``stop()``, whose sentinel the second call queues after the
    worker thread already left on the first's, so the second ``close`` never returns (and the
    daemon's stop with it). Older than 64376c7 (its parent hangs the same way), but it is the
    "closed twice" the commit calls harmless."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    await b.append_nowait(make_event("a", 1))
    await b.stats()  # opens the statistics reader, as the checkpoint and metrics do
    closes = [asyncio.create_task(b.close()) for _ in range(2)]
    _done, pending = await asyncio.wait(closes, timeout=5)
    for task in pending:
        task.cancel()
    await asyncio.gather(*closes, return_exceptions=True)
    assert not pending, f"{len(pending)} of the two closes still waiting after 5 s"


async def test_two_concurrent_closes_without_readers_settle_everything_once(
    tmp_path: Path,
) -> None:
    """DISMISSED (without the readers): the second close queues a second ``None`` behind the
    first (the writer returns at the first, the second is never read), ``BufferConnection.close``
    runs once under its lock (``if self._closed: return``), and the writer lock is released
    once (checked and cleared with no await between). Queued appends are all committed once."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    hold = WriteHold(b.path)
    queued = [b.append_nowait(make_event("a", n)) for n in range(4)]
    await asyncio.sleep(0.05)
    closes = [asyncio.create_task(b.close()) for _ in range(2)]
    await asyncio.sleep(0.05)
    with pytest.raises(BufferClosedError):
        b.append_nowait(make_event("a", 9))
    hold.release()
    async with asyncio.timeout(10):
        await asyncio.gather(*closes)
    assert [f.result().seq for f in queued] == [1, 2, 3, 4]
    assert file_rows(b.path) == [(f"a-{n}", "a", n + 1) for n in range(4)]
    assert b.transitions["stored"] == 4 and b.transitions["refused"] == 0
    assert await seq_after_reopen(tmp_path / "b.db", make_event("a", 4)) == 5  # the lock was let go


async def test_a_close_cut_short_is_finished_by_the_next_close(tmp_path: Path) -> None:
    """Fixed (PROVEN by the review). The idempotency flag is set before the work it stands for: a first
    ``Buffer.close`` cancelled while its ``BufferConnection.close`` awaits the WAL checkpoint
    (``CancelledError`` is no ``sqlite3.Error``, not suppressed) never reaches
    ``self._conn.close()``. The second close, the "shutdown path that closes again" the
    change is for, returns at ``if self._closed`` and releases the buffer's writer lock with
    the connection still open: its worker thread (not a daemon thread) keeps the process from
    exiting, and the file keeps its WAL."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    await b.append_nowait(make_event("a", 1))
    conn = b._db._conn
    closing = asyncio.create_task(b.close())
    for _ in range(1000):  # until BufferConnection.close has begun (its lock taken)
        if b._db._close_lock.locked():
            break
        await asyncio.sleep(0)
    assert b._db._close_lock.locked()
    closing.cancel()
    await asyncio.gather(closing, return_exceptions=True)
    await b.close()  # the shutdown path's second close
    try:
        assert b._lock_fd is None, "the second close released the writer lock"
        assert await thread_ended(conn), "the database connection was never closed"
    finally:
        if conn._connection is not None:  # let the test process exit
            await conn.close()


async def test_a_cancelled_close_still_commits_what_was_queued(tmp_path: Path) -> None:
    """Fixed (review of 64376c7): a close cancelled while a commit is under way is not cut
    short (it cancelled the writer: "outcome unknown" for the batch, queued appends refused);
    it goes on, every append queued before it is committed and answered once, the seqs have
    no gap, and a reopened buffer continues after them."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    hold = WriteHold(b.path)
    under_way = [b.append_nowait(make_event("a", n)) for n in range(2)]
    await asyncio.sleep(0.05)
    queued = [b.append_nowait(make_event("a", n)) for n in range(2, 4)]
    closing = asyncio.create_task(b.close())
    await asyncio.sleep(0.05)
    closing.cancel()
    await asyncio.gather(closing, return_exceptions=True)
    with pytest.raises(BufferClosedError):
        b.append_nowait(make_event("a", 9))
    hold.release()
    async with asyncio.timeout(10):
        await b.close()  # the same close, still going
    assert [f.result().seq for f in under_way + queued] == [1, 2, 3, 4]
    assert file_rows(b.path) == [(f"a-{n}", "a", n + 1) for n in range(4)]
    assert await seq_after_reopen(tmp_path / "b.db", make_event("a", 9)) == 5
    with sqlite3.connect(tmp_path / "b.db") as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_a_connection_close_cut_short_in_its_checkpoint_is_done_by_the_next(
    tmp_path: Path,
) -> None:
    """Fixed (review of 64376c7): BufferConnection marks itself closed only once it is, so a
    close cancelled during its WAL checkpoint is finished by the next call."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    await b.append_nowait(make_event("a", 1))
    db = b._db
    conn = db._conn
    closing = asyncio.create_task(db.close())
    for _ in range(1000):
        if db._close_lock.locked():
            break
        await asyncio.sleep(0)
    closing.cancel()
    await asyncio.gather(closing, return_exceptions=True)
    await db.close()
    assert await thread_ended(conn), "the database connection was never closed"
    await b.close()


@pytest.mark.parametrize(
    "error", [sqlite3.OperationalError("disk I/O error"), ValueError("closed")]
)
async def test_a_reader_that_fails_to_close_does_not_keep_the_buffer_open(
    tmp_path: Path, error: Exception
) -> None:
    """Closing the read-only connections (statistics, replays) can fail as aiosqlite does
    (``sqlite3.Error``, or ``ValueError`` for a connection already gone); such a failure,
    injected here because no fault we can cause makes a read-only close fail, must not keep
    the writer's connection open or the writer lock held."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    await b.append_nowait(make_event("a", 1))
    await b.stats()
    replay = await b._replay_reads()
    conn = b._db._conn

    async def failing_close() -> None:
        raise error

    real_closes = []
    for reader in (b._reader, replay):
        assert reader is not None
        real_closes.append(reader.close)
        reader.close = failing_close  # type: ignore[method-assign]
    await b.close()
    assert b._lock_fd is None, "the writer lock is let go"
    assert await thread_ended(conn), "the writer's connection is closed"
    for close in real_closes:  # the injected failure left their threads running: end them here,
        await close()  # not after this loop closed (a thread exception warning in the suite)


async def test_a_writer_cancelled_while_close_waits_for_it_still_lets_close_finish(
    tmp_path: Path,
) -> None:
    """The loop's teardown may cancel the writer while ``close`` waits for it to commit what
    was queued: close still refuses nothing it cannot answer, closes the file and lets the
    writer lock go (a CancelledError out of its wait must not cut it short)."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    hold = WriteHold(b.path)
    future = b.append_nowait(make_event("a", 1))
    await asyncio.sleep(0.05)  # the writer is in the commit, waiting for the lock
    conn = b._db._conn
    closing = asyncio.create_task(b.close())
    await asyncio.sleep(0.05)
    assert b._writer is not None
    b._writer.cancel()
    hold.release()
    async with asyncio.timeout(10):
        await closing
    assert future.done()
    assert b._lock_fd is None
    assert await thread_ended(conn)
