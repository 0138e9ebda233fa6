"""Adversarial review (second) of the round-trip queue (buffer/connection.py, b824bc6) and the
claim's nothing-pending flag (``Buffer._may_have_pending``). Real SQLite file, real aiosqlite
thread, real asyncio (Python 3.11); which writes share a transaction is decided by the test (a
write holds aiosqlite's thread until the others were asked for), not by timing.

Proven (was xfail strict on b824bc6; fixed since, now a plain test, renamed
``test_a_write_raising_in_a_shared_transaction_does_not_stop_the_queue[stopiteration]``: its
outcome is a RuntimeError, and ``_ended`` starts the next round trip whatever handing out did):

- ``test_a_write_raising_stopiteration_in_a_shared_transaction_stops_the_queue``: a write that
  raises ``StopIteration`` is caught per savepoint and handed out with ``set_exception``, which
  asyncio refuses (TypeError) inside ``_ended``; ``_start_next`` is never called, ``_running``
  stays a finished task, so the writes after it in that transaction never hear their outcome
  and every round trip asked from then on (appends, claims, settles, close's checkpoint) waits
  forever. Low likelihood: no buffer write raises StopIteration today (a bare ``next()`` on an
  exhausted iterator in a future write, or a driver's ``render`` would be caught by
  ``_insert_making_room``); a write alone raising it hangs too, but in aiosqlite's own
  ``set_exception`` (as before the change). The general point: nothing guards ``_ended``, and
  any exception there stops the queue for good.

Dismissed:

- Outcomes before COMMIT / to the wrong write / shared exceptions: ``_hand_out`` runs only from
  the round trip task's done callback, after ``run_in_one_transaction`` returned (COMMIT done),
  zipped (strict) in the order run; one exception object is shared only when nothing committed.
- Claim after insert in one transaction: its rows reach the pump only after that COMMIT (FULL,
  the insert being durable); a failing COMMIT fails the claim too (pinned in
  test_review_shared.py).
- Eviction and a claim in one transaction: eviction deletes sent rows and pending/held
  telemetry only, never in-flight rows, so a claim before it keeps its rows and one after it
  never sees what it deleted.
- ``_insert_making_room`` reads only ``_last_seq`` (changed by the writer task alone, after its
  own write returned and before it asks for the next), ``max_bytes`` and ``keep_unconfirmed``
  from the loop; bytes come from the transaction. ``self._bytes`` on the loop can only be
  stale high (a prune's caller not resumed yet): the fast path then takes the exact slow path,
  never over the cap.
- Scheduling claim (3.11): ``set_result`` schedules the callers' wake-ups before
  ``ensure_future`` schedules the new task's first step (which is what puts it on the thread);
  no buffer caller awaits anything between its write and its bookkeeping (prune, _insert,
  claim, settle). The only loop state read on the thread does not depend on it (above).
- Reentrancy: ``set_result``/``set_exception`` never run callbacks synchronously in 3.11 (no
  eager tasks), so nothing can ask between ``_hand_out`` and ``_start_next``; an ask while a
  finished task's ``_ended`` is pending only queues (``_running`` not None) and is started by it.
- Round trip started twice or never: ``_running`` is None only when ``_asked`` is empty (after
  ``_start_next``) or after the loop-shutdown branch cleared ``_asked``; except for the
  ``_ended`` exception above, no work is left in ``_asked`` with nothing running.
- The flag: every write making a pending row (insert incl. eviction path, release,
  release_in_flight, unhold) bumps ``_pending_writes_asked`` synchronously before its ask;
  ``_load``'s reset runs before any claim (flag starts True, also on reopen); settle only moves
  to confirmed/rejected, mark_sent uses max(state, sent), hold goes to held; a claim's rows
  are read and moved in one savepoint; live_after takes both sides before comparing with the
  limit; a failed, cancelled, or whole-transaction-rolled-back claim never clears the flag;
  resumption order does not matter (counter, not time).
- Caller cancelled after its outcome was set but before it resumed: CancelledError though
  committed (claim rows left in flight until release_in_flight at session end; a prune's
  freed bytes never subtracted, stored_bytes overstated until reopen; the writer abandons with
  "outcome unknown"). Same one-step window as awaiting aiosqlite's future directly before the
  change; not new. Cancelled before its round trip started: removed, never runs (no loss: an
  append so cancelled is only the writer's, which then reports "unknown", no feedback).
- Whole-transaction failure (disk full / I/O error) now fails the other writes that shared it:
  inserts are refused (truthfully: nothing committed, bad-read correct), settle is retried
  and not acknowledged until it commits (gateway/inbound.py ``_apply``), mark_sent failures
  leave rows in flight, released and resent with the same id/seq (contract allows).
- BaseException inside a write: not caught per savepoint; whole transaction rolled back, every
  write gets it. ROLLBACK TO failing: leaves ``each``, whole rollback, all fail.
- Round trip task cancelled (only the loop's teardown cancels every task; nothing in gateway/
  uses all_tasks): callers get CancelledError, queue cleared, writer abandons as "unknown".
- close(): refuses new asks at once, runs what was asked first; a close cancelled in its
  checkpoint leaves ``_closing`` set (later writes refused, buffer is closing anyway) and the
  next close retries. The early return (thread dead / connection gone) sets ``_closed``
  without ``_closing``: an ask after it could wait forever on a dead thread, but only after a
  loop teardown killed the thread; no caller is left then.
- Read-only connections: stats use a plain aiosqlite connection; replay (Buffer's and
  gateway/replay.py's) use BufferConnection.read only (alone, in order), unchanged in kind.
  Side note, pre-existing (7d7960e's close did the same) and not a loss: close()'s
  ``wal_checkpoint(TRUNCATE)`` on a read-only connection can never succeed (disk I/O error,
  suppressed) and, while another connection holds a write transaction, first waits the whole
  busy_timeout (measured: 5.0 s with gateway/replay.py's 5000 ms) -- ``edge-gateway replay``
  may hang up to 5 s at exit against a busy daemon. Skip the checkpoint on read-only ones.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from buffer.connection import BufferConnection, read_only_uri
from buffer.schema import open_database
from tests.unit.buffer.holds import writer_busy


async def _conn(path: Path) -> BufferConnection:
    db = BufferConnection(await open_database(path, None))
    await db.write(lambda c: c.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER)"), durable=True)
    return db


def _insert(value: int) -> object:
    def run(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
        return value

    return run


def _stops(_conn: sqlite3.Connection) -> None:
    raise StopIteration  # e.g. a bare next() on an exhausted iterator


def _fails(_conn: sqlite3.Connection) -> None:
    raise ValueError("this write only")


@pytest.mark.parametrize(
    ("failing_write", "told"),
    [
        # The proven case: a future refuses StopIteration, so its outcome is a RuntimeError.
        (_stops, pytest.raises(RuntimeError, match="StopIteration")),
        (_fails, pytest.raises(ValueError, match="this write only")),
    ],
    ids=["stopiteration", "ordinary-exception"],
)
async def test_a_write_raising_in_a_shared_transaction_does_not_stop_the_queue(
    tmp_path: Path, failing_write: Callable[[sqlite3.Connection], None], told: Any
) -> None:
    """The write after the failing one in its transaction commits and is told so, the failing
    one gets its error, and the queue goes on to the next transaction."""
    db = await _conn(tmp_path / "buffer.db")
    try:
        async with writer_busy(db):
            failing = asyncio.ensure_future(db.write(failing_write, durable=False))
            after = asyncio.ensure_future(db.write(_insert(1), durable=True))
            await asyncio.sleep(0)
        async with asyncio.timeout(3):
            assert await after == 1
            assert await db.write(_insert(2), durable=True) == 2
            with told:
                await failing
            rows = await db.read(lambda c: c.execute("SELECT v FROM t ORDER BY v").fetchall())
        assert rows == [(1,), (2,)]
    finally:
        await db.close()


async def test_closing_a_read_only_connection_does_not_wait_out_a_busy_writer(
    tmp_path: Path,
) -> None:
    """Side finding, fixed: a read-only connection (``edge-gateway replay``'s, the buffer's
    replay reader) tried a WAL checkpoint at close, which cannot succeed there and waited out
    the whole busy timeout (5 s) while the daemon held a write transaction."""
    db = await _conn(tmp_path / "buffer.db")
    await db.write(_insert(1), durable=True)
    await db.close()
    writer = sqlite3.connect(tmp_path / "buffer.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t (v) VALUES (2)")
    try:
        raw = await aiosqlite.connect(read_only_uri(tmp_path / "buffer.db"), uri=True)
        await raw.execute("PRAGMA busy_timeout=5000")
        reader = BufferConnection(raw, read_only=True)
        assert await reader.read(lambda c: c.execute("SELECT v FROM t").fetchall()) == [(1,)]
        started = time.monotonic()
        await reader.close()
        assert time.monotonic() - started < 1.0
    finally:
        writer.execute("ROLLBACK")
        writer.close()
