"""Adversarial review of the re-read mends (4101d15): first reads open their lazy read-only
connection under one ``asyncio.Lock`` (``Buffer._opening_reader``, shared by ``stats()`` and the
replay reads), ``_open_read_only`` refuses before and after opening once closing, and a read
checks ``_closing`` once it holds the reader. On a real SQLite file, real aiosqlite threads and
real asyncio; only the timing of an open is arranged (held after the real open returned). The
hole it proved (fixed since; a plain test) and the suspicions it dismissed (plain tests pinning the
reason where one can).

Dismissed without a test of their own:

- ``stats()`` and the replay reads blocking each other through the one lock. It is held only
  around a first open (one per kind per buffer, a few milliseconds: a thread start, a connect, a
  ``PRAGMA busy_timeout`` that touches no file); the queries run after it is let go, ``stats()``
  on its own connection and the replay reads under their ``BufferConnection``'s lock. Once both
  are open, ``async with`` on a free ``asyncio.Lock`` takes it without yielding (3.11). In the
  daemon the first ``stats()`` runs at start-up (daemon.py) before replay commands are served,
  so housekeeping's samples and the replay worker never meet at the lock in normal operation;
  the only price is the one proved above (a stuck or slow open stalls reads of both kinds).
- ``publish()`` missing a freed packet id with ``await self.ids_freed()``: called with no
  argument, ``ids_freed`` calls ``arm_ids_freed()`` in its coroutine's first step, and awaiting a
  fresh coroutine runs that step at once, with no loop turn between the ``while`` check and the
  arming: the same step as ``self.ids_freed(self.arm_ids_freed())`` before. ``_acked`` resolves
  the armed future before it pops the waiter, and a PUBACK that came before the check is already
  in ``free_ids()``/``_waiters`` (the check then passes), so none is lost.
- ``BufferConnection.close``'s merged early return (both branches had the same body) and
  ``demo/session.py``'s ``_exit_code`` (gateway/demo.py then; ``exception()`` read once after
  ``done()`` and not ``cancelled()``: the same outcomes): behaviour unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosqlite
import pytest

import buffer.store
from buffer.store import Buffer, BufferClosedError
from tests.unit.buffer.test_append_nowait import make_event

Read = Callable[[Buffer], Awaitable[object]]


async def _stats(b: Buffer) -> object:
    return await b.stats()


async def _check_replay(b: Buffer) -> object:
    return await b.check_replay("a", 1, 1)


READS = pytest.mark.parametrize("read", [_stats, _check_replay], ids=["stats", "check_replay"])


def _sqlite_threads() -> list[threading.Thread]:
    """aiosqlite's worker threads still alive (not daemon threads: one keeps a process up)."""
    return [
        t for t in threading.enumerate() if "_connection_worker_thread" in t.name and t.is_alive()
    ]


async def _no_sqlite_threads_left() -> None:
    async with asyncio.timeout(5):
        while _sqlite_threads():
            await asyncio.sleep(0.01)


