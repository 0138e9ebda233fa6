"""``Buffer.append_nowait`` on a real SQLite file: the commit's future, without a task per event.

The guarantees are ``append``'s: settled only once the transaction holding the event committed
(or with the reason it was not stored), per-device seqs in call order without gaps, refusals at
the cap taking no seq, and queued is final: the future refuses cancellation, so a cancelled
awaiter hears its cancellation only once the commit returned.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from buffer.store import Buffer, BufferClosedError, BufferFullError, NewEvent
from drivers.base import StoredEvent


def make_event(device: str, n: int, *, size: int = 0, droppable: bool = False) -> NewEvent:
    def render(seq: int) -> bytes:
        return json.dumps({"device": device, "n": n, "seq": seq, "pad": "x" * size}).encode()

    return NewEvent(f"{device}-{n}", device, "2026-01-01T00:00:00.000000Z", "t", droppable, render)


def file_rows(path: Path) -> list[tuple[str, str, int]]:
    """(id, device, seq) of every row, read by another connection as a recovery would."""
    with sqlite3.connect(path) as conn:
        return [
            (json.loads(p)["device"] + f"-{json.loads(p)['n']}", d, s)
            for d, s, p in conn.execute("SELECT device, seq, payload FROM events ORDER BY rowid")
        ]


@pytest.fixture
async def buf(tmp_path: Path) -> AsyncIterator[Buffer]:
    b = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**8)
    yield b
    await b.close()


class WriteHold:
    """Another connection's write transaction: the buffer's next commit waits until release."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self._conn.execute("ROLLBACK")
        self._conn.close()


async def seq_after_reopen(path: Path, event: NewEvent) -> int:
    """The seq a buffer opened again on ``path`` gives ``event`` (its writer lock must be free)."""
    reopened = await Buffer.open(path, max_bytes=10**8)
    try:
        return (await reopened.append_nowait(event)).seq
    finally:
        await reopened.close()


async def test_settled_only_after_commit_with_seqs_in_call_order(buf: Buffer) -> None:
    """Futures taken in one go from two devices: each is settled once its row is in the file
    (seen by another connection), seqs follow the calls without gaps, and commits are grouped."""
    futures = [buf.append_nowait(make_event("ab"[n % 2], n)) for n in range(300)]
    assert not any(f.done() for f in futures), "nothing is settled before a commit"
    seen: list[StoredEvent] = []
    for future in futures:
        stored = await future
        assert (stored.id, stored.device, stored.seq) in file_rows(buf.path)
        seen.append(stored)
    for device in "ab":
        assert [s.id for s in seen if s.device == device] == [
            f"{device}-{n}" for n in range(300) if "ab"[n % 2] == device
        ]
        assert [s.seq for s in seen if s.device == device] == list(range(1, 151))
    assert buf.commits < 30
    assert buf.transitions["stored"] == 300


async def awaiting(future: asyncio.Future[StoredEvent]) -> StoredEvent:
    """A task's await on ``future`` (``ensure_future`` would hand back the future itself)."""
    return await future


async def test_a_cancelled_awaiter_hears_the_cancellation_after_the_commit(buf: Buffer) -> None:
    """The future refuses cancellation; tasks awaiting it (or ``append``) cancelled while
    their commit is held up get CancelledError only once it returned, and their events are
    committed with their seqs, counted stored, and followed without a gap."""
    hold = WriteHold(buf.path)
    futures = [buf.append_nowait(make_event("a", n)) for n in range(2)]
    await asyncio.sleep(0.05)  # the writer took them: their commit waits for the hold
    assert futures[0].cancel() is False and not futures[0].cancelled()
    waiting = [
        asyncio.create_task(awaiting(futures[1])),
        asyncio.create_task(buf.append(make_event("a", 2))),  # queued behind the held commit
    ]
    await asyncio.sleep(0.05)
    for task in waiting:
        task.cancel()
    await asyncio.sleep(0.05)
    try:
        assert not any(task.done() for task in waiting), "cancelled before the commit returned"
        assert file_rows(buf.path) == []
    finally:
        hold.release()
    for task in waiting:
        with pytest.raises(asyncio.CancelledError):
            await task
        assert file_rows(buf.path), "the cancellation came after the commit"
    assert (await futures[0]).seq == 1 and futures[1].result().seq == 2
    assert file_rows(buf.path) == [(f"a-{n}", "a", n + 1) for n in range(3)]
    assert buf.transitions["stored"] == 3 and buf.transitions["refused"] == 0
    assert (await buf.append_nowait(make_event("a", 3))).seq == 4


