"""The buffer's one SQLite connection, and the single way to write through it.

Every write is a plain function run on aiosqlite's thread, one round trip at a time, in a
transaction that sets its own durability (``PRAGMA synchronous``), opens ``BEGIN IMMEDIATE``,
runs, and commits, all in that round trip. Nothing decides the sync mode outside it, so no other
writer can change it between the decision and the commit (the bug this shape replaced: a cached
mode, checked before a lock was taken, let an append commit without fsync after a non-durable
write).

Round trips run from a queue of this object's own. Writes asked for while one runs share the
next transaction, in the order asked, each in a savepoint of its own (one that raises is rolled
back alone and gets its exception), fsynced if any of them asked for it; every one learns its
outcome once that transaction committed, and its caller resumes before the next round trip
reaches the SQLite thread. The appends' group commit, the publisher's claims and sent marks and
the confirms' settles used to take a lock for a transaction each, which a scan's own commit
waited behind (docs/performance.md, issue 16's fourth round).

Reads that must see the writer's state (the replay queries) run from the same queue, alone, in
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
class _Work:
    """A round trip asked for and not yet run: its function, its durability, its outcome."""

    fn: Callable[[sqlite3.Connection], Any]
    durable: bool
    outcome: asyncio.Future[Any]
    alone: bool = False
    """A read (or the close's checkpoint): its own round trip, outside any transaction."""


def run_in_one_transaction(
    conn: sqlite3.Connection,
    writes: Sequence[_Work],
    rolled_back: Callable[[], None] | None = None,
) -> list[tuple[bool, Any]]:
    """Every write in ``writes`` in one transaction (on the SQLite thread): (ok, value) each.

    Each runs in a savepoint: one that raises is rolled back alone and its exception is its
    outcome, unless SQLite rolled back the whole transaction on that error (a full disk or an
    I/O error may): then nothing the earlier ones did is left, and the exception is raised for
    all of them. So is a failed ``COMMIT``. Fsynced if any write asked to be durable.

    ``rolled_back`` is called here, on the SQLite thread, when the transaction as a whole did
    not commit, before any other transaction can start: what a write noted in memory as it ran
    (buffer/claims_ahead.py) must not outlive its rows.
    """
    try:
        return _run_writes(conn, writes)
    except BaseException:
        if rolled_back is not None:
            rolled_back()
        raise


def _run_writes(conn: sqlite3.Connection, writes: Sequence[_Work]) -> list[tuple[bool, Any]]:
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


def _run_alone(conn: sqlite3.Connection, work: _Work) -> list[tuple[bool, Any]]:
    return [(True, work.fn(conn))]


def _hand_out(works: Sequence[_Work], done: asyncio.Future[list[tuple[bool, Any]]]) -> None:
    """Hand each work its outcome once its round trip is over (committed or not)."""
    if done.cancelled():  # only as the event loop shuts down: nobody is left to tell
        for work in works:
            work.outcome.cancel()
        return
    error = done.exception()
    outcomes = done.result() if error is None else [(False, error)] * len(works)
    for work, (ok, value) in zip(works, outcomes, strict=True):
        if work.outcome.done():  # its caller was cancelled and stopped waiting
            continue
        if ok:
            work.outcome.set_result(value)
        elif isinstance(value, StopIteration):  # a future refuses it (asyncio's rule)
            work.outcome.set_exception(RuntimeError(f"write raised StopIteration: {value!r}"))
        else:
            work.outcome.set_exception(value)


def _checkpoint(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


class BufferConnection:
    """The writer's connection, and the queue that makes its round trips one at a time."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        *,
        read_only: bool = False,
        rolled_back: Callable[[], None] | None = None,
    ) -> None:
        self._conn = conn
        self._rolled_back = rolled_back
        """Called on the SQLite thread when a write transaction did not commit as a whole."""
        self._read_only = read_only
        """Opened ``mode=ro``: no WAL checkpoint at close (it cannot succeed there, and waited
        out the whole busy timeout while the daemon was writing: 5 s for a replay's exit)."""
        self._asked: list[_Work] = []
        """Round trips asked for and not yet started, in the order asked."""
        self._running: asyncio.Future[list[tuple[bool, Any]]] | None = None
        """The round trip on aiosqlite's thread, if any; when it ends, the next starts."""
        self._closing = False
        self._closed = False
        self._close_lock = asyncio.Lock()

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
        while another round trip runs share the next transaction (module docstring), in the
        order asked. Cancelled before its transaction started, it is not run; after, it runs
        (as a transaction already on the SQLite thread always did) and its outcome is dropped.
        """
        return cast("_T", await self._wait(_Work(fn, durable, self._new_outcome())))

    async def read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` (reads only) on the writer's connection, alone, between writes."""
        return cast("_T", await self._wait(_Work(fn, False, self._new_outcome(), alone=True)))

    @staticmethod
    def _new_outcome() -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def _wait(self, work: _Work) -> object:
        """Ask for ``work`` and wait for its outcome; cancelled before it started, it never runs."""
        self._ask(work)
        try:
            return await work.outcome
        except asyncio.CancelledError:
            if work in self._asked:  # not started: never run
                self._asked.remove(work)
            raise

    def _ask(self, work: _Work, *, closing: bool = False) -> None:
        """Queue ``work``; start it at once when nothing runs.

        Refused once closing began (as a write waiting behind the close's lock used to be),
        except the close's own checkpoint.
        """
        if self._closing and not closing:
            work.outcome.set_exception(ValueError("no active connection"))
            return
        self._asked.append(work)
        if self._running is None:
            self._start_next()

    def _start_next(self) -> None:
        """Start the next round trip, if anything was asked for.

        The first work asked, and, if it is a write, every write asked after it up to the next
        read, in one transaction. Called when the previous round trip ended, after its
        outcomes were handed out: their callers resume (and update what they keep in memory,
        such as the buffer's byte total) before this round trip's first step puts it on the
        SQLite thread, both being scheduled in that order on the event loop.
        """
        self._running = None
        if not self._asked:
            return
        if self._asked[0].alone:
            works = [self._asked.pop(0)]
            call = self._call(partial(_run_alone, work=works[0]))
        else:
            count = next((i for i, w in enumerate(self._asked) if w.alone), len(self._asked))
            works, self._asked = self._asked[:count], self._asked[count:]
            call = self._call(
                partial(run_in_one_transaction, writes=works, rolled_back=self._rolled_back)
            )
        running = asyncio.ensure_future(call)
        running.add_done_callback(partial(self._ended, works))
        self._running = running

    def _ended(self, works: list[_Work], done: asyncio.Future[list[tuple[bool, Any]]]) -> None:
        """Hand out the round trip's outcomes, then start the next, whatever the first did.

        An exception escaping here would leave every later round trip waiting for good.
        """
        try:
            _hand_out(works, done)
        finally:
            if done.cancelled():  # the event loop is shutting down: start nothing more
                for work in self._asked:
                    work.outcome.cancel()
                self._asked.clear()
                self._running = None
            else:
                self._start_next()

    async def close(self) -> None:
        """Checkpoint the WAL into the file (so a clean stop leaves one file) and close.

        What was asked for before runs first; what is asked for from now on is refused. A
        second call does nothing: a shutdown path that closes again must not fail there.
        """
        async with self._close_lock:
            if self._closed:
                return
            if not self._conn._thread.is_alive() or self._conn._connection is None:  # noqa: SLF001
                # Nothing left to checkpoint or close: its thread died handing a result to an
                # event loop already closed (a loop's teardown; the SQLite connection, bound to
                # that thread, is closed when collected), or a close failed in SQLite and
                # aiosqlite let the connection go anyway (in a finally) and stops its thread.
                self._closing = self._closed = True
                return
            self._closing = True
            if not self._read_only:
                checkpoint = _Work(_checkpoint, False, self._new_outcome(), alone=True)
                self._ask(checkpoint, closing=True)
                with contextlib.suppress(sqlite3.Error):
                    await checkpoint.outcome
            await self._conn.close()
            # Only now: a close cut short (cancelled in the checkpoint) is done by the next.
            self._closed = True
