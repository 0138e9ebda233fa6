"""Fourth adversarial review of ``Buffer.close`` (b655f5f: reads refused once closing, a reader
opened after a close began closed again, percent-encoded read-only URIs) on a real SQLite file,
real aiosqlite and real asyncio: the holes it proved (``xfail(strict=True)``, the test states
what should hold) and the suspicions it dismissed (plain tests pinning the reason)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosqlite
import pytest

import buffer.store
from buffer.store import Buffer, BufferClosedError
from tests.unit.buffer.test_append_nowait import make_event


async def _stats(b: Buffer) -> object:
    return await b.stats()


async def _check_replay(b: Buffer) -> object:
    return await b.check_replay("a", 1, 1)


@pytest.mark.xfail(
    strict=True,
    reason="PROVEN: a read that lost the race to open the lazy reader closes its own spare "
    "connection (an await) and then uses self._reader / self._replay_reader without looking "
    "at _closing again: a close that ran meanwhile set it to None, and the read fails with "
    "AttributeError on None instead of BufferClosedError",
)
@pytest.mark.parametrize("read", [_stats, _check_replay], ids=["stats", "check_replay"])
async def test_a_read_whose_spare_reader_is_closed_while_the_buffer_closes_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    read: Callable[[Buffer], Awaitable[object]],
) -> None:
    """b655f5f: two first reads racing to open the lazy reader no longer both keep one: the
    one that finds the attribute set when its own open returns closes its spare connection,
    ``await reader.close()``, and then returns ``self._replay_reader`` (replay reads) or
    passes ``self._reader`` to ``collect_stats`` (``stats()``). That close is a round trip to
    its aiosqlite thread, and a ``Buffer.close`` that begins meanwhile closes the kept reader
    and sets the attribute to ``None``: the read then calls ``.read`` / ``BufferConnection(None)``
    and raises ``AttributeError`` into its caller, where every other read once the close began
    raises ``BufferClosedError`` (docs/buffer.md). Only the timing is arranged: the second
    read's open waits for the first read to finish, and its spare connection's close (real, on
    its own thread) is held until the buffer's close returned; a loaded machine gives the same
    order. Not reachable in the daemon as wired today (its first ``stats()`` is alone at
    start-up and the replay worker serves one command at a time), reachable by any two
    concurrent first reads of the public API (the bench, the demo)."""
    real_open = buffer.store.open_reader
    opened = 0
    second_may_return = asyncio.Event()
    spare_closing = asyncio.Event()
    spare_may_close = asyncio.Event()

    async def open_reader(path: Path) -> aiosqlite.Connection:
        nonlocal opened
        opened += 1
        nth = opened
        conn = await real_open(path)
        if nth == 2:  # the read that loses the race
            await second_may_return.wait()
            real_close = conn.close

            async def close() -> None:
                spare_closing.set()
                await spare_may_close.wait()
                await real_close()

            conn.close = close  # type: ignore[method-assign]
        return conn

    monkeypatch.setattr(buffer.store, "open_reader", open_reader)
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    await b.append_nowait(make_event("a", 1))
    first = asyncio.ensure_future(read(b))
    second = asyncio.ensure_future(read(b))
    try:
        await first  # kept its reader
        second_may_return.set()
        async with asyncio.timeout(5):
            await spare_closing.wait()  # the second read is closing its spare connection
            await b.close()
        spare_may_close.set()
        with pytest.raises(BufferClosedError):
            await second
    finally:
        spare_may_close.set()
        second_may_return.set()
        with contextlib.suppress(Exception):
            await second
        await b.close()
