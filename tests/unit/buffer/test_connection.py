"""The buffer's one way to write (buffer/connection.py), on real files: the durability each
write asks for, the error a failed write raises, and the WAL a clean close leaves."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from buffer.connection import BufferConnection, run_in_transaction
from buffer.schema import open_database


def wal_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
    return conn


def synchronous(conn: sqlite3.Connection) -> int:
    conn.execute("INSERT INTO t VALUES (1)")
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


def test_each_write_commits_with_the_durability_it_asks_for(tmp_path: Path) -> None:
    """FULL (2: fsync at commit) for a durable write, NORMAL (1: none of its own) for a lazy
    one, whatever the write before asked for."""
    conn = wal_connection(tmp_path / "b.db")
    try:
        assert run_in_transaction(conn, synchronous, durable=False) == 1
        assert run_in_transaction(conn, synchronous, durable=True) == 2
        assert run_in_transaction(conn, synchronous, durable=False) == 1
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (3,)
    finally:
        conn.close()


def test_a_failed_write_is_rolled_back_and_the_next_write_goes_through(tmp_path: Path) -> None:
    def fails(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (1)")
        raise ValueError("failed")

    conn = wal_connection(tmp_path / "b.db")
    try:
        with pytest.raises(ValueError, match="failed"):
            run_in_transaction(conn, fails, durable=True)
        assert not conn.in_transaction
        assert run_in_transaction(conn, synchronous, durable=True) == 2
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        conn.close()


def test_a_failed_write_raises_its_own_error_even_when_nothing_is_left_to_roll_back(
    tmp_path: Path,
) -> None:
    """A write whose transaction SQLite already ended (an error that rolls back by itself):
    the failing ROLLBACK is ignored, the write's own error is raised, and nothing is kept."""

    def fails(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("ROLLBACK")
        raise ValueError("the write's own error")

    conn = wal_connection(tmp_path / "b.db")
    try:
        with pytest.raises(ValueError, match="the write's own error"):
            run_in_transaction(conn, fails, durable=True)
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
        assert not conn.in_transaction
    finally:
        conn.close()


async def test_close_empties_the_wal_even_while_a_reader_keeps_the_file_open(
    tmp_path: Path,
) -> None:
    """The last connection to close folds the WAL in by itself; ``status`` may still have the
    file open, so the close checkpoints (TRUNCATE) first: the events are in the file itself."""
    path = tmp_path / "b.db"
    db = BufferConnection(await open_database(path))
    await db.write(lambda c: c.execute("CREATE TABLE t (x)"), durable=True)
    await db.write(lambda c: c.executemany("INSERT INTO t VALUES (?)", [(1,)] * 50), durable=True)
    wal = Path(f"{path}-wal")
    assert wal.stat().st_size > 0
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (50,)
        await db.close()
        assert wal.stat().st_size == 0
    finally:
        reader.close()