def _held_open(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    """Readers open for real, then wait for ``may_return``; ``opening`` is set once one is open."""
    real_open = buffer.store.open_reader
    opening = asyncio.Event()
    may_return = asyncio.Event()

    async def open_reader(path: Path) -> aiosqlite.Connection:
        conn = await real_open(path)
        opening.set()
        await may_return.wait()
        return conn

    monkeypatch.setattr(buffer.store, "open_reader", open_reader)
    return opening, may_return


@pytest.mark.parametrize("holder", [_stats, _check_replay], ids=["behind_stats", "behind_replay"])
@READS
async def test_a_read_after_close_is_refused_at_once_while_another_reads_open_is_unfinished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, holder: Read, read: Read
) -> None:
    """docs/buffer.md: appends asked for once ``close()`` began "are refused at once with
    ``BufferClosedError``", and reads once the close began "raise ``BufferClosedError`` too".
    Before 4101d15 both ``stats()`` and ``_replay_reads`` began with ``if self._closing: raise``;
    now the first thing they do is ``async with self._opening_reader``, and the ``_closing``
    check is inside ``_open_read_only`` or after the lock. So while one first read is opening
    its connection (a thread start, a connect and a PRAGMA round trip; held here after the real
    open returned, as a slow or stuck open would), every read asked for later, of either kind,
    even after ``close()`` has returned, waits for that open (and, once closing, its close) to
    finish before it is told the buffer is closed; an open that never returns hangs them all.
    ``close()`` itself does not wait (it does not take the lock), which is checked first.

    Was PROVEN (4101d15 had dropped the check before the lock); fixed: each read checks
    ``_closing`` before it waits for the lock."""
    opening, may_return = _held_open(monkeypatch)
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    await b.append_nowait(make_event("a", 1))
    first = asyncio.ensure_future(holder(b))
    try:
        async with asyncio.timeout(5):
            await opening.wait()  # the first read holds _opening_reader, its open unfinished
            await b.close()  # returns: the close does not take the lock
        with pytest.raises(BufferClosedError):
            async with asyncio.timeout(1):  # a refusal is one step, not a second
                await read(b)
    finally:
        may_return.set()
        with contextlib.suppress(Exception):
            await first
        await b.close()


@READS
async def test_dismissed_a_close_between_a_reads_open_and_its_assignment_leaks_no_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read: Read
) -> None:
    """DISMISSED: "a close between open and assignment" and "does ``_close`` take
    ``_opening_reader``? should it?". ``_close`` sets ``_closing`` in its first step and does not
    take the lock, so it never waits on an open (it returns while one is held here: a close
    that took the lock would inherit any stuck open, the daemon's shutdown with it). The open
    that returns afterwards meets ``_closing`` in ``_open_read_only`` and closes its connection
    there; from that check to ``self._reader = ...`` / ``BufferConnection(...)`` there is no
    await, so no close can come between them. The read is refused, and no aiosqlite thread is
    left (the writer's and the held reader's are gone)."""
    assert not _sqlite_threads()
    opening, may_return = _held_open(monkeypatch)
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    await b.append_nowait(make_event("a", 1))
    first = asyncio.ensure_future(read(b))
    try:
        async with asyncio.timeout(5):
            await opening.wait()
            await b.close()
            while len(_sqlite_threads()) > 1:  # the writer's thread ends just after its close
                await asyncio.sleep(0.01)
        assert len(_sqlite_threads()) == 1, "the held reader's thread, not yet closed"
        may_return.set()
        with pytest.raises(BufferClosedError):
            await first
        await _no_sqlite_threads_left()
    finally:
        may_return.set()
        with contextlib.suppress(Exception):
            await first
        await b.close()


@READS
@pytest.mark.parametrize("turns", range(8))
async def test_dismissed_a_read_cancelled_mid_open_leaks_no_reader_and_frees_the_lock(
    tmp_path: Path, read: Read, turns: int
) -> None:
    """DISMISSED: "a read cancelled while holding the lock mid-open". Cancelled in any of its
    first loop turns (the connect on aiosqlite's thread, the ``PRAGMA busy_timeout`` round trip,
    or later), with the real open: aiosqlite 0.22's ``_connect`` stops its thread on any
    ``BaseException`` (the SQLite connection the thread made is dropped with it), and
    ``open_reader`` closes the connection if the PRAGMA step is interrupted; ``async with``
    lets ``_opening_reader`` go. The next read opens its reader and answers, and once the
    buffer is closed no aiosqlite thread is left."""
    assert not _sqlite_threads()
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    try:
        await b.append_nowait(make_event("a", 1))
        task = asyncio.ensure_future(read(b))
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with asyncio.timeout(5):
            assert await read(b) is not None
    finally:
        await b.close()
    await _no_sqlite_threads_left()
