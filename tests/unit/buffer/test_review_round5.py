"""Review of the fifth performance round (issue 16): the append queue as a deque and a wake-up.

``Buffer``'s writer now waits on a future it makes whenever its deque is empty, which the next
append settles, instead of ``asyncio.Queue.get``. These pin, on a real SQLite file, what the
queue guaranteed and no other test reaches: an append made while the writer is committing (no
wake-up to settle) is still committed with no later append or close to wake it; a writer
cancelled while idle refuses what was queued after its wake-up was cancelled or settled; the
``None`` close queues after a full group commits no empty transaction.
"""

from __future__ import annotations

import asyncio
import subprocess
import textwrap
from pathlib import Path

import pytest

from buffer.store import Buffer, BufferClosedError
from tests.support import run_python
from tests.unit.buffer.test_append_nowait import WriteHold, file_rows, make_event, seq_after_reopen


async def test_an_append_made_while_the_writer_commits_needs_no_later_wakeup(
    tmp_path: Path,
) -> None:
    """The writer is inside a commit (held up by another connection's write), so no wake-up is
    set; what is appended then is committed in the next group on its own: nothing else is
    appended and the buffer is not closed. Then many idle/busy cycles, each a single append."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    held: WriteHold | None = WriteHold(b.path)
    try:
        first = b.append_nowait(make_event("a", 0))
        await asyncio.sleep(0.05)
        assert b._wake is None, "precondition: the writer is committing, not waiting"
        second = b.append_nowait(make_event("a", 1))
        await asyncio.sleep(0.05)
        hold, held = held, None
        if hold is not None:
            hold.release()
        assert (await asyncio.wait_for(first, 5)).seq == 1
        assert (await asyncio.wait_for(second, 5)).seq == 2
        assert b.commits == 2
        for n in range(2, 102):  # the writer goes idle (a new wake-up) before each append
            assert (await asyncio.wait_for(b.append_nowait(make_event("a", n)), 5)).seq == n + 1
            await asyncio.sleep(0)
        assert b.commits == 102
    finally:
        if held is not None:
            held.release()
        await b.close()
    assert [seq for _i, _d, seq in file_rows(b.path)] == list(range(1, 103))


@pytest.mark.parametrize("woken", [False, True], ids=["wakeup-cancelled", "wakeup-settled"])
async def test_appends_behind_an_idle_writers_cancellation_are_refused_and_take_no_seq(
    tmp_path: Path, woken: bool
) -> None:
    """The idle writer cancelled (the loop shutting down) before it ran again, with appends
    queued meanwhile: after ``cancel()`` (its wake-up already cancelled, so theirs finds it
    done) or just before it (the wake-up settled, the writer not yet resumed). Each is refused
    with BufferClosedError, counted refused, never in the file and takes no seq."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    writer = b._writer
    assert writer is not None
    await asyncio.sleep(0.01)
    assert b._wake is not None and not b._wake.done(), "precondition: the writer waits"
    if woken:
        queued = [b.append_nowait(make_event("a", n)) for n in range(3)]
        writer.cancel()
    else:
        writer.cancel()
        queued = [b.append_nowait(make_event("a", n)) for n in range(3)]
    await asyncio.gather(writer, return_exceptions=True)
    try:
        for future in queued:
            assert future.done()
            with pytest.raises(BufferClosedError):
                future.result()
        assert b.transitions["refused"] == 3 and b.transitions["stored"] == 0
        with pytest.raises(RuntimeError, match="writer is not running"):
            b.append_nowait(make_event("a", 9))
    finally:
        await b.close()
    assert file_rows(b.path) == []
    assert await seq_after_reopen(b.path, make_event("a", 10)) == 1


@pytest.mark.parametrize(("batch_max", "appends", "commits"), [(2, 4, 2), (3, 3, 1), (2, 5, 3)])
async def test_close_right_behind_full_groups_commits_them_all_and_no_empty_one(
    tmp_path: Path, batch_max: int, appends: int, commits: int
) -> None:
    """Appends and close queued in one go: every group up to ``batch_max`` commits, the ``None``
    left alone after the last full group stops the writer without an empty transaction."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8, batch_max=batch_max)
    futures = [b.append_nowait(make_event("a", n)) for n in range(appends)]
    await b.close()
    assert [f.result().seq for f in futures] == list(range(1, appends + 1))
    assert b.commits == commits
    assert b.transitions["stored"] == appends and b.transitions["refused"] == 0
    assert [seq for _i, _d, seq in file_rows(b.path)] == list(range(1, appends + 1))


_BATCH_MAX_ZERO = textwrap.dedent(
    """
    import asyncio
    from pathlib import Path
    from buffer.store import Buffer, NewEvent

    async def main():
        b = await Buffer.open(Path(DB), max_bytes=10**8, batch_max=0)
        event = NewEvent("i", "a", "t", "x", False, lambda seq: b"{}")
        stored = await asyncio.wait_for(b.append_nowait(event), 5)
        await b.close()
        print("stored", stored.seq, flush=True)

    asyncio.run(main())
    """
)


def test_batch_max_zero_still_commits_each_event(tmp_path: Path) -> None:
    """Buffer.open takes ``batch_max`` unchecked; before this round a 0 meant groups of one.
    In a child process: a spinning event loop cannot be timed out from inside."""
    code = _BATCH_MAX_ZERO.replace("DB", repr(str(tmp_path / "b.db")))
    try:
        done = run_python(code, timeout=15)  # killed at the timeout
    except subprocess.TimeoutExpired:
        pytest.fail("the event loop hung: nothing committed within 15 s")
    assert done.returncode == 0 and "stored 1" in done.stdout, done.stderr[-2000:]
