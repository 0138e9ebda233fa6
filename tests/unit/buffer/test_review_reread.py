"""Adversarial review of the re-read mends (4101d15): first reads open their lazy read-only
connection under one ``asyncio.Lock`` (``Buffer._opening_reader``, shared by ``stats()`` and the
replay reads), ``_open_read_only`` refuses before and after opening once closing, and a read
checks ``_closing`` once it holds the reader. On a real SQLite file, real aiosqlite threads and
real asyncio; only the timing of an open is arranged (held after the real open returned). The
hole it proved (``xfail(strict=True)``) and the suspicions it dismissed (plain tests pinning the
reason)."""

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


@pytest.mark.xfail(
    strict=True,
    raises=TimeoutError,
    reason=(
        "PROVEN: a read asked for after close() returned is not refused at once: it waits on "
        "_opening_reader behind another read's unfinished open (either kind), because 4101d15 "
        "moved the _closing check from the read's first line to inside the lock"
    ),
)
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
    ``close()`` itself does not wait (it does not take the lock), which is checked first."""
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
