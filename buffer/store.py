"""The store-and-forward buffer: group commit on the way in, claims and acks on the way out.

One writer task owns every append. ``append`` queues an event and returns only after the
transaction holding it committed (WAL, ``synchronous=FULL``), so nothing is reported stored
before it is on disk; appends that arrive while a commit is in flight ride in the next
transaction together, which is what makes durable ingest fast (many events, one fsync).

Per-device ``seq`` is assigned inside that transaction, so it is gap-free and never reused: a
refused event takes no number.

Every write, appends and state changes alike, goes through :meth:`BufferConnection.write`
(buffer/connection.py), which sets the transaction's durability itself. The cap's policy is in
buffer/eviction.py, confirms in buffer/confirms.py, replay reads in buffer/replay_reads.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import aiosqlite
import structlog

from buffer import counts, writer_lock
from buffer.claims_ahead import ClaimsAhead, CommitClaim
from buffer.confirms import SettleResult, first_verdicts, settle
from buffer.connection import BufferConnection
from buffer.event_ids import id_key, id_text
from buffer.eviction import awaiting_confirm_sql, make_room
from buffer.replay_reads import (
    ReplayRange,
    check_range,
    delivered_rows,
    lost_in_gaps,
    still_unsent,
)
from buffer.rows import (
    OutgoingEvent,
    chunks,
    marks,
)
from buffer.schema import (
    STATE_CONFIRMED,
    STATE_HELD,
    STATE_IN_FLIGHT,
    STATE_PENDING,
    STATE_SENT,
    ProgressFn,
    open_database,
)
from buffer.stats import BufferStats, collect_stats, open_reader
from drivers.base import StoredEvent

log = structlog.get_logger(__name__)


class BufferFullError(Exception):
    """The event was refused: the buffer is at its size cap (or the disk is full)."""


class BufferClosedError(RuntimeError):
    """The buffer is closing or closed: the event was not stored."""


@dataclass(slots=True)
class NewEvent:
    """An event on its way in. ``render`` builds the wire payload once ``seq`` is known.

    Made once per event, so not ``frozen``: a frozen dataclass costs five times as much to build
    (about 1 µs). Nothing changes one after it is made.
    """

    id: str
    device: str
    time: str
    type: str
    droppable: bool
    render: Callable[[int], bytes]
    key: bytes | str | None = None
    """``id`` as stored (:func:`~buffer.event_ids.id_key`), when the caller has it at hand
    (the pipeline: a UUID's bytes); None: packed from ``id`` in the commit."""


_Row = tuple[bytes | str, str, int, int, float, bytes, int]
"""An events row as inserted: id (as :func:`id_key` stores it), device, seq, droppable, created,
payload, rowid."""

_INSERT_EVENT = (
    "INSERT INTO events (id, device, seq, droppable, created, payload, rowid)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_DEVICE = (
    "INSERT INTO devices (device, last_seq, unsent_events, payload_bytes) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (device) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq),"
    " unsent_events = unsent_events + excluded.unsent_events,"
    " payload_bytes = payload_bytes + excluded.payload_bytes"
)
_INSERT_IN_FLIGHT = (
    "INSERT INTO events (id, device, seq, droppable, created, payload, rowid, state)"  # noqa: S608
    f" VALUES (?, ?, ?, ?, ?, ?, ?, {STATE_IN_FLIGHT})"
)
"""An events row claimed ahead (buffer/claims_ahead.py): inserted in flight, never pending."""
_CLAIMABLE = (
    "SELECT rowid, id, device, seq, payload, created, droppable FROM events"  # noqa: S608
    f" WHERE state < 2 AND state = {STATE_PENDING} {{extra}} ORDER BY rowid LIMIT ?"
)


class EventRenderError(ValueError):
    """An event's payload could not be rendered: refused alone, never stored."""


def _render_failed(event: NewEvent, exc: Exception, *, logged: bool = False) -> EventRenderError:
    """The refusal of one event that cannot be rendered (logged once: the first pass)."""
    if not logged:
        log.error(
            "event_render_failed",
            device=event.device,
            type=event.type,
            error=f"{type(exc).__name__}: {exc}"[:200],
        )
    return EventRenderError(f"event cannot be rendered: {type(exc).__name__}: {exc}"[:300])


def _stored(event: NewEvent, row: _Row) -> StoredEvent:
    """What the caller of ``append`` learns of its event once its row committed."""
    return StoredEvent(event.id, row[1], row[2], event.time, event.type)


def _events_with_rows(batch: list[_Append], unrenderable: dict[int, Exception]) -> list[NewEvent]:
    """The batch's events that got a row (all but the unrenderable), in the rows' order."""
    if not unrenderable:
        return [ev for ev, _future in batch]
    return [ev for index, (ev, _future) in enumerate(batch) if index not in unrenderable]


def _insert_rows(
    conn: sqlite3.Connection, rows: Sequence[_Row], last_seq: dict[str, int], ahead: int = 0
) -> None:
    """Insert ``rows``; record each of their devices' new ``last_seq``, bytes and counts.

    The first ``ahead`` rows go in in flight, claimed for the publisher (buffer/claims_ahead.py),
    the rest pending.
    """
    if ahead:
        conn.executemany(_INSERT_IN_FLIGHT, rows[:ahead])
        counts.add_unsent(conn, ahead, STATE_IN_FLIGHT)
    if ahead < len(rows):
        conn.executemany(_INSERT_EVENT, rows[ahead:] if ahead else rows)
        counts.add_unsent(conn, len(rows) - ahead, STATE_PENDING)
    # The kept counts (buffer/counts.py) in the same per-device statement as the seq.
    added: dict[str, list[int]] = {}
    for row in rows:
        device = added.get(row[1])
        if device is None:
            added[row[1]] = [1, len(row[5])]
        else:
            device[0] += 1
            device[1] += len(row[5])
    conn.executemany(_UPSERT_DEVICE, [(d, last_seq[d], n, b) for d, (n, b) in added.items()])


def _held_bytes(conn: sqlite3.Connection) -> int:
    """The payload bytes the buffer holds, from the devices' kept counts (buffer/counts.py)."""
    return int(conn.execute("SELECT coalesce(sum(payload_bytes), 0) FROM devices").fetchone()[0])


def _claimable(
    conn: sqlite3.Connection, extra: str, params: tuple[int, ...], *, backlog: bool
) -> list[OutgoingEvent]:
    """The oldest pending rows (rowid order) as OutgoingEvents, ``droppable`` included."""
    return [
        OutgoingEvent(
            int(r), id_text(i), str(d), int(s), bytes(p), backlog, float(c or 0.0), int(dr)
        )
        for r, i, d, s, p, c, dr in conn.execute(_CLAIMABLE.format(extra=extra), params)
    ]


def _by_rowid(event: OutgoingEvent) -> int:
    return event.rowid


def _claim_pending(
    conn: sqlite3.Connection, limit: int, live_after: int | None, ahead: ClaimsAhead
) -> list[OutgoingEvent]:
    """Mark up to ``limit`` of the oldest pending rows in flight (SQLite thread); return them.

    Live events (after ``live_after``) first when given. Tells ``ahead`` when it took every
    pending row, so that the next commits may claim theirs as they insert them.
    """
    if live_after is None:
        rows = _claimable(conn, "", (limit,), backlog=False)
    else:
        rows = _claimable(conn, "AND rowid > ?", (live_after, limit), backlog=False)
        if len(rows) < limit:
            rows += _claimable(
                conn, "AND rowid <= ?", (live_after, limit - len(rows)), backlog=True
            )
    for chunk in chunks([e.rowid for e in rows]):
        conn.execute(
            f"UPDATE events SET state = {STATE_IN_FLIGHT}"  # noqa: S608 - constant
            f" WHERE rowid IN ({marks(len(chunk))})",
            chunk,
        )
    # Selected as pending in this transaction (the writer lock is held): all of them moved.
    counts.move_unsent(conn, len(rows), STATE_PENDING, STATE_IN_FLIGHT)
    if len(rows) < limit:  # every pending row is taken
        ahead.pending_taken(limit - len(rows))
    return rows


class CommitFuture(asyncio.Future[StoredEvent]):
    """An append's outcome, settled by the buffer alone: ``cancel()`` refuses, returning False.

    Queued is final (the event is committed or refused whatever its awaiter does), so the
    outcome must not be lost with a cancelled awaiter. A task cancelled while awaiting this
    future is not woken by the cancellation: asyncio's ``Task.cancel`` finds the future
    refusing and marks the task instead, which then gets its ``CancelledError`` at the
    ``await`` once the buffer settled the future, so the outcome is known (``result()``,
    ``exception()``) where the cancellation is caught. ``asyncio.shield`` around the future
    did the same with a second future and an extra loop turn per event (docs/performance.md).
    The price: an awaiter's cancellation waits for the commit under way, as the pipeline's
    did anyway to give the worker its feedback (gateway/pipeline.py).
    """

    __slots__ = ()

    def cancel(self, msg: object | None = None) -> bool:  # noqa: ARG002 - asyncio's signature
        """Refuse: only the buffer settles an append's outcome."""
        return False


_Append = tuple[NewEvent, CommitFuture]
"""A queued append: the event and the future its commit settles (a tuple: one per event)."""


@dataclass(slots=True)
class _Committed:
    """What a commit that had to make room did, applied to memory only once it committed."""

    results: list[StoredEvent | BaseException] = field(default_factory=list)
    last_seq: dict[str, int] = field(default_factory=dict)
    bytes_delta: int = 0
    counts: collections.Counter[str] = field(default_factory=collections.Counter)


class Buffer:
    """The durable event store. Create with :meth:`open`, then :meth:`close` when done."""

    def __init__(
        self,
        db: BufferConnection,
        path: Path,
        *,
        max_bytes: int,
        batch_max: int,
        keep_unconfirmed: frozenset[str] = frozenset(),
        claims_ahead: ClaimsAhead | None = None,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep_unconfirmed = keep_unconfirmed
        """Devices at the ``accepted`` level: their sent, unconfirmed events outlive retention."""
        self._db = db
        self._batch_max = max(1, batch_max)
        """Events per group commit at most; at least one, or the writer would take none and
        spin without awaiting (the loop hung at 100 % CPU with 0, which once meant groups of
        one)."""
        self._queue: collections.deque[_Append | None] = collections.deque()
        """Appends waiting for the writer, then the ``None`` :meth:`close` queues to stop it."""
        self._wake: asyncio.Future[None] | None = None
        """Set while the writer waits for something queued; the next append settles it. A
        deque and one future per wait, not an ``asyncio.Queue``'s two calls per event."""
        self._last_seq: dict[str, int] = {}
        self._bytes = 0
        self._next_rowid = 1
        """The rowid the next event gets. SQLite would reuse the highest one once its row is
        deleted (evicted or pruned), while a PUBACK, release or hold for the event that had it
        may still be on its way: those find rows by rowid, so one is never given twice while
        this process runs (a restart forgets every claim)."""
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._close_task: asyncio.Future[None] | None = None
        self._lock_fd: int | None = None
        """The buffer file's writer lock (buffer/writer_lock.py), held until :meth:`close`."""
        self._reader: aiosqlite.Connection | None = None
        self._replay_reader: BufferConnection | None = None
        self._opening_reader = asyncio.Lock()
        """Held while a read-only connection is opened at first use (one per kind, not two)."""
        """Read-only, for replay range checks (WAL: they never wait for the writer)."""
        self._pending_writes_asked = 0
        """Writes that can make a pending row (a commit, a release, an unhold), counted as they
        are asked for (``_may_pend``)."""
        self._none_pending_as_of: int | None = None
        """``_pending_writes_asked`` when a claim asked for its rows, if it found fewer than its
        limit (so none was left), or a commit that left none after it (all claimed ahead).
        While the count is still that, a claim answers "nothing" without a transaction. The
        pump asks at every PUBACK that frees window space: 62 % of its claims found nothing at
        500 events/s in bench.latency, each a transaction on the writer's connection that the
        next scan's commit waited behind. The count at the claim's ask, not at its return: the
        connection runs writes in the order asked, so every earlier one ran before its query,
        and callers of writes that shared a transaction resume in no promised order
        (buffer/connection.py)."""
        self._ahead = claims_ahead or ClaimsAhead()
        """What commits may claim for the publisher as they insert (buffer/claims_ahead.py)."""
        self._claimed_ahead: list[OutgoingEvent] = []
        """Events commits claimed ahead, in rowid order, for the pump's next claim."""
        self._claims_epoch = 0
        """Counts the releases of every in-flight row: a commit that claimed ahead before one
        (its rows are pending again) must not hand them to the pump when it returns after."""
        self.committed = asyncio.Event()
        """Set after each commit that added events; the publisher waits on it when idle."""
        self.commits = 0
        """Transactions that stored events; fewer than events stored when group commit works."""
        self.transitions: collections.Counter[str] = collections.Counter()
        """Every state change, by name: stored, refused, dropped, claimed, sent, released."""

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        max_bytes: int,
        batch_max: int = 500,
        keep_unconfirmed: frozenset[str] = frozenset(),
        progress: ProgressFn | None = None,
    ) -> Buffer:
        """Open the database, reset in-flight rows to pending and start the writer.

        ``progress`` hears about long steps (a schema migration of a big buffer) as they go.
        """
        lock = writer_lock.take(path)
        ahead = ClaimsAhead()
        try:
            db = BufferConnection(
                await open_database(path, progress), rolled_back=ahead.pending_made
            )
        except BaseException:
            writer_lock.release(lock)
            raise
        buf = cls(
            db,
            path,
            max_bytes=max_bytes,
            batch_max=batch_max,
            keep_unconfirmed=keep_unconfirmed,
            claims_ahead=ahead,
        )
        buf._lock_fd = lock
        try:
            await buf._load()
        except BaseException:
            await db.close()
            writer_lock.release(lock)
            raise
        buf._writer = asyncio.create_task(buf._write_loop(), name="buffer-writer")
        return buf

    async def _load(self) -> None:
        def load(conn: sqlite3.Connection) -> tuple[dict[str, int], int, int, int]:
            last_seq = {
                str(d): int(s) for d, s in conn.execute("SELECT device, last_seq FROM devices")
            }
            held = _held_bytes(conn)
            reset = counts.move_all(conn, STATE_IN_FLIGHT, STATE_PENDING)
            reset += counts.move_all(conn, STATE_HELD, STATE_PENDING)
            top = conn.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()
            return last_seq, held, reset, int(top[0]) + 1

        self._last_seq, self._bytes, reset, self._next_rowid = await self._db.write(
            load, durable=True
        )
        if reset:
            log.info("buffer_in_flight_reset", events=reset)

    @property
    def healthy(self) -> bool:
        """False once the writer task died: the watchdog must then stop vouching for us."""
        return self._writer is not None and not self._writer.done()

    @property
    def stored_bytes(self) -> int:
        """Payload bytes held, the figure the size cap applies to."""
        return self._bytes

    # --- the way in ---------------------------------------------------------------------------

    async def append(self, event: NewEvent) -> StoredEvent:
        """Store one event; returns after its transaction committed. Raises BufferFullError.

        Cancelled, it raises ``CancelledError`` only once the event's commit returned (see
        :meth:`append_nowait`): the event is then stored or refused, never left in between.
        """
        return await self.append_nowait(event)

    def append_nowait(self, event: NewEvent) -> CommitFuture:
        """Queue one event for the next group commit; its future tells how that ended.

        The future gets the ``StoredEvent`` once the transaction holding the event committed,
        or the reason it was not stored (``BufferFullError``, ``EventRenderError``, an SQLite
        error, ``BufferClosedError`` when :meth:`close` came first); only the writer and
        :meth:`close` settle it, and it cannot be cancelled (:class:`CommitFuture`). What
        ``append`` awaits, without a task per event around it: the pipeline awaits it directly
        (gateway/pipeline.py), ~11 % of the instructions of an event's whole path without the
        task, ~11 % more without a shield (docs/performance.md).

        Queued is final: an event is committed (or refused) whatever happens to its awaiter.
        Raises at once, queueing nothing, when the buffer is closing or its writer is gone.
        """
        if self._closing:
            raise BufferClosedError("buffer closed")
        writer = self._writer
        if writer is None or writer.done():  # not ``healthy``: a property call per event
            raise RuntimeError("buffer writer is not running")
        future = CommitFuture(loop=asyncio.get_running_loop())
        self._queue.append((event, future))
        if self._wake is not None:
            self._wake_writer()
        return future

    def _wake_writer(self) -> None:
        """Something was queued: wake the writer if it waits (else it finds it when it looks)."""
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():  # done: cancelled with the writer
            wake.set_result(None)

    async def _write_loop(self) -> None:
        """Commit queued appends in groups until :meth:`close` queues its ``None``."""
        batch: list[_Append] = []
        queue = self._queue
        try:
            while True:
                if not queue:
                    self._wake = asyncio.get_running_loop().create_future()
                    await self._wake
                    continue
                batch = []
                stop = False
                while queue and len(batch) < self._batch_max:
                    item = queue.popleft()
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                if batch:
                    await self._commit(batch)
                if stop:
                    return
        except BaseException:
            self._abandon(batch)
            raise

    def _abandon(self, batch: list[_Append]) -> None:
        """Settle every future nobody else will: the writer is stopping without :meth:`close`.

        It was cancelled as the event loop shuts down, or broke; the futures' awaiters cannot
        be cancelled until they are settled (:class:`CommitFuture`). The batch being committed
        may still commit on the SQLite thread, so its events are not called refused (a worker
        told "bad read" would scan again, storing the item twice): their outcome is unknown,
        which the pipeline answers with no feedback. Queued events never reached a
        transaction: closed, not stored.
        """
        unknown = RuntimeError("buffer writer stopped during this event's commit: outcome unknown")
        for _event, future in batch:
            if not future.done():
                future.set_exception(unknown)
        self._refuse_queued()

    def _refuse_queued(self) -> None:
        """Refuse what is still queued: it never reached a transaction, and no writer will."""
        while self._queue:
            queued = self._queue.popleft()
            if queued is not None and not queued[1].done():
                self.transitions["refused"] += 1
                queued[1].set_exception(BufferClosedError("buffer writer stopped"))

    async def _commit(self, batch: list[_Append]) -> None:
        """One transaction for ``batch``; memory (seqs, bytes) changes only once it committed."""
        results: list[StoredEvent | BaseException]
        now = time.time()
        # Taken whether or not the commit succeeds: a rowid left unused is harmless.
        first_rowid = self._next_rowid
        self._next_rowid += len(batch)
        try:
            results = await self._insert(batch, now, first_rowid)
            self.commits += 1
        except Exception as exc:
            error = _translate(exc)
            log.exception("buffer_commit_failed", events=len(batch), error=str(error))
            results = [error] * len(batch)
        # A future is settled here or by close() only (it refuses cancellation), so none is done
        # yet; checked all the same, and such an event would count, and wake the publisher,
        # like any other: it is committed or refused whatever became of its future.
        stored = 0
        for (_event, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                self.transitions["refused"] += 1
                if not future.done():
                    future.set_exception(result)
            else:
                stored += 1
                if not future.done():
                    future.set_result(result)
        if stored:
            self.transitions["stored"] += stored
            self.committed.set()

    async def _insert(
        self, batch: list[_Append], now: float, first_rowid: int
    ) -> list[StoredEvent | BaseException]:
        """Insert ``batch`` in one durable transaction; each event's outcome, in order."""
        rows, last_seq, unrenderable = self._rows(batch, now, first_rowid)
        results: list[StoredEvent | BaseException]
        size = sum(len(row[5]) for row in rows)
        self._may_pend()
        if self._bytes + size <= self.max_bytes:
            await self._insert_fitting(batch, rows, last_seq, unrenderable)
            self._last_seq, self._bytes = last_seq, self._bytes + size
            if unrenderable:
                stored_rows = iter(rows)
                results = [
                    unrenderable[index] if index in unrenderable else _stored(ev, next(stored_rows))
                    for index, (ev, _future) in enumerate(batch)
                ]
            else:  # the usual case: a row for every event, in order
                results = [_stored(ev, row) for (ev, _future), row in zip(batch, rows, strict=True)]
        else:
            done = await self._db.write(
                partial(self._insert_making_room, batch, now, first_rowid), durable=True
            )
            self._last_seq.update(done.last_seq)
            self._bytes += done.bytes_delta
            self._count_evictions(done.counts)
            results = done.results
            refused = sum(
                isinstance(r, BufferFullError) and not ev.droppable
                for r, (ev, _future) in zip(results, batch, strict=True)
            )
            if refused:
                log.error(
                    "buffer_full_refusing_event",
                    events=refused,
                    max_bytes=self.max_bytes,
                    held=self._bytes,
                )
        return results

    async def _insert_fitting(
        self,
        batch: list[_Append],
        rows: list[_Row],
        last_seq: dict[str, int],
        unrenderable: dict[int, Exception],
    ) -> None:
        """Insert ``rows`` (all fit under the cap), the first ones claimed ahead if there is room.

        Raises what the write raised. The claimed rows go to the pump (``_claimed_ahead``) only
        once committed, and only if no release of every in-flight row was asked for meanwhile:
        that release ran after this commit (writes run in the order asked) and made them
        pending again, where the next claim reads them.
        """
        claim = CommitClaim()

        def insert(conn: sqlite3.Connection) -> None:
            _insert_rows(conn, rows, last_seq, self._ahead.take(len(rows), claim))

        epoch, asked = self._claims_epoch, self._pending_writes_asked
        try:
            await self._db.write(insert, durable=True)
        except BaseException:
            # Failed, or the writer was cancelled (the loop's teardown) while the write may
            # still run: nothing is handed out, and a take not made yet claims nothing. Rows
            # that did go in in flight wait for the session's release (or the next open), as
            # a claim's rows whose caller was cancelled do.
            self._ahead.abandon(claim)
            raise
        ahead = claim.ahead
        if ahead == len(rows) and self._none_pending_as_of == asked - 1:
            # The claim that found nothing pending was the last write asked before this one
            # that could leave a pending row, and this one left none: still none pending.
            self._none_pending_as_of = asked
        if ahead and epoch != self._claims_epoch:
            self._ahead.handed(ahead)  # released meanwhile: pending again, never handed out
        elif ahead:
            events = _events_with_rows(batch, unrenderable)
            self._claimed_ahead += [
                OutgoingEvent(row[6], ev.id, row[1], row[2], row[5], False, row[4], row[3])
                for row, ev in zip(rows[:ahead], events, strict=False)
            ]

    def _may_pend(self) -> None:
        """Just before asking for a write that can make a pending row (see ``claim``)."""
        self._pending_writes_asked += 1

    def _rows(
        self, batch: list[_Append], now: float, first_rowid: int
    ) -> tuple[list[_Row], dict[str, int], dict[int, Exception]]:
        """The batch's rows with the next seqs, as if all fit under the cap (the usual case).

        An event whose payload cannot be rendered (a driver put something JSON cannot carry in
        its data) is refused alone, by its index in the batch, and takes no seq: it must not
        fail the commit of the others in its group, which may come from other devices.
        """
        last_seq = dict(self._last_seq)
        rows: list[_Row] = []
        unrenderable: dict[int, Exception] = {}
        for index, (ev, _future) in enumerate(batch):
            seq = last_seq.get(ev.device, 0) + 1
            try:
                payload = ev.render(seq)
            except Exception as exc:  # any render failure is this event's alone
                unrenderable[index] = _render_failed(ev, exc)
                continue
            last_seq[ev.device] = seq
            rows.append(
                (
                    id_key(ev.id) if ev.key is None else ev.key,
                    ev.device,
                    seq,
                    int(ev.droppable),
                    now,
                    payload,
                    first_rowid + index,
                )
            )
        return rows, last_seq, unrenderable

    def _insert_making_room(
        self, batch: list[_Append], now: float, first_rowid: int, conn: sqlite3.Connection
    ) -> _Committed:
        """The batch does not fit under the cap: evict or refuse event by event (SQLite thread).

        Rare, so simple: seqs are assigned (and payloads rendered) again, because a refused
        event takes no number. Reads ``_last_seq`` from the loop's object: only the writer task
        changes it, once its commit returned, before it asks for the next. The bytes held are
        read in this transaction: a prune or an eviction that shared it, or whose caller has
        not resumed yet, is in the file but maybe not yet in ``_bytes`` (buffer/connection.py
        runs writes asked for meanwhile together); what this commit changes goes back as a
        difference, which adds up whatever order the callers resume in.
        """
        self._ahead.pending_made()  # its rows go in pending: rare, no claim ahead here
        done = _Committed()
        last_seq = dict(self._last_seq)
        held = held_at_start = _held_bytes(conn)
        rows: list[_Row] = []
        for rowid, (ev, _future) in enumerate(batch, first_rowid):
            seq = last_seq.get(ev.device, 0) + 1
            try:
                payload = ev.render(seq)
            except Exception as exc:  # refused alone, as in _rows
                done.results.append(_render_failed(ev, exc, logged=True))
                continue
            over = held + len(payload) - self.max_bytes
            if over > 0:
                room = make_room(conn, over, self.keep_unconfirmed)
                if room.freed < over:
                    done.results.append(BufferFullError(f"buffer full ({self.max_bytes} bytes)"))
                    continue
                held -= room.freed
                done.counts.update(room.counts)
            held += len(payload)
            last_seq[ev.device] = seq
            key = id_key(ev.id) if ev.key is None else ev.key
            rows.append((key, ev.device, seq, int(ev.droppable), now, payload, rowid))
            done.results.append(_stored(ev, rows[-1]))
        _insert_rows(conn, rows, last_seq)
        done.last_seq = {row[1]: last_seq[row[1]] for row in rows}
        done.bytes_delta = held - held_at_start
        return done

    def _count_evictions(self, counts: collections.Counter[str]) -> None:
        self.transitions.update(counts)
        if counts["dropped"]:
            log.warning("buffer_full_dropped_telemetry", events=counts["dropped"])
        if counts["evicted_unconfirmed"]:
            log.warning("buffer_full_evicted_unconfirmed", events=counts["evicted_unconfirmed"])

    # --- the way out --------------------------------------------------------------------------

    async def claim(self, limit: int, live_after: int | None = None) -> list[OutgoingEvent]:
        """Mark up to ``limit`` of the oldest pending events in flight and return them.

        With ``live_after`` (the last rowid of the backlog when a drain began), events committed
        after it come first, so live events are not held behind a long backlog. No transaction
        when commits claimed events ahead (buffer/claims_ahead.py: they are the oldest) or none
        can be pending (``_none_pending_as_of``); then the next commits may claim up to
        ``limit`` events ahead, for the next call.
        """
        if limit <= 0:
            return []
        if self._claimed_ahead:
            return self._hand_out_ahead(limit)
        if self._none_pending_as_of == self._pending_writes_asked and self._ahead.none_pending:
            self._ahead.widen(limit)
            return []
        # Commits still running may have claimed some ahead: they count in the window.
        wanted = limit - self._ahead.outstanding
        if wanted <= 0:
            return []  # they come back with their commit, which wakes the pump
        claimed = await self._claim_from_database(wanted, live_after)
        if not self._claimed_ahead:
            self.transitions["claimed"] += len(claimed)
            return claimed
        # Commits that ran before this claim's query (possibly after its ask) claimed their
        # first rows ahead and returned meanwhile: older than what it read (those that ran
        # after it, newer). The oldest first, or a device's events would go out of order; at
        # most ``limit``, the rest kept for the next claim like any claimed ahead.
        before = len(self._claimed_ahead)
        merged = sorted(claimed + self._claimed_ahead, key=_by_rowid)
        claimed, self._claimed_ahead = merged[:limit], merged[limit:]
        self._ahead.handed(before - len(self._claimed_ahead))
        self.transitions["claimed"] += len(claimed)
        return claimed

    async def _claim_from_database(self, limit: int, live_after: int | None) -> list[OutgoingEvent]:
        """The claim's transaction (:func:`_claim_pending`); notes when it took every row."""
        asked_before = self._pending_writes_asked
        try:
            claimed = await self._db.write(
                partial(_claim_pending, limit=limit, live_after=live_after, ahead=self._ahead),
                durable=False,
            )
        except BaseException:
            self._ahead.pending_made()  # its rows may be pending again: the next claim looks
            raise
        if len(claimed) < limit:  # every pending row it could see is taken
            self._none_pending_as_of = asked_before
        return claimed

    def _hand_out_ahead(self, limit: int) -> list[OutgoingEvent]:
        """Up to ``limit`` of the events commits claimed ahead, oldest first."""
        claimed, self._claimed_ahead = self._claimed_ahead[:limit], self._claimed_ahead[limit:]
        self._ahead.handed(len(claimed))
        self.transitions["claimed"] += len(claimed)
        return claimed

    async def mark_sent(self, events: Sequence[OutgoingEvent]) -> None:
        """Record PUBACKs: these events reached the broker."""
        if not events:
            return
        sent_at = time.time()
        runs = _runs(events)

        def run(conn: sqlite3.Connection) -> None:
            tally = counts.Tally()
            pieces = list(chunks(events))
            moved_whole = [c for c in pieces if _mark_chunk_sent(conn, c, sent_at, tally)]
            if len(moved_whole) == len(pieces):  # the usual case: all were in flight
                counts.move_unsent(conn, len(events), STATE_IN_FLIGHT, STATE_SENT)
                params = [
                    # An unbroken run of seqs if as many as it is long: each event moved a
                    # row of its own, so no seq came twice.
                    (high, -n, n - t, t, low, high if high - low + 1 == n else low - 1, device)
                    for device, (low, high, n, t) in runs.items()
                ]
            else:
                for chunk in moved_whole:
                    for e in chunk:
                        tally.move(e.device, e.droppable, STATE_IN_FLIGHT, STATE_SENT)
                tally.apply_unsent(conn)
                params = []
                for device, (low, high, _, _) in runs.items():
                    unsent, sent, telemetry = tally.row(device)[:3]
                    params.append((high, unsent, sent, telemetry, low, low - 1, device))
            # The devices' counts, last sent seq and first unsent row: one statement each.
            conn.executemany(counts.MARK_SENT, params)

        await self._db.write(run, durable=False)
        self.transitions["sent"] += len(events)

    async def _move(self, events: Sequence[OutgoingEvent], source: int, target: int) -> None:
        """Move claimed ``events`` still in state ``source`` to ``target`` (lazy write)."""
        rowids = [e.rowid for e in events]

        def run(conn: sqlite3.Connection) -> None:
            if target == STATE_PENDING:
                self._ahead.pending_made()
            moved = 0
            for chunk in chunks(rowids):
                moved += conn.execute(
                    f"UPDATE events SET state = {target}"  # noqa: S608 - constants
                    f" WHERE state = {source} AND rowid IN ({marks(len(chunk))})",
                    chunk,
                ).rowcount
            # Between unsent states only (held, pending, in flight): no device's figure changes.
            counts.move_unsent(conn, moved, source, target)

        if target == STATE_PENDING:
            self._may_pend()
        await self._db.write(run, durable=False)

    async def _move_all(self, source: int, target: int) -> int:
        """Move every row in state ``source`` to ``target`` (lazy write); returns how many."""

        def run(conn: sqlite3.Connection) -> int:
            if target == STATE_PENDING:
                self._ahead.pending_made()
            return counts.move_all(conn, source, target)

        if target == STATE_PENDING:
            self._may_pend()
        return await self._db.write(run, durable=False)

    async def release(self, events: Sequence[OutgoingEvent]) -> None:
        """Put claimed events back to pending (connection lost before their PUBACK)."""
        if not events:
            return
        await self._move(events, STATE_IN_FLIGHT, STATE_PENDING)
        self.transitions["released"] += len(events)

    async def release_in_flight(self) -> int:
        """Put every in-flight row back to pending: the publisher's session is over.

        Everything, not just what the publisher still tracks: a session torn down between a
        claim's commit and its return leaves rows in flight that nobody else knows about, and
        so do commits that claimed ahead for it (buffer/claims_ahead.py): those not handed out
        yet are forgotten here, and no commit claims for the ended session any more.
        """
        self._claims_epoch += 1
        self._ahead.handed(len(self._claimed_ahead))
        self._claimed_ahead = []
        self._ahead.close_room()
        released = await self._move_all(STATE_IN_FLIGHT, STATE_PENDING)
        self.transitions["released"] += released
        return released

    async def hold(self, events: Sequence[OutgoingEvent]) -> None:
        """The broker refused these claimed events: keep them, out of the claim order.

        Not sent (nothing is lost), not pending (the pump would send them again at once, in a
        loop, and a poison event would stop everything behind it): held until
        :meth:`unhold` at the next broker session.
        """
        if not events:
            return
        await self._move(events, STATE_IN_FLIGHT, STATE_HELD)
        self.transitions["held"] += len(events)

    async def unhold(self) -> int:
        """Put every held event back to pending: a new broker session tries them once more."""
        released = await self._move_all(STATE_HELD, STATE_PENDING)
        self.transitions["unheld"] += released
        return released

    async def last_rowid(self) -> int:
        """The newest rowid, used as the boundary between backlog and live events."""

        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT coalesce(max(rowid), 0) FROM events").fetchone()
            return int(row[0]) if row else 0

        return await self._db.read(run)

    async def unsent_count(
        self, up_to_rowid: int | None = None, *, at_most: int | None = None
    ) -> int:
        """Events waiting to be sent or in flight (optionally only up to a rowid).

        Held ones (refused by the broker) are not counted: they wait for the next session.

        ``at_most`` stops counting early: "is anything left?" must not walk a million rows.
        """
        sql = f"SELECT 1 FROM events WHERE state >= {STATE_PENDING} AND state < 2"  # noqa: S608
        params: tuple[int, ...] = ()
        if up_to_rowid is not None:
            sql += " AND rowid <= ?"
            params = (up_to_rowid,)
        if at_most is not None:
            sql += " LIMIT ?"
            params = (*params, at_most)
        sql = f"SELECT count(*) FROM ({sql})"  # noqa: S608 - constant fragments

        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute(sql, params).fetchone()
            return int(row[0]) if row else 0

        return await self._db.read(run)

    # --- housekeeping, confirms, replays, device status ----------------------------------------

    async def prune(self, retention: float, now: float | None = None) -> int:
        """Delete events sent more than ``retention`` seconds ago; returns how many went.

        Events of ``keep_unconfirmed`` devices that central has not confirmed or rejected yet
        stay, however old, until a confirm arrives or the size cap evicts them.
        """
        cutoff = (time.time() if now is None else now) - retention
        awaiting = awaiting_confirm_sql(self.keep_unconfirmed)

        def run(conn: sqlite3.Connection) -> tuple[int, int]:
            rows = conn.execute(
                "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events"  # noqa: S608
                f" WHERE state >= 2 AND sent < ? AND NOT ({awaiting})"
                " ORDER BY rowid LIMIT 10000) RETURNING device, state, droppable, length(payload)",
                (cutoff,),
            ).fetchall()
            tally = counts.Tally()
            freed = tally.deleted(rows)
            tally.apply(conn)
            return len(rows), freed

        pruned, freed = await self._db.write(run, durable=False)
        self._bytes -= freed
        self.transitions["pruned"] += pruned
        return pruned

    async def settle(self, verdicts: Sequence[tuple[str, bool]]) -> SettleResult:
        """Apply central's verdicts (id, accepted) durably, in one round trip.

        One transaction for the whole batch (buffer/confirms.py). Only the first verdict for an
        event counts: a repeat (or a contradicting one) is a duplicate.
        """
        if not verdicts:
            return SettleResult()
        first, repeats = first_verdicts(verdicts)
        result = await self._db.write(partial(settle, first=first, now=time.time()), durable=True)
        result.duplicate += repeats
        for s in result.applied:
            self.transitions["confirmed" if s.state == STATE_CONFIRMED else "rejected"] += 1
        return result

    async def _replay_reads(self) -> BufferConnection:
        """The read-only connection replays read on, opened at first use, beside the writer's."""
        if self._closing:  # at once, not behind another read's open
            raise BufferClosedError("the buffer is closed")
        async with self._opening_reader:
            if self._replay_reader is None:
                raw = await self._open_read_only()
                self._replay_reader = BufferConnection(raw, read_only=True)
        reader = self._replay_reader
        if reader is None or self._closing:
            raise BufferClosedError("the buffer is closed")
        return reader

    async def _open_read_only(self) -> aiosqlite.Connection:
        """A read-only connection, or BufferClosedError once the buffer is closing.

        One that finished opening after a close began is closed again here: that close has
        passed the readers, or will not see this one, and aiosqlite's thread (not a daemon)
        would keep the process from exiting. Callers hold ``_opening_reader``, so two first
        reads open one connection, not two.
        """
        if self._closing:
            raise BufferClosedError("the buffer is closed")
        conn = await open_reader(self.path)
        if self._closing:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await conn.close()
            raise BufferClosedError("the buffer is closed")
        return conn

    async def check_replay(self, device: str, from_seq: int, to_seq: int | None) -> ReplayRange:
        """Validate a replay request against what is stored; see :func:`check_range`.

        Runs on a read-only connection of its own, not under the buffer's lock: an appended
        batch never waits behind a range check (issue 18, finding 8).
        """
        return await (await self._replay_reads()).read(
            partial(check_range, device=device, from_seq=from_seq, to_seq=to_seq)
        )

    async def replay_lost(
        self, device: str, gaps: list[tuple[int, int]]
    ) -> tuple[int, list[tuple[int, int]]]:
        """Of the seqs a replay skipped, those deleted while it ran; see :func:`lost_in_gaps`."""
        return await (await self._replay_reads()).read(
            partial(lost_in_gaps, device=device, gaps=gaps)
        )

    async def replay_figures(
        self, device: str, from_seq: int, to_seq: int
    ) -> tuple[int, list[tuple[int, int]]]:
        """Unsent events and dropped ranges of a range as a replay ends (:func:`still_unsent`)."""
        return await (await self._replay_reads()).read(
            partial(still_unsent, device=device, from_seq=from_seq, to_seq=to_seq)
        )

    async def replay_chunk(
        self, device: str, from_seq: int, to_seq: int, limit: int
    ) -> list[OutgoingEvent]:
        """Delivered events of ``device`` with ``from_seq <= seq <= to_seq``, in seq order."""
        return await self._db.read(
            partial(delivered_rows, device=device, from_seq=from_seq, to_seq=to_seq, limit=limit)
        )

    async def set_device_status(self, device: str, status: str, detail: str, since: str) -> None:
        """Persist a device's state so ``edge-gateway status`` sees it from another process."""

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO devices (device, status, detail, since) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (device) DO UPDATE SET status = excluded.status,"
                " detail = excluded.detail, since = excluded.since",
                (device, status, detail, since),
            )

        await self._db.write(run, durable=False)

    async def stats(self) -> BufferStats:
        """Depth by state, per-device sequence numbers, oldest unsent age.

        On a read-only connection of its own, without the buffer lock: at a million rows these
        queries take over a second, and commits (and the worker's feedback) must not wait on
        them. The payload total comes from memory rather than a scan.
        """
        if self._closing:  # at once, not behind another read's open
            raise BufferClosedError("the buffer is closed")
        async with self._opening_reader:
            if self._reader is None:
                self._reader = await self._open_read_only()
        reader = self._reader
        if reader is None or self._closing:
            raise BufferClosedError("the buffer is closed")
        return await collect_stats(
            reader, payload_bytes=self._bytes, awaiting_verdict=self.keep_unconfirmed
        )

    async def close(self) -> None:
        """Let the writer commit everything queued, then close the database.

        Closes run once: a second call, from another task or after the first was cancelled
        (a shutdown cut short), waits for that same close, which goes on to the end whatever
        happens to its callers. Two closes each closing the readers would hang (aiosqlite's
        second close waits for a thread the first ended), and a close cut short halfway would
        leave the database open behind a released writer lock.
        """
        task = self._close_task
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            # The first close, or the last one was cut short (a loop's teardown cancels every
            # task left) or failed: this one tries again.
            task = self._close_task = asyncio.ensure_future(self._close())
            task.add_done_callback(_report_close_failure)
        await asyncio.shield(task)

    async def _close(self) -> None:
        """Stop the writer, refuse what is left, close the readers and the file, let the lock go.

        The batch being committed is never abandoned: its transaction may commit on the
        SQLite thread whatever happens to the task awaiting it, so its callers must hear how
        it ended. Every append queued before this call is ahead of the ``None`` that stops the
        writer, and none is queued after it (``_closing``), so the writer settles them all.
        What a writer that never ran (cancelled before its first step: no :meth:`_abandon`)
        left queued is refused here.
        """
        self._closing = True
        if self._writer is not None and not self._writer.done():
            self._queue.append(None)
            self._wake_writer()
            await asyncio.gather(self._writer, return_exceptions=True)
        self._refuse_queued()
        if self._reader is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await self._reader.close()
            self._reader = None
        if self._replay_reader is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await self._replay_reader.close()
            self._replay_reader = None
        await self._db.close()
        # Only once the file is closed: a close cut short may leave a commit finishing on the
        # SQLite thread, and a writer let in before it lands would read the seqs without it and
        # number its next events again. A close that failed keeps the lock until one succeeds.
        if self._lock_fd is not None:
            writer_lock.release(self._lock_fd)
            self._lock_fd = None


def _report_close_failure(task: asyncio.Future[None]) -> None:
    """Log a close that failed, once.

    Its caller may have stopped waiting (cancelled); asyncio would otherwise only complain of
    an unretrieved error when the task is collected.
    """
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("buffer_close_failed", error=f"{type(exc).__name__}: {exc}")


def _runs(events: Sequence[OutgoingEvent]) -> dict[str, list[int]]:
    """Per device: [lowest seq, highest seq, events, telemetry events] (one cheap pass)."""
    runs: dict[str, list[int]] = {}
    for e in events:
        run_of = runs.get(e.device)
        if run_of is None:
            runs[e.device] = [e.seq, e.seq, 1, e.droppable]
            continue
        if e.seq < run_of[0]:
            run_of[0] = e.seq
        elif e.seq > run_of[1]:
            run_of[1] = e.seq
        run_of[2] += 1
        run_of[3] += e.droppable
    return runs


def _mark_chunk_sent(
    conn: sqlite3.Connection,
    chunk: Sequence[OutgoingEvent],
    sent_at: float,
    tally: counts.Tally,
) -> bool:
    """Mark ``chunk`` sent; True if every row was in flight (the caller counts them then).

    Nearly always every row is still in flight: one UPDATE. Otherwise (a confirm overtook the
    PUBACK, the session's rows were released meanwhile, a row is gone) that UPDATE is undone,
    the rows' states are read first, and what moved goes into ``tally``.
    """
    rowids = [e.rowid for e in chunk]
    in_list = marks(len(rowids))
    conn.execute("SAVEPOINT mark_sent")
    moved = conn.execute(
        f"UPDATE events SET state = {STATE_SENT}, sent = coalesce(sent, ?)"  # noqa: S608
        f" WHERE state = {STATE_IN_FLIGHT} AND rowid IN ({in_list})",
        (sent_at, *rowids),
    ).rowcount
    if moved == len(rowids):
        conn.execute("RELEASE mark_sent")
        return True
    conn.execute("ROLLBACK TO mark_sent")
    conn.execute("RELEASE mark_sent")
    for device, state, droppable in conn.execute(
        f"SELECT device, state, droppable FROM events WHERE state < {STATE_SENT}"  # noqa: S608
        f" AND rowid IN ({in_list})",
        rowids,
    ).fetchall():
        tally.move(str(device), int(droppable), int(state), STATE_SENT)
    # max(): a confirm may have overtaken the PUBACK; never downgrade it to sent.
    conn.execute(
        f"UPDATE events SET state = max(state, {STATE_SENT}),"  # noqa: S608 - constant
        f" sent = coalesce(sent, ?) WHERE rowid IN ({in_list})",
        (sent_at, *rowids),
    )
    return False


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
        return BufferFullError(f"disk full: {exc}")
    return exc
