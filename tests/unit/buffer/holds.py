"""The buffer's writer connection kept busy by a write of its own: a long commit in progress."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator

from buffer.connection import BufferConnection


@contextlib.asynccontextmanager
async def writer_busy(db: BufferConnection) -> AsyncIterator[None]:
    """Until the block ends, a write holds the connection's SQLite thread (so every write and
    read asked for meanwhile waits behind it, as behind a long commit); it then commits."""
    running, release = threading.Event(), threading.Event()

    def long_write(_conn: sqlite3.Connection) -> None:
        running.set()
        assert release.wait(10), "never released"

    write = asyncio.create_task(db.write(long_write, durable=False))
    try:
        async with asyncio.timeout(5):
            while not running.is_set():
                await asyncio.sleep(0.001)
        yield
    finally:
        release.set()
        await write
