"""Adversarial review of commits that claim ahead for the publisher (buffer/claims_ahead.py),
as of 15506ab.

Real SQLite file, real Buffer, real asyncio. Which writes share a transaction is decided by the
test: a ``Blocker`` (tests/unit/buffer/holds.py) holds aiosqlite's thread until the test has
asked for the others.

PROVEN on 15506ab, fixed since (the tests below now pass; they failed there):

- ``test_a_claim_sharing_a_transaction_with_a_partly_ahead_commit_keeps_seq_order``: a commit
  with more rows than the room claims its first rows ahead and inserts the rest pending; a
  claim asked while it ran (the pump's: ``_claimed_ahead`` is still empty, the commit has not
  returned) runs after it in the same transaction and takes the pending tail. The pump
  publishes seqs 4, 5 before 1, 2, 3 (handed out at its next claim): per-device seq order
  broken with no backlog. ``pending_taken``'s "the pump asked with nothing outstanding" does
  not hold: outstanding events were not handed yet because their commit had not returned.
- ``test_a_commit_whose_writer_was_cancelled_leaves_no_event_stuck_in_flight``: the writer
  cancelled while its commit already started on the SQLite thread (the loop's teardown,
  ``_abandon``): the commit still commits, its rows in flight, but ``_insert_fitting``'s
  except drops them (``handed(0)``: ``take`` had not run yet, so ``outstanding`` also stays
  inflated for good). No claim returns them: stuck in flight until the session ends
  (before the change they were pending and the pump sent them). Only where the writer task
  is cancelled (the event loop's teardown), so low severity; the inflated ``outstanding``
  shrinks every later room by the lost events for the buffer's life (throughput only).

DISMISSED:

- Exceeding the window / Receive Maximum: ``_hand_out_ahead(limit)`` never returns more than
  the pump's ``free`` of the moment, and a DB claim is capped by its limit; room only decides
  how many rows wait in flight in memory (pinned: ``..._never_handed_more_than_it_asks_for``).
  ``pending_taken``/``widen`` also keep room + outstanding + in flight within the window.
- Sent twice within a session: a row claimed ahead is never pending, so no DB claim reads it;
  ``_claimed_ahead`` is only emptied by a hand-out or by ``release_in_flight`` (which bumps the
  epoch, so a commit returning after it hands nothing). The only in-session writes making
  rows pending are ``unhold`` (held rows only) and ``release`` of named events (not used by
  the publisher). Pinned: the release-racing tests.
- Release racing a commit: commit before release (release asked after): epoch differs, rows
  made pending by the release, claimed once. Commit asked after the release: ``close_room``
  ran on the loop before its ``take``, and the release's run cleared none-pending first.
- The old session's pump/``_retry_held`` widening room after the release: ``_session``
  gathers every session task before ``_settle`` calls ``release_in_flight``; and the release's
  ``_may_pend`` (synchronous) disables the fast path anyway.
- Whole-transaction rollback: ``rolled_back`` (on the SQLite thread, before the next
  transaction) clears none-pending; the commit's except gives back ``outstanding``; seqs are
  not used up (pinned). Savepoint-level failure of the commit: nothing inserted, nothing
  handed, room merely smaller (pinned). A claim failing: ``pending_made`` (conservative).
- Size cap (``_insert_making_room``): calls ``pending_made`` first, inserts pending (pinned).
  Eviction does not touch in-flight rows, so rows claimed ahead are kept rather than evicted
  (no loss; they were kept as claimed rows before the change too).
- Drain mode: none-pending stays False while any backlog row is pending; rows claimed ahead
  are always newer than ``live_after`` (the room of a session opens only after its pump read
  ``last_rowid``), so ``backlog=False`` is right.
- Unhold within a session after a commit claimed ahead: the newer rows go out before the
  unheld older ones; held events are out of the claim order by design (contract: refused
  events are held, "the others flow on"), and nothing is left pending unseen (pinned).
- Close and reopen: ``_load`` puts in-flight rows back to pending and a new ``ClaimsAhead``
  starts with none-pending False (pinned). Kept counts: ``_insert_rows`` adds the ahead rows
  to in-flight, the rest to pending (pinned exact after commit, mark_sent, release).
- Unrenderable events: ``_events_with_rows`` pairs rows with their events skipping the
  refused ones, so ids match (pinned). Feedback once: unchanged (futures settled by the
  writer alone).
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from buffer.schema import STATE_HELD, STATE_IN_FLIGHT, STATE_PENDING
from buffer.store import Buffer, CommitFuture, NewEvent
from tests.unit.buffer.holds import Blocker
from tests.unit.buffer.test_claim_skip import make_event


async def asked(buf: Buffer, count: int) -> None:
    """Until ``count`` round trips wait in the connection's queue (asked, not started)."""
    async with asyncio.timeout(5):
        while len(buf._db._asked) < count:
            await asyncio.sleep(0)


