"""The buffer's one SQLite connection, and the single way to write through it.

Every write is a plain function run on aiosqlite's thread under one lock: it sets its own
durability (``PRAGMA synchronous``), opens ``BEGIN IMMEDIATE``, runs, and commits, all in one
round trip. Nothing decides the sync mode outside that function, so no other writer can change
it between the decision and the commit (the bug this shape replaced: a cached mode, checked
before the lock was taken, let an append commit without fsync after a non-durable write).

Reads that must see the writer's state (the replay queries) run under the same lock, in one
round trip too. Statistics have a read-only connection of their own (buffer/stats.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import aiosqlite

_T = TypeVar("_T")

DURABLE = "FULL"
"""Every commit is fsynced before it returns: what an append needs before it reports stored."""
LAZY = "NORMAL"
"""No fsync of its own (WAL stays consistent; the next durable commit's fsync covers it)."""


def read_only_uri(path: str | Path) -> str:
    """The SQLite URI that opens ``path`` read-only (``mode=ro`` needs a URI).

    Percent-encoded: a "#" or "?" in a state directory would otherwise end the path there, and
    SQLite would open (or fail to find) another file.
    """
    return f"{Path(path).absolute().as_uri()}?mode=ro"


def run_in_transaction(
    conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], _T], *, durable: bool
) -> _T:
    """``fn`` in one write transaction with the durability it asks for (on the SQLite thread).

    The pragma is issued on every write, not cached: it costs about a microsecond, and a cache
    is exactly what once went stale.
    """
    conn.execute(f"PRAGMA synchronous={DURABLE if durable else LAZY}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return result


class BufferConnection:
    """The writer's connection and the lock that makes its round trips one at a time."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._closed = False

    async def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` with the raw connection on aiosqlite's thread, in one round trip.

        aiosqlite has no public API for this: ``_execute`` and ``_conn`` are what its own
        methods use; our version range pins them, and tests/unit/test_library_contracts.py fails
        loudly if an upgrade changes them.
        """
        result: _T = await self._conn._execute(fn, self._conn._conn)  # type: ignore[no-untyped-call]  # noqa: SLF001
        return result

    async def write(self, fn: Callable[[sqlite3.Connection], _T], *, durable: bool) -> _T:
        """Run ``fn`` as one transaction, fsynced at commit when ``durable``.

        Rolled back if it raises. The only way anything in the buffer writes.
        """
        async with self._lock:
            return await self._call(lambda conn: run_in_transaction(conn, fn, durable=durable))

    async def read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` (reads only) on the writer's connection, between writes."""
        async with self._lock:
            return await self._call(fn)

    async def close(self) -> None:
        """Checkpoint the WAL into the file (so a clean stop leaves one file) and close.

        A second call does nothing: a shutdown path that closes again must not fail there.
        """
        async with self._lock:
            if self._closed:
                return
            if not self._conn._thread.is_alive() or self._conn._connection is None:  # noqa: SLF001
                # Nothing left to checkpoint or close: its thread died handing a result to an
                # event loop already closed (a loop's teardown; the SQLite connection, bound to
                # that thread, is closed when collected), or a close failed in SQLite and
                # aiosqlite let the connection go anyway (in a finally) and stops its thread.
                self._closed = True
                return
            with contextlib.suppress(sqlite3.Error):
                await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await self._conn.close()
            # Only now: a close cut short (cancelled in the checkpoint) is done by the next.
            self._closed = True
