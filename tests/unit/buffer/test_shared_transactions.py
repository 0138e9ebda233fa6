"""Writes asked for while another runs share the next transaction (buffer/connection.py).

On a real SQLite file through aiosqlite, as the buffer writes. A first write blocks aiosqlite's
thread on a ``threading.Event`` until the test has asked for the others, so which writes
share a transaction is decided by the test, not by timing; the statements SQLite ran are read
back from a trace callback set on the SQLite thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiosqlite
import pytest

from buffer.connection import BufferConnection
from tests.unit.buffer import holds

Write = Callable[[sqlite3.Connection], str]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[BufferConnection]:
    raw = await aiosqlite.connect(tmp_path / "b.db", isolation_level=None)
    await raw.execute("PRAGMA journal_mode=WAL")
    await raw.execute("CREATE TABLE t (x TEXT)")
    conn = BufferConnection(raw)
    yield conn
    await conn.close()


def insert(name: str) -> Write:
    def run(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t VALUES (?)", (name,))
        return name

    return run


class Blocker(holds.Blocker):
    """A write that holds aiosqlite's thread until released, tracing the statements after it,
    then inserts its name."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.statements: list[str] = []

    def __call__(self, conn: sqlite3.Connection) -> str:  # type: ignore[override]
        conn.set_trace_callback(self.statements.append)
        super().__call__(conn)
        conn.execute("INSERT INTO t VALUES (?)", (self.name,))
        return self.name


async def asked(db: BufferConnection, *writes: tuple[Write, bool]) -> list[asyncio.Task[str]]:
    """Tasks asking for ``writes`` in order, each run up to its wait for its outcome."""
    tasks = []
    for fn, durable in writes:
        tasks.append(asyncio.create_task(db.write(fn, durable=durable)))
        await asyncio.sleep(0)
    return tasks


async def rows(db: BufferConnection) -> list[str]:
    """What the table holds; the trace callback a ``Blocker`` set is taken off first."""

    def read(conn: sqlite3.Connection) -> list[str]:
        conn.set_trace_callback(None)
        return [r[0] for r in conn.execute("SELECT x FROM t ORDER BY rowid")]

    return await db.read(read)


async def test_writes_asked_meanwhile_share_one_transaction_in_order_fsynced_if_one_asks(
    db: BufferConnection,
) -> None:
    first = Blocker("first")
    holder = await first.hold(db)
    waiting = await asked(db, (insert("a"), False), (insert("b"), True), (insert("c"), False))
    first.release.set()
    assert await holder == "first"
    assert [await t for t in waiting] == ["a", "b", "c"]
    begins = [s for s in first.statements if s.startswith("BEGIN")]
    assert len(begins) == 1, first.statements
    assert "PRAGMA synchronous=FULL" in first.statements, "b asked for an fsync"
    assert await rows(db) == ["first", "a", "b", "c"]


async def test_a_write_that_raises_is_rolled_back_alone(db: BufferConnection) -> None:
    def fails(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t VALUES ('lost')")
        raise ValueError("this write only")

    first = Blocker("first")
    holder = await first.hold(db)
    a, failing, c = await asked(db, (insert("a"), True), (fails, True), (insert("c"), True))
    first.release.set()
    await holder
    assert await a == "a"
    assert await c == "c"
    with pytest.raises(ValueError, match="this write only"):
        await failing
    assert await rows(db) == ["first", "a", "c"]


async def test_a_transaction_sqlite_ended_fails_every_write_in_it_and_runs_none_after(
    db: BufferConnection,
) -> None:
    """An error on which SQLite rolls back the whole transaction (a full disk, an I/O error;
    here the write ends it itself): what the writes before did is gone, so each of them is
    told so, and the writes after it are not run outside a transaction."""

    def ends_it(conn: sqlite3.Connection) -> str:
        conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("database or disk is full")

    first = Blocker("first")
    holder = await first.hold(db, durable=True)
    tasks = await asked(db, (insert("a"), True), (ends_it, True), (insert("c"), True))
    first.release.set()
    await holder
    for task in tasks:
        with pytest.raises(sqlite3.OperationalError, match="full"):
            await task
    assert await rows(db) == ["first"]


async def test_a_write_cancelled_before_its_transaction_is_not_run(db: BufferConnection) -> None:
    first = Blocker("first")
    holder = await first.hold(db)
    a, cancelled, c = await asked(
        db, (insert("a"), False), (insert("cancelled"), False), (insert("c"), False)
    )
    cancelled.cancel()
    first.release.set()
    await holder
    assert [await a, await c] == ["a", "c"]
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await rows(db) == ["first", "a", "c"]


async def test_a_caller_cancelled_while_its_shared_transaction_runs_leaves_the_others_theirs(
    db: BufferConnection,
) -> None:
    """A write's caller is cancelled while its transaction is on the SQLite thread: the write
    commits anyway (as any write already there always did), and the writes that share the
    transaction still get their outcomes."""
    first = Blocker("first")
    holder = await first.hold(db)
    second = Blocker("second")
    cancelled, other = await asked(db, (second, False), (insert("b"), True))
    first.release.set()
    await holder
    await second.until_running()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    second.release.set()
    assert await asyncio.wait_for(other, 5) == "b"
    assert await rows(db) == ["first", "second", "b"]


async def test_a_write_hears_its_outcome_when_its_transaction_ends_not_after_the_next(
    db: BufferConnection,
) -> None:
    """A write that shared a transaction is told as soon as that transaction committed, while
    the next one (asked meanwhile) still runs: a scan's stored feedback must not wait for
    another fsync. (When whoever took the lock ran every write waiting, such a write's caller
    first had to take the lock again, and then ran the next transaction itself.)"""
    first = Blocker("first")
    holder = await first.hold(db)
    second = Blocker("second")
    _, shared = await asked(db, (second, False), (insert("shared"), True))
    first.release.set()
    await holder
    await second.until_running()  # [second, shared] on the SQLite thread
    third = Blocker("third")
    (next_one,) = await asked(db, (third, False))
    second.release.set()
    await third.until_running()  # the next transaction holds the thread
    try:
        assert await asyncio.wait_for(shared, 2) == "shared"
    finally:
        third.release.set()
    assert await next_one == "third"