def states(path: Path) -> dict[int, int]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT state, count(*) FROM events GROUP BY state").fetchall())
    finally:
        conn.close()


def kept_unsent(path: Path) -> dict[int, int]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT state, events FROM unsent_states").fetchall())
    finally:
        conn.close()


def assert_counts_exact(path: Path) -> None:
    found = states(path)
    kept = kept_unsent(path)
    for state in (STATE_HELD, STATE_PENDING, STATE_IN_FLIGHT):
        assert kept.get(state, 0) == found.get(state, 0), (state, kept, found)


async def open_room(buf: Buffer, limit: int) -> None:
    """The pump's claim that finds nothing: the next commits may claim ``limit`` ahead."""
    assert await buf.claim(limit) == []


# --- PROVEN --------------------------------------------------------------------------------


async def cancel_the_writer_mid_commit(
    buf: Buffer, other: Blocker, other_write: asyncio.Task[object], future: CommitFuture
) -> None:
    """Cancel the writer while its commit's transaction is held up by ``other``, a write
    sharing it; let the transaction end; the event's outcome is then unknown to its caller."""
    writer = buf._writer
    assert writer is not None
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    other.release.set()
    await other_write
    with pytest.raises(RuntimeError, match="outcome unknown"):
        await future


async def test_a_claim_sharing_a_transaction_with_a_partly_ahead_commit_keeps_seq_order(
    buf: Buffer,
) -> None:
    await open_room(buf, 3)  # room 3
    blocker = Blocker()
    held = await blocker.hold(buf._db)
    futures = [buf.append_nowait(make_event("a", n)) for n in range(5)]
    await asked(buf, 1)  # the writer's commit of all 5, behind the blocker
    claim = asyncio.create_task(buf.claim(3))  # the pump, window 3, nothing handed yet
    await asked(buf, 2)
    blocker.release.set()
    await held
    first = await claim
    await asyncio.gather(*futures)
    published = [e.seq for e in first]
    # The pump goes on with what is left of its window (3 - len(first)), then more.
    while len(published) < 5:
        batch = await buf.claim(3)
        assert batch, published
        published += [e.seq for e in batch]
    assert published == [1, 2, 3, 4, 5]


async def test_a_commit_whose_writer_was_cancelled_leaves_no_event_stuck_in_flight(
    buf: Buffer, tmp_path: Path
) -> None:
    await open_room(buf, 10)
    first = Blocker()
    held = await first.hold(buf._db)
    second = Blocker()  # shares the next transaction with the commit, ahead of it
    second_write = asyncio.create_task(buf._db.write(second, durable=False))
    await asked(buf, 1)
    future = buf.append_nowait(make_event("a", 1))
    await asked(buf, 2)
    first.release.set()
    await held
    await second.until_running()  # the commit's transaction started: it will commit
    await cancel_the_writer_mid_commit(buf, second, second_write, future)
    # It committed, pending: its writer was gone before its claim ahead was made (fixed:
    # ``CommitClaim.abandoned``; before, the row went in in flight, handed to nobody).
    assert states(tmp_path / "buffer.db") == {STATE_PENDING: 1}
    # The pump, same session: the event must reach it.
    assert [e.seq for e in await buf.claim(10)] == [1]


# --- pinned: guarantees checked and found to hold -----------------------------------------


async def test_a_commit_claims_ahead_and_the_pump_gets_them_in_order_once(
    buf: Buffer, tmp_path: Path
) -> None:
    await open_room(buf, 10)
    for n in range(3):
        await buf.append(make_event("a", n))
    assert states(tmp_path / "buffer.db") == {STATE_IN_FLIGHT: 3}  # claimed ahead
    assert_counts_exact(tmp_path / "buffer.db")
    batch = await buf.claim(10)
    assert [e.seq for e in batch] == [1, 2, 3]
    assert not any(e.backlog for e in batch)
    assert await buf.claim(10) == []
    await buf.mark_sent(batch)
    assert_counts_exact(tmp_path / "buffer.db")
    assert await buf.unsent_count() == 0