async def test_refused_at_the_cap_takes_no_seq(tmp_path: Path) -> None:
    """At the cap the future gets BufferFullError and the event takes no seq; an event that
    fits again gets the next one."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=1_000)
    try:
        kept = [await b.append_nowait(make_event("s", n, size=200)) for n in range(3)]
        refused = b.append_nowait(make_event("s", 3, size=2_000))
        with pytest.raises(BufferFullError):
            await refused
        assert b.transitions["refused"] == 1
        assert [s.seq for s in kept] == [1, 2, 3]
        assert (await b.append_nowait(make_event("s", 4, size=10))).seq == 4
        assert [seq for _i, _d, seq in file_rows(b.path)] == [1, 2, 3, 4]
    finally:
        await b.close()


async def test_close_commits_what_was_queued_and_refuses_the_rest_at_once(
    tmp_path: Path,
) -> None:
    """Closing while futures wait behind a held-up commit: every event queued before close is
    committed and its future settled with it; from the moment close began, append_nowait
    raises BufferClosedError without queueing (the file never gets that event)."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    hold = WriteHold(b.path)
    first = [b.append_nowait(make_event("a", n)) for n in range(3)]
    await asyncio.sleep(0.05)
    behind = [b.append_nowait(make_event("a", n)) for n in range(3, 6)]
    closing = asyncio.create_task(b.close())
    await asyncio.sleep(0.05)
    with pytest.raises(BufferClosedError):
        b.append_nowait(make_event("a", 99))
    hold.release()
    await closing
    results = await asyncio.gather(*first, *behind)
    assert [r.seq for r in results] == [1, 2, 3, 4, 5, 6]
    assert file_rows(b.path) == [(f"a-{n}", "a", n + 1) for n in range(6)]
    with pytest.raises(BufferClosedError):
        b.append_nowait(make_event("a", 6))


async def test_a_writer_cancelled_mid_commit_settles_every_future(tmp_path: Path) -> None:
    """The writer cancelled without close (the event loop shutting down): the futures of the
    commit under way get "outcome unknown" (it may still commit: not called refused), those
    queued behind it BufferClosedError, so no awaiter (which cannot cancel its wait) hangs."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    hold = WriteHold(b.path)
    try:
        under_way = [b.append_nowait(make_event("a", n)) for n in range(2)]
        await asyncio.sleep(0.05)
        queued = [b.append_nowait(make_event("a", n)) for n in range(2, 4)]
        writer = b._writer
        assert writer is not None
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        for future in under_way:
            with pytest.raises(RuntimeError, match="outcome unknown"):
                future.result()
        for future in queued:
            with pytest.raises(BufferClosedError):
                future.result()
        assert b.transitions["refused"] == 2
    finally:
        hold.release()
    await b.close()
    assert [seq for _i, _d, seq in file_rows(b.path)] in ([], [1, 2]), "never the queued ones"


async def test_a_dead_writer_refuses_at_once(tmp_path: Path) -> None:
    """With the writer task gone, append_nowait raises instead of queueing an event nobody
    will ever commit (its future would never settle)."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    writer = b._writer  # the task whose death this is about
    assert writer is not None
    await asyncio.sleep(0.01)  # the writer waits for its first append, as after any open
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    try:
        assert writer.cancelled(), "an idle writer cancelled ends cancelled, not with an error"
        with pytest.raises(RuntimeError, match="writer is not running"):
            b.append_nowait(make_event("a", 1))
        assert not b._queue
    finally:
        await b.close()


async def test_commits_counts_each_transaction_once(buf: Buffer) -> None:
    """``commits`` is one per transaction that stored events: three appends awaited one by one
    are three commits, a burst queued at once is fewer than its events (the group commit the
    benchmarks and the group-commit tests read it for)."""
    for n in range(3):
        await buf.append_nowait(make_event("a", n))
    assert buf.commits == 3
    await asyncio.gather(*[buf.append_nowait(make_event("a", n)) for n in range(3, 53)])
    assert 4 <= buf.commits < 53


async def test_a_refusal_at_the_cap_is_logged_with_the_events_refused(tmp_path: Path) -> None:
    """The "buffer full" error line counts the scans refused in that commit, not the events
    stored beside them nor telemetry (dropped telemetry is counted apart, as dropped)."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=1_000)
    try:
        await b.append_nowait(make_event("s", 0, size=700))
        with capture_logs() as logs:
            outcomes = await asyncio.gather(
                b.append_nowait(make_event("s", 1, size=10)),
                b.append_nowait(make_event("s", 2, size=900)),
                b.append_nowait(make_event("s", 3, size=950)),
                b.append_nowait(make_event("t", 4, size=900, droppable=True)),
                return_exceptions=True,
            )
        assert [type(o).__name__ for o in outcomes] == [
            "StoredEvent",
            "BufferFullError",
            "BufferFullError",
            "BufferFullError",
        ]
        full = [line for line in logs if line["event"] == "buffer_full_refusing_event"]
        assert [line["events"] for line in full] == [2]
        assert b.transitions["refused"] == 3
    finally:
        await b.close()


async def test_close_twice_is_harmless(tmp_path: Path) -> None:
    """A shutdown path that closes the buffer again (after an error, say) must not fail there:
    the second close finds the readers, the database and the writer lock already let go."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    await b.append_nowait(make_event("a", 1))
    await b.stats()  # opens the statistics reader
    await b.check_replay("a", 1, 1)  # opens the replay reader
    await b.close()
    await b.close()
    assert await seq_after_reopen(tmp_path / "b.db", make_event("a", 2)) == 2  # lock let go


async def test_a_group_commit_holds_at_most_batch_max_events(tmp_path: Path) -> None:
    """Seven appends queued at once with ``batch_max=2``: four transactions (2, 2, 2, 1)."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8, batch_max=2)
    try:
        stored = await asyncio.gather(*[b.append_nowait(make_event("a", n)) for n in range(7)])
        assert [s.seq for s in stored] == list(range(1, 8))
        assert b.commits == 4
    finally:
        await b.close()
