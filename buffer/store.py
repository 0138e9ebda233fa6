"""The store-and-forward buffer: group commit on the way in, claims and acks on the way out.

One writer task owns every write. ``append`` queues an event and returns only after the
transaction holding it committed (WAL, ``synchronous=FULL``), so nothing is reported stored
before it is on disk; appends that arrive while a commit is in flight ride in the next
transaction together, which is what makes durable ingest fast (many events, one fsync).

Per-device ``seq`` is assigned inside that transaction, so it is gap-free and never reused: a
refused event takes no number.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import aiosqlite
import structlog

from buffer.event_ids import id_key, id_text
from buffer.schema import (
    STATE_CONFIRMED,
    STATE_IN_FLIGHT,
    STATE_PENDING,
    STATE_REJECTED,
    STATE_SENT,
    ProgressFn,
    open_database,
    transaction,
)
from buffer.stats import BufferStats, collect_stats, open_reader
from drivers.base import StoredEvent

log = structlog.get_logger(__name__)

_T = TypeVar("_T")


class BufferFullError(Exception):
    """The event was refused: the buffer is at its size cap (or the disk is full)."""


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


@dataclass(slots=True)
class OutgoingEvent:
    """A claimed event on its way out. ``backlog`` marks rows older than the drain boundary.

    Not ``frozen``, like :class:`NewEvent`: one is built per event.
    """

    rowid: int
    id: str
    device: str
    seq: int
    payload: bytes
    backlog: bool
    created: float = 0.0
    """Commit time (epoch seconds), for the publish latency metric; 0 when not known."""


@dataclass(frozen=True, slots=True)
class Settled:
    """A confirm applied to a stored event: ``state`` is confirmed or rejected."""

    id: str
    device: str
    seq: int
    state: int


@dataclass(slots=True)
class SettleResult:
    """What one batch of confirms did: applied ones, repeats, and ids this buffer never held."""

    applied: list[Settled] = field(default_factory=list)
    duplicate: int = 0
    unknown: int = 0


@dataclass(slots=True)
class ReplayRange:
    """A device's stored events in a seq range, or why the range cannot be replayed."""

    device: str
    from_seq: int
    to_seq: int
    error: str | None = None
    unsent: int = 0
    """Events in the range not yet delivered: the publisher sends them anyway, not the replay."""


_Row = tuple[bytes | str, str, int, int, float, bytes]
"""An events row as inserted: id (as :func:`id_key` stores it), device, seq, droppable, created,
payload."""

_INSERT_EVENT = (
    "INSERT INTO events (id, device, seq, droppable, created, payload) VALUES (?, ?, ?, ?, ?, ?)"
)
_UPSERT_DEVICE = (
    "INSERT INTO devices (device, last_seq) VALUES (?, ?)"
    " ON CONFLICT (device) DO UPDATE SET last_seq = excluded.last_seq"
)


def _device_seqs(rows: Sequence[_Row], last_seq: dict[str, int]) -> list[tuple[str, int]]:
    """(device, last_seq) for every device that has a row in ``rows``."""
    return [(device, last_seq[device]) for device in {row[1] for row in rows}]


def _insert(rows: Sequence[_Row], last_seq: dict[str, int]) -> Callable[[sqlite3.Connection], None]:
    """The statements of a commit that fits under the cap, to run in one round trip."""
    devices = _device_seqs(rows, last_seq)

    def run(conn: sqlite3.Connection) -> None:
        conn.executemany(_INSERT_EVENT, rows)
        conn.executemany(_UPSERT_DEVICE, devices)

    return run


_ADVANCE_LAST_SENT = "UPDATE devices SET last_sent_seq = max(last_sent_seq, ?) WHERE device = ?"


def _last_sent(sent: Iterable[tuple[str, int]]) -> list[tuple[int, str]]:
    """(highest seq, device) per device in ``sent``: the parameters of ``_ADVANCE_LAST_SENT``."""
    last: dict[str, int] = {}
    for device, seq in sent:
        last[device] = max(last.get(device, 0), seq)
    return [(seq, device) for device, seq in last.items()]


def _chunks(rowids: Sequence[int], size: int = 500) -> Iterator[Sequence[int]]:
    """``rowids`` in pieces that stay well under SQLite's limit on bound parameters."""
    for start in range(0, len(rowids), size):
        yield rowids[start : start + size]