async def test_the_pump_is_never_handed_more_than_it_asks_for(buf: Buffer) -> None:
    """Room may outgrow a later, smaller window, but a hand-out is capped by its limit."""
    await open_room(buf, 10)
    for n in range(8):
        await buf.append(make_event("a", n))
    assert [e.seq for e in await buf.claim(2)] == [1, 2]
    assert [e.seq for e in await buf.claim(1)] == [3]
    assert [e.seq for e in await buf.claim(10)] == [4, 5, 6, 7, 8]


async def test_rows_beyond_the_room_go_in_pending_in_order(buf: Buffer, tmp_path: Path) -> None:
    """Commits not sharing a transaction with the claim: head ahead, tail pending, in order."""
    await open_room(buf, 2)
    await asyncio.gather(*(buf.append_nowait(make_event("a", n)) for n in range(5)))
    assert states(tmp_path / "buffer.db") == {STATE_IN_FLIGHT: 2, STATE_PENDING: 3}
    assert_counts_exact(tmp_path / "buffer.db")
    published: list[int] = []
    while len(published) < 5:
        published += [e.seq for e in await buf.claim(2)]
    assert published == [1, 2, 3, 4, 5]
    await buf.append(make_event("a", 9))  # pending exist no more, but room is 0 now
    assert [e.seq for e in await buf.claim(10)] == [6]


async def test_a_release_racing_a_commit_that_claimed_ahead_hands_nothing_twice(
    buf: Buffer, tmp_path: Path
) -> None:
    """The commit ran before the release (same transaction); it returns after: its rows are
    pending again and claimed once, by the next session's claim."""
    await open_room(buf, 10)
    blocker = Blocker()
    held = await blocker.hold(buf._db)
    futures = [buf.append_nowait(make_event("a", n)) for n in range(3)]
    await asked(buf, 1)
    after = Blocker()  # holds the commit's transaction open once the commit ran in it
    after_write = asyncio.create_task(buf._db.write(after, durable=False))
    await asked(buf, 2)
    blocker.release.set()
    await held
    await after.until_running()  # the commit claimed its rows ahead, not yet returned
    release = asyncio.create_task(buf.release_in_flight())
    await asked(buf, 1)
    after.release.set()
    await after_write
    assert await release == 3
    await asyncio.gather(*futures)
    assert states(tmp_path / "buffer.db") == {STATE_PENDING: 3}
    assert_counts_exact(tmp_path / "buffer.db")
    assert [e.seq for e in await buf.claim(10)] == [1, 2, 3]
    assert await buf.claim(10) == []


async def test_a_release_after_the_commit_returned_forgets_what_was_not_handed(
    buf: Buffer, tmp_path: Path
) -> None:
    await open_room(buf, 10)
    for n in range(3):
        await buf.append(make_event("a", n))
    assert await buf.release_in_flight() == 3
    assert_counts_exact(tmp_path / "buffer.db")
    await buf.append(make_event("a", 3))  # the room closed with the session: pending
    assert [e.seq for e in await buf.claim(10)] == [1, 2, 3, 4]
    assert await buf.claim(10) == []


async def test_a_whole_transaction_rollback_after_a_commit_claimed_ahead(
    buf: Buffer, tmp_path: Path
) -> None:
    """SQLite ended the transaction (as on a full disk): the commit fails, nothing is noted as
    claimed, none-pending is cleared, and the seqs are not used up."""
    await open_room(buf, 10)
    blocker = Blocker()
    held = await blocker.hold(buf._db)
    futures = [buf.append_nowait(make_event("a", n)) for n in range(3)]
    await asked(buf, 1)

    def ended_by_sqlite(conn: sqlite3.Connection) -> None:
        conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("disk I/O error")

    failing = asyncio.create_task(buf._db.write(ended_by_sqlite, durable=False))
    await asked(buf, 2)
    blocker.release.set()
    await held
    outcomes = await asyncio.gather(*futures, failing, return_exceptions=True)
    assert all(isinstance(o, BaseException) for o in outcomes)
    assert states(tmp_path / "buffer.db") == {}
    assert_counts_exact(tmp_path / "buffer.db")
    assert await buf.claim(10) == []
    stored = await buf.append(make_event("a", 7))
    assert stored.seq == 1
    assert [e.seq for e in await buf.claim(10)] == [1]


