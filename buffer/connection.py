"""The buffer's one SQLite connection, and the single way to write through it.

Every write is a plain function run on aiosqlite's thread under one lock, in a transaction
that sets its own durability (``PRAGMA synchronous``), opens ``BEGIN IMMEDIATE``, runs, and
commits, all in one round trip. Nothing decides the sync mode outside that function, so no
other writer can change it between the decision and the commit (the bug this shape replaced: a
cached mode, checked before the lock was taken, let an append commit without fsync after a
non-durable write).

Writes asked for while another runs share the next transaction, in the order they were asked
for, each in a savepoint of its own (one that raises is rolled back alone and gets its
exception), fsynced if any of them asked for it; every one learns its outcome only once that
transaction committed. The appends' group commit, the publisher's claim and sent marks and the
confirms' settle used to queue one transaction each behind the lock: at 500 scans/s with
central confirming, ~720 transactions a second, which a scan's own commit waited behind.

Reads that must see the writer's state (the replay queries) run under the same lock, alone, in
one round trip too. Statistics have a read-only connection of their own (buffer/stats.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

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


@dataclass(slots=True)
class _Write:
    """A write asked for and not yet run: its function, its durability, its outcome."""

    fn: Callable[[sqlite3.Connection], Any]
    durable: bool
    outcome: asyncio.Future[Any]


def run_in_one_transaction(
    conn: sqlite3.Connection, writes: Sequence[_Write]
) -> list[tuple[bool, Any]]:
    """Every write in ``writes`` in one transaction (on the SQLite thread): (ok, value) each.

    Each runs in a savepoint: one that raises is rolled back alone and its exception is its
    outcome, unless SQLite rolled back the whole transaction on that error (a full disk or an
    I/O error may): then nothing the earlier ones did is left, and the exception is raised for
    all of them. So is a failed ``COMMIT``. Fsynced if any write asked to be durable.
    """
    if len(writes) == 1:  # the usual case when the box is quiet: no savepoint needed
        return [(True, run_in_transaction(conn, writes[0].fn, durable=writes[0].durable))]

    def each(conn: sqlite3.Connection) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        for write in writes:
            conn.execute("SAVEPOINT one_write")
            try:
                value = write.fn(conn)
            except Exception as exc:
                if not conn.in_transaction:  # SQLite ended the whole transaction
                    raise
                conn.execute("ROLLBACK TO one_write")
                conn.execute("RELEASE one_write")
                outcomes.append((False, exc))
            else:
                conn.execute("RELEASE one_write")
                outcomes.append((True, value))
        return outcomes

    return run_in_transaction(conn, each, durable=any(w.durable for w in writes))


def _hand_out(writes: Sequence[_Write], done: asyncio.Future[list[tuple[bool, Any]]]) -> None:
    """Hand each write its outcome once their transaction is over (committed or not)."""
    if done.cancelled():  # only as the event loop shuts down: nobody is left to tell
        for write in writes:
            write.outcome.cancel()
        return
    error = done.exception()
    outcomes = done.result() if error is None else [(False, error)] * len(writes)
    for write, (ok, value) in zip(writes, outcomes, strict=True):
        if write.outcome.done():  # its caller was cancelled and stopped waiting
            continue
        if ok:
            write.outcome.set_result(value)
        else:
            write.outcome.set_exception(value)


class BufferConnection:
    """The writer's connection and the lock that makes its round trips one at a time."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._closed = False
        self._asked: list[_Write] = []
        """Writes asked for and not yet taken into a transaction, in the order asked."""

    async def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` with the raw connection on aiosqlite's thread, in one round trip.

        aiosqlite has no public API for this: ``_execute`` and ``_conn`` are what its own
        methods use; our version range pins them, and tests/unit/test_library_contracts.py fails
        loudly if an upgrade changes them.
        """
        result: _T = await self._conn._execute(fn, self._conn._conn)  # type: ignore[no-untyped-call]  # noqa: SLF001
        return result

    async def write(self, fn: Callable[[sqlite3.Connection], _T], *, durable: bool) -> _T:
        """Run ``fn`` in a transaction, fsynced at commit when ``durable``; its result.

        Rolled back if it raises. The only way anything in the buffer writes. Writes asked for
        while the lock is held share the next transaction (module docstring): whoever takes
        the lock first runs all that are waiting, in the order asked; the others find theirs
        done. Cancelled before its write was taken, it is not run; after, it runs (as a
        transaction already on the SQLite thread always did) and its outcome is dropped.
        """
        write = _Write(fn, durable, asyncio.get_running_loop().create_future())
        self._asked.append(write)
        try:
            async with self._lock:
                if self._asked:  # ours among them, unless an earlier holder took it
                    await self._run_asked()
        except asyncio.CancelledError:
            if write in self._asked:
                self._asked.remove(write)
            write.outcome.cancel()
            raise
        return cast("_T", await write.outcome)

    async def _run_asked(self) -> None:
        """Every write asked for so far, in one transaction; each gets its outcome.

        The transaction is a task of its own and the outcomes are handed out when it ends:
        cancelling the caller holding the lock must not cut the others off from theirs (their
        writes run and commit all the same, on the SQLite thread).
        """
        writes, self._asked = self._asked, []
        work = partial(run_in_one_transaction, writes=writes)
        transaction = asyncio.ensure_future(self._call(work))
        transaction.add_done_callback(partial(_hand_out, writes))
        # A failed transaction's error reaches every caller through its write's outcome.
        with contextlib.suppress(Exception):
            await asyncio.shield(transaction)

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