def _fetch(
    conn: sqlite3.Connection, sql: str, params: tuple[int, ...], *, backlog: bool
) -> list[OutgoingEvent]:
    """Claimable rows as OutgoingEvents (on the connection's thread)."""
    if params[-1] <= 0:
        return []
    return [
        OutgoingEvent(int(r), id_text(i), str(d), int(s), bytes(p), backlog, float(c))
        for r, i, d, s, p, c in conn.execute(sql, params)
    ]


@dataclass(slots=True)
class _Append:
    event: NewEvent
    future: asyncio.Future[StoredEvent]


class Buffer:
    """The durable event store. Create with :meth:`open`, then :meth:`close` when done."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        path: Path,
        *,
        max_bytes: int,
        batch_max: int,
        keep_unconfirmed: frozenset[str] = frozenset(),
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep_unconfirmed = keep_unconfirmed
        """Devices at the ``accepted`` level: their sent, unconfirmed events outlive retention."""
        self._conn = conn
        self._batch_max = batch_max
        self._lock = asyncio.Lock()
        self._queue: asyncio.Queue[_Append] = asyncio.Queue()
        self._last_seq: dict[str, int] = {}
        self._bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._reader: aiosqlite.Connection | None = None
        self._sync_mode = "FULL"
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
        conn = await open_database(path, progress)
        buf = cls(
            conn, path, max_bytes=max_bytes, batch_max=batch_max, keep_unconfirmed=keep_unconfirmed
        )
        await buf._load()
        buf._writer = asyncio.create_task(buf._write_loop(), name="buffer-writer")
        return buf

    async def _load(self) -> None:
        async with self._conn.execute("SELECT device, last_seq FROM devices") as cur:
            self._last_seq = {str(d): int(s) async for d, s in cur}
        async with self._conn.execute("SELECT coalesce(sum(length(payload)), 0) FROM events") as c:
            row = await c.fetchone()
        self._bytes = int(row[0]) if row else 0
        cur = await self._conn.execute(
            "UPDATE events SET state = ? WHERE state = ?", (STATE_PENDING, STATE_IN_FLIGHT)
        )
        if cur.rowcount:
            log.info("buffer_in_flight_reset", events=cur.rowcount)

    @contextlib.asynccontextmanager
    async def _locked(self, *, durable: bool) -> AsyncIterator[None]:
        """Hold the connection for one transaction, fsyncing its commit only when it matters.

        Appends commit with ``synchronous=FULL``: nothing is reported stored before it is on
        disk. Claims, acks and releases commit with ``NORMAL`` (no fsync of their own): losing
        one in a power cut only means an event is sent again with the same id, and WAL keeps
        the file consistent either way; the next durable commit's fsync covers them too.
        """
        async with self._lock:
            mode = "FULL" if durable else "NORMAL"
            if self._sync_mode != mode:
                await self._conn.execute(f"PRAGMA synchronous={mode}")
                self._sync_mode = mode
            yield

    @contextlib.asynccontextmanager
    async def _transaction(self, *, durable: bool) -> AsyncIterator[None]:
        """One write transaction on the held connection, rolled back if anything fails."""
        async with self._locked(durable=durable), transaction(self._conn):
            yield

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` with the raw connection on aiosqlite's thread, in one round trip.

        Every aiosqlite call is a round trip to its thread (~50 µs of event-loop time); the hot
        paths (commit, claim, ack) are several statements each, so each runs as one function
        there. aiosqlite has no public API for this: ``_execute`` and ``_conn`` are what its
        own methods use, our version range pins them, and every buffer test goes through here.
        """
        result: _T = await self._conn._execute(fn, self._conn._conn)  # type: ignore[no-untyped-call]  # noqa: SLF001
        return result

    async def _write(self, fn: Callable[[sqlite3.Connection], _T], *, durable: bool) -> _T:
        """:meth:`_transaction` in one round trip: sync mode, BEGIN IMMEDIATE, ``fn``, COMMIT."""
        mode = "FULL" if durable else "NORMAL"
        switch = mode != self._sync_mode

        def transaction(conn: sqlite3.Connection) -> _T:
            if switch:
                conn.execute(f"PRAGMA synchronous={mode}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            return result

        async with self._lock:
            self._sync_mode = ""  # unknown until the pragma is known to have run
            result = await self._run(transaction)
            self._sync_mode = mode
            return result

    async def _advance_last_sent(self, sent: Iterable[tuple[str, int]]) -> None:
        """Raise each device's ``last_sent_seq`` to the highest seq in ``sent`` (never lower)."""
        await self._conn.executemany(_ADVANCE_LAST_SENT, _last_sent(sent))

    @property
    def healthy(self) -> bool:
        """False once the writer task died: the watchdog must then stop vouching for us."""
        return self._writer is not None and not self._writer.done()

    @property
    def stored_bytes(self) -> int:
        """Payload bytes held, the figure the size cap applies to."""
        return self._bytes

    async def append(self, event: NewEvent) -> StoredEvent:
        """Store one event; returns after its transaction committed. Raises BufferFullError."""
        if not self.healthy:
            raise RuntimeError("buffer writer is not running")
        future: asyncio.Future[StoredEvent] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Append(event, future))
        return await future

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)

    async def _commit(self, batch: list[_Append]) -> None:
        saved_seq, saved_bytes = dict(self._last_seq), self._bytes
        results: list[StoredEvent | BaseException]
        now = time.time()
        try:
            rows, last_seq = self._rows(batch, now)
            size = sum(len(row[5]) for row in rows)
            if self._bytes + size <= self.max_bytes:
                await self._write(_insert(rows, last_seq), durable=True)
                self._last_seq, self._bytes = last_seq, self._bytes + size
                results = [
                    StoredEvent(item.event.id, row[1], row[2], item.event.time, item.event.type)
                    for row, item in zip(rows, batch, strict=True)
                ]
            else:
                results = await self._commit_making_room(batch, now)
            self.commits += 1
        except Exception as exc:
            self._last_seq, self._bytes = saved_seq, saved_bytes
            error = _translate(exc)
            log.exception("buffer_commit_failed", events=len(batch), error=str(error))
            results = [error] * len(batch)
        stored = 0
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                self.transitions["refused"] += 1
                item.future.set_exception(result)
            else:
                stored += 1
                item.future.set_result(result)
        if stored:
            self.transitions["stored"] += stored
            self.committed.set()

    def _rows(self, batch: list[_Append], now: float) -> tuple[list[_Row], dict[str, int]]:
        """The batch's rows with the next seqs, as if all fit under the cap (the usual case)."""
        last_seq = dict(self._last_seq)
        rows: list[_Row] = []
        for item in batch:
            ev = item.event
            seq = last_seq.get(ev.device, 0) + 1
            last_seq[ev.device] = seq
            rows.append((id_key(ev.id), ev.device, seq, int(ev.droppable), now, ev.render(seq)))
        return rows, last_seq

    async def _commit_making_room(
        self, batch: list[_Append], now: float
    ) -> list[StoredEvent | BaseException]:
        """The batch does not fit under the cap: evict or refuse event by event.

        Rare, so it takes the slow way, one statement per round trip; seqs are assigned (and
        payloads rendered) again because a refused event takes no number.
        """
        results: list[StoredEvent | BaseException] = []
        rows: list[_Row] = []
        async with self._transaction(durable=True):
            for item in batch:
                ev = item.event
                seq = self._last_seq.get(ev.device, 0) + 1
                payload = ev.render(seq)
                if not await self._make_room(len(payload), droppable=ev.droppable):
                    results.append(BufferFullError(f"buffer full ({self.max_bytes} bytes)"))
                    continue
                self._last_seq[ev.device] = seq
                self._bytes += len(payload)
                rows.append((id_key(ev.id), ev.device, seq, int(ev.droppable), now, payload))
                results.append(StoredEvent(ev.id, ev.device, seq, ev.time, ev.type))
            await self._conn.executemany(_INSERT_EVENT, rows)
            await self._conn.executemany(_UPSERT_DEVICE, _device_seqs(rows, self._last_seq))
        return results

    async def _make_room(self, size: int, *, droppable: bool) -> bool:
        """Enforce the cap (DESIGN section 4) inside the current transaction.

        First the oldest already-sent events that need nothing more go (their replay window
        shrinks), then the oldest sent events still awaiting a central confirm (they were
        delivered, so only their confirmability and replay are lost: counted and logged), then
        the oldest pending telemetry (counted as dropped). Scans and RFID events are never
        dropped: when only they remain, the new event is refused.
        """
        over = self._bytes + size - self.max_bytes
        awaiting = self._awaiting_confirm_sql()
        for condition, counter in (
            (f"state >= {STATE_SENT} AND NOT ({awaiting})", "evicted_sent"),
            (f"state >= {STATE_SENT}", "evicted_unconfirmed"),
            (f"state = {STATE_PENDING} AND droppable = 1", "dropped"),
        ):
            if over <= 0:
                break
            async with self._conn.execute(
                f"SELECT rowid, length(payload) FROM events WHERE {condition} ORDER BY rowid"  # noqa: S608 - constant conditions
            ) as cur:
                victims: list[int] = []
                async for rowid, length in cur:
                    victims.append(int(rowid))
                    over -= int(length)
                    self._bytes -= int(length)
                    if over <= 0:
                        break
            if victims:
                await self._delete(victims)
                self.transitions[counter] += len(victims)
                if counter == "dropped":
                    log.warning("buffer_full_dropped_telemetry", events=len(victims))
                elif counter == "evicted_unconfirmed":
                    log.warning("buffer_full_evicted_unconfirmed", events=len(victims))
        if over <= 0:
            return True
        if not droppable:
            log.error("buffer_full_refusing_event", max_bytes=self.max_bytes, held=self._bytes)
        return False

    def _awaiting_confirm_sql(self) -> str:
        """SQL condition for a sent row that retention must keep until its confirm arrives."""
        if not self.keep_unconfirmed:
            return "0"
        names = ",".join("'" + d.replace("'", "''") + "'" for d in sorted(self.keep_unconfirmed))
        return f"state = {STATE_SENT} AND droppable = 0 AND device IN ({names})"

    async def _delete(self, rowids: Sequence[int]) -> None:
        for chunk in _chunks(rowids):
            marks = ",".join("?" * len(chunk))
            await self._conn.execute(f"DELETE FROM events WHERE rowid IN ({marks})", chunk)  # noqa: S608

    async def claim(self, limit: int, live_after: int | None = None) -> list[OutgoingEvent]:
        """Mark up to ``limit`` of the oldest pending events in flight and return them.

        With ``live_after`` (the last rowid of the backlog when a drain began), events committed
        after it come first, so live events are not held behind a long backlog.
        """
        select = (
            "SELECT rowid, id, device, seq, payload, created FROM events"
            " WHERE state < 2 AND state = 0 {extra} ORDER BY rowid LIMIT ?"
        )

        def run(conn: sqlite3.Connection) -> list[OutgoingEvent]:
            if live_after is None:
                rows = _fetch(conn, select.format(extra=""), (limit,), backlog=False)
            else:
                rows = _fetch(
                    conn, select.format(extra="AND rowid > ?"), (live_after, limit), backlog=False
                )
                rows += _fetch(
                    conn,
                    select.format(extra="AND rowid <= ?"),
                    (live_after, limit - len(rows)),
                    backlog=True,
                )
            for chunk in _chunks([e.rowid for e in rows]):
                conn.execute(
                    f"UPDATE events SET state = {STATE_IN_FLIGHT}"  # noqa: S608 - constant
                    f" WHERE rowid IN ({','.join('?' * len(chunk))})",
                    chunk,
                )
            return rows

        claimed = await self._write(run, durable=False)
        self.transitions["claimed"] += len(claimed)
        return claimed

    async def mark_sent(self, events: Sequence[OutgoingEvent]) -> None:
        """Record PUBACKs: these events reached the broker."""
        if not events:
            return
        sent_at = time.time()
        rowids = [e.rowid for e in events]
        last_sent = _last_sent((e.device, e.seq) for e in events)

        def run(conn: sqlite3.Connection) -> None:
            for chunk in _chunks(rowids):
                # max(): a confirm may have overtaken the PUBACK; never downgrade it to sent.
                conn.execute(
                    f"UPDATE events SET state = max(state, {STATE_SENT}),"  # noqa: S608 - constant
                    f" sent = coalesce(sent, ?) WHERE rowid IN ({','.join('?' * len(chunk))})",
                    (sent_at, *chunk),
                )
            conn.executemany(_ADVANCE_LAST_SENT, last_sent)

        await self._write(run, durable=False)
        self.transitions["sent"] += len(events)

    async def release(self, events: Sequence[OutgoingEvent]) -> None:
        """Put claimed events back to pending (connection lost before their PUBACK)."""
        if not events:
            return
        async with self._locked(durable=False):
            marks = ",".join("?" * len(events))
            await self._conn.execute(
                f"UPDATE events SET state = 0 WHERE state = 1 AND rowid IN ({marks})",  # noqa: S608
                tuple(e.rowid for e in events),
            )
        self.transitions["released"] += len(events)

    async def release_in_flight(self) -> int:
        """Put every in-flight row back to pending: the publisher's session is over.

        Everything, not just what the publisher still tracks: a session torn down between a
        claim's commit and its return leaves rows in flight that nobody else knows about.
        """
        async with self._locked(durable=False):
            cur = await self._conn.execute(
                "UPDATE events SET state = ? WHERE state = ?", (STATE_PENDING, STATE_IN_FLIGHT)
            )
            released = cur.rowcount
        self.transitions["released"] += released
        return released

    async def last_rowid(self) -> int:
        """The newest rowid, used as the boundary between backlog and live events."""
        async with (
            self._lock,
            self._conn.execute("SELECT coalesce(max(rowid), 0) FROM events") as c,
        ):
            row = await c.fetchone()
        return int(row[0]) if row else 0

    async def unsent_count(
        self, up_to_rowid: int | None = None, *, at_most: int | None = None
    ) -> int:
        """Events not yet acknowledged by the broker (optionally only up to a rowid).

        ``at_most`` stops counting early: "is anything left?" must not walk a million rows.
        """
        sql = "SELECT 1 FROM events WHERE state < 2"
        params: tuple[int, ...] = ()
        if up_to_rowid is not None:
            sql += " AND rowid <= ?"
            params = (up_to_rowid,)
        if at_most is not None:
            sql += " LIMIT ?"
            params = (*params, at_most)
        sql = f"SELECT count(*) FROM ({sql})"  # noqa: S608 - constant fragments
        async with self._lock, self._conn.execute(sql, params) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def prune(self, retention: float, now: float | None = None) -> int:
        """Delete events sent more than ``retention`` seconds ago; returns how many went.

        Events of ``keep_unconfirmed`` devices that central has not confirmed or rejected yet
        stay, however old, until a confirm arrives or the size cap evicts them.
        """
        cutoff = (time.time() if now is None else now) - retention
        async with self._locked(durable=False):
            cur = await self._conn.execute(
                "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events"  # noqa: S608
                f" WHERE state >= 2 AND sent < ? AND NOT ({self._awaiting_confirm_sql()})"
                " ORDER BY rowid LIMIT 10000) RETURNING length(payload)",
                (cutoff,),
            )
            freed = [int(r[0]) for r in await cur.fetchall()]
        self._bytes -= sum(freed)
        self.transitions["pruned"] += len(freed)
        return len(freed)

    async def settle(self, verdicts: Sequence[tuple[str, bool]]) -> SettleResult:
        """Apply central's verdicts (id, accepted) durably, in one transaction.

        Only the first verdict for an event counts: a repeat (or a contradicting one) is a
        duplicate. An event still pending or in flight may be confirmed too (the confirm
        overtook our PUBACK, or the PUBACK was lost): central has it, so it counts as sent.
        """
        result = SettleResult()
        if not verdicts:
            return result
        first: dict[str, bool] = {}
        for event_id, accepted in verdicts:
            if event_id in first:
                result.duplicate += 1
            else:
                first[event_id] = accepted
        now = time.time()
        async with self._transaction(durable=True):
            for event_id, accepted in first.items():
                state = STATE_CONFIRMED if accepted else STATE_REJECTED
                async with self._conn.execute(
                    "UPDATE events SET state = ?, sent = coalesce(sent, ?)"
                    " WHERE id = ? AND state < ? RETURNING device, seq",
                    (state, now, id_key(event_id), STATE_CONFIRMED),
                ) as cur:
                    row = await cur.fetchone()
                if row is not None:
                    result.applied.append(Settled(event_id, str(row[0]), int(row[1]), state))
                    continue
                async with self._conn.execute(
                    "SELECT 1 FROM events WHERE id = ?", (id_key(event_id),)
                ) as cur:
                    known = await cur.fetchone()
                if known is None:
                    result.unknown += 1
                else:
                    result.duplicate += 1
            await self._advance_last_sent((s.device, s.seq) for s in result.applied)
        for s in result.applied:
            self.transitions["confirmed" if s.state == STATE_CONFIRMED else "rejected"] += 1
        return result

    async def check_replay(self, device: str, from_seq: int, to_seq: int | None) -> ReplayRange:
        """Validate a replay request against what is stored; see :func:`check_replay_range`."""
        async with self._lock:
            return await check_replay_range(self._conn, device, from_seq, to_seq)

    async def replay_chunk(
        self, device: str, from_seq: int, to_seq: int, limit: int
    ) -> list[OutgoingEvent]:
        """Delivered events of ``device`` with ``from_seq <= seq <= to_seq``, in seq order."""
        async with self._lock:
            return await replay_rows(self._conn, device, from_seq, to_seq, limit)

    async def set_device_status(self, device: str, status: str, detail: str, since: str) -> None:
        """Persist a device's state so ``edge-gateway status`` sees it from another process."""
        async with self._locked(durable=False):
            await self._conn.execute(
                "INSERT INTO devices (device, status, detail, since) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (device) DO UPDATE SET status = excluded.status,"
                " detail = excluded.detail, since = excluded.since",
                (device, status, detail, since),
            )

    async def stats(self) -> BufferStats:
        """Depth by state, per-device sequence numbers, oldest unsent age.

        On a read-only connection of its own, without the buffer lock: at a million rows these
        queries take over a second, and commits (and the worker's feedback) must not wait on
        them. The payload total comes from memory rather than a scan.
        """
        if self._reader is None:
            self._reader = await open_reader(self.path)
        return await collect_stats(
            self._reader, payload_bytes=self._bytes, awaiting_verdict=self.keep_unconfirmed
        )

    async def close(self) -> None:
        """Stop the writer (failing queued appends) and close the database cleanly."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(RuntimeError("buffer closed"))
        if self._reader is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await self._reader.close()
            self._reader = None
        async with self._lock:
            with contextlib.suppress(sqlite3.Error):
                await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await self._conn.close()


async def check_replay_range(
    conn: aiosqlite.Connection, device: str, from_seq: int, to_seq: int | None
) -> ReplayRange:
    """Is every seq of the range still here? ``to_seq`` None means up to the last stored one.

    Shared with ``edge-gateway replay``, which reads the file of a daemon that may be running.
    """
    async with conn.execute("SELECT last_seq FROM devices WHERE device = ?", (device,)) as cur:
        row = await cur.fetchone()
    if row is None or int(row[0]) == 0:
        return ReplayRange(device, from_seq, to_seq or 0, error=f"unknown device {device!r}")
    last = int(row[0])
    end = last if to_seq is None else to_seq
    found = ReplayRange(device, from_seq, end)
    if from_seq < 1 or end < from_seq:
        found.error = f"bad range {from_seq}..{end}"
    elif end > last:
        found.error = f"to_seq {end} is beyond the last stored seq {last}"
    if found.error:
        return found
    async with conn.execute(
        "SELECT count(*), coalesce(sum(state < 2), 0), min(seq) FROM events"
        " WHERE device = ? AND seq BETWEEN ? AND ?",
        (device, from_seq, end),
    ) as cur:
        row = await cur.fetchone()
    held, unsent, oldest = (int(row[0]), int(row[1]), row[2]) if row else (0, 0, None)
    if held < end - from_seq + 1:
        where = f"oldest retained in range is {oldest}" if oldest is not None else "none retained"
        found.error = f"range {from_seq}..{end} is no longer fully retained ({where})"
    found.unsent = unsent
    return found


async def replay_rows(
    conn: aiosqlite.Connection, device: str, from_seq: int, to_seq: int, limit: int
) -> list[OutgoingEvent]:
    """Rows already delivered once (sent, confirmed or rejected) in a seq range, seq order."""
    async with conn.execute(
        "SELECT rowid, id, device, seq, payload FROM events WHERE device = ?"
        " AND seq BETWEEN ? AND ? AND state >= ? ORDER BY seq LIMIT ?",
        (device, from_seq, to_seq, STATE_SENT, limit),
    ) as cur:
        return [
            OutgoingEvent(int(r), id_text(i), str(d), int(s), bytes(p), backlog=True)
            async for r, i, d, s, p in cur
        ]


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
        return BufferFullError(f"disk full: {exc}")
    return exc