async def test_a_savepoint_failure_of_the_commit_hands_nothing(buf: Buffer, tmp_path: Path) -> None:
    """Only the commit's savepoint rolls back (a duplicate event key): nothing handed, seqs
    unused, and the next commit's rows reach the pump."""
    await open_room(buf, 10)
    await buf.append(make_event("a", 0))
    assert [e.seq for e in await buf.claim(10)] == [1]
    await open_room(buf, 10)
    blocker = Blocker()
    held = await blocker.hold(buf._db)
    dup = buf.append_nowait(make_event("a", 0))  # the same id: its insert fails
    await asked(buf, 1)
    blocker.release.set()
    await held
    with pytest.raises(sqlite3.IntegrityError):
        await dup
    assert await buf.claim(10) == []
    assert (await buf.append(make_event("a", 1))).seq == 2
    assert [e.seq for e in await buf.claim(10)] == [2]
    assert_counts_exact(tmp_path / "buffer.db")


async def test_unrenderable_events_in_a_batch_claimed_ahead_keep_their_ids(
    buf: Buffer,
) -> None:
    await open_room(buf, 10)

    def bad(seq: int) -> bytes:
        raise ValueError("cannot render")

    events = [
        make_event("a", 0),
        NewEvent("a-bad", "a", "t", "t", False, bad),
        make_event("a", 2),
    ]
    outcomes = await asyncio.gather(*(buf.append_nowait(e) for e in events), return_exceptions=True)
    assert isinstance(outcomes[1], BaseException)
    batch = await buf.claim(10)
    assert [(e.id, e.seq) for e in batch] == [("a-0", 1), ("a-2", 2)]


async def test_an_unhold_racing_a_commit_leaves_no_row_pending_unseen(buf: Buffer) -> None:
    """Held rows put back to pending after a commit claimed ahead are claimed by the pump."""
    await open_room(buf, 10)
    await buf.append(make_event("a", 0))
    first = await buf.claim(10)
    await buf.hold(first)
    await open_room(buf, 10)
    await buf.append(make_event("a", 1))  # claimed ahead
    assert await buf.unhold() == 1
    got = [e.seq for e in await buf.claim(10)]
    got += [e.seq for e in await buf.claim(10)]
    assert sorted(got) == [1, 2]
    assert await buf.claim(10) == []


async def test_the_size_cap_path_inserts_pending_and_stops_claiming_ahead(
    tmp_path: Path,
) -> None:
    """A commit over the cap (``_insert_making_room``, evicting a sent row) inserts pending
    and clears none-pending: the next claim reads it from the database."""
    path = tmp_path / "buffer.db"
    buf = await Buffer.open(path, max_bytes=30)  # one ~19-byte payload fits, two do not
    try:
        await open_room(buf, 10)
        await buf.append(make_event("a", 0))  # fits: claimed ahead
        first = await buf.claim(10)
        assert [e.seq for e in first] == [1]
        await buf.mark_sent(first)
        await open_room(buf, 10)
        assert (await buf.append(make_event("a", 1))).seq == 2  # evicts the sent row
        assert states(path) == {STATE_PENDING: 1}
        assert_counts_exact(path)
        assert [e.seq for e in await buf.claim(10)] == [2]
        assert await buf.claim(10) == []
    finally:
        await buf.close()


async def test_reopen_puts_claimed_ahead_rows_back_to_pending(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buf = await Buffer.open(path, max_bytes=10**8)
    await open_room(buf, 10)
    for n in range(2):
        await buf.append(make_event("a", n))
    await buf.close()
    buf = await Buffer.open(path, max_bytes=10**8)
    try:
        assert states(path) == {STATE_PENDING: 2}
        assert_counts_exact(path)
        await buf.append(make_event("a", 2))  # none_pending False at open: pending
        assert [e.seq for e in await buf.claim(10)] == [1, 2, 3]
    finally:
        await buf.close()
