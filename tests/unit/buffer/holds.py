"""The buffer's writer connection kept busy by a write of its own: a long commit in progress."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from typing import Any

from buffer.connection import BufferConnection


class Blocker:
    """A write that holds aiosqlite's thread until ``release`` is set (then commits).

    Which writes share a transaction is then decided by a test, not by timing: everything
    asked for while it runs waits behind it.
    """

    def __init__(self) -> None:
        self.running = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: sqlite3.Connection) -> None:
        self.running.set()
        assert self.release.wait(10), "never released"

    async def until_running(self) -> None:
        async with asyncio.timeout(5):
            while not self.running.is_set():
                await asyncio.sleep(0.001)

    async def hold(self, db: BufferConnection, *, durable: bool = False) -> asyncio.Task[Any]:
        """Ask ``db`` for this write and return once it holds the SQLite thread (its task)."""
        write = asyncio.create_task(db.write(self, durable=durable))
        await self.until_running()
        return write


@contextlib.asynccontextmanager
async def writer_busy(db: BufferConnection) -> AsyncIterator[None]:
    """Until the block ends, a write holds the connection's SQLite thread (so every write and
    read asked for meanwhile waits behind it, as behind a long commit); it then commits."""
    blocker = Blocker()
    write = asyncio.create_task(db.write(blocker, durable=False))
    try:
        await blocker.until_running()
        yield
    finally:
        blocker.release.set()
        await write
