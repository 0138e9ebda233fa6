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
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from buffer.schema import STATE_IN_FLIGHT, STATE_PENDING, STATE_SENT, open_database
from buffer.stats import BufferStats, collect_stats
from drivers.base import StoredEvent

log = structlog.get_logger(__name__)


class BufferFullError(Exception):
    """The event was refused: the buffer is at its size cap (or the disk is full)."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event on its way in. ``render`` builds the wire payload once ``seq`` is known."""

    id: str
    device: str
    time: str
    type: str
    droppable: bool
    render: Callable[[int], bytes]


@dataclass(frozen=True, slots=True)
class OutgoingEvent:
    """A claimed event on its way out. ``backlog`` marks rows older than the drain boundary."""

    rowid: int
    id: str
    device: str
    seq: int
    payload: bytes
    backlog: bool


@dataclass(slots=True)
class _Append:
    event: NewEvent
    future: asyncio.Future[StoredEvent]


class Buffer:
    """The durable event store. Create with :meth:`open`, then :meth:`close` when done."""

    def __init__(
        self, conn: aiosqlite.Connection, path: Path, *, max_bytes: int, batch_max: int
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._conn = conn
        self._batch_max = batch_max
        self._lock = asyncio.Lock()
        self._queue: asyncio.Queue[_Append] = asyncio.Queue()
        self._last_seq: dict[str, int] = {}
        self._bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._sync_mode = "FULL"
        self.committed = asyncio.Event()
        """Set after each commit that added events; the publisher waits on it when idle."""
        self.commits = 0
        """Transactions that stored events; fewer than events stored when group commit works."""
        self.transitions: collections.Counter[str] = collections.Counter()
        """Every state change, by name: stored, refused, dropped, claimed, sent, released."""

    @classmethod
    async def open(cls, path: Path, *, max_bytes: int, batch_max: int = 500) -> Buffer:
        """Open the database, reset in-flight rows to pending and start the writer."""
        conn = await open_database(path)
        buf = cls(conn, path, max_bytes=max_bytes, batch_max=batch_max)
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
        results: list[StoredEvent | BaseException] = []
        rows: list[tuple[Any, ...]] = []
        now = time.time()
        async with self._locked(durable=True):
            try:
                await self._conn.execute("BEGIN IMMEDIATE")
                for item in batch:
                    ev = item.event
                    seq = self._last_seq.get(ev.device, 0) + 1
                    payload = ev.render(seq)
                    if not await self._make_room(len(payload), droppable=ev.droppable):
                        results.append(BufferFullError(f"buffer full ({self.max_bytes} bytes)"))
                        continue
                    self._last_seq[ev.device] = seq
                    self._bytes += len(payload)
                    rows.append((ev.id, ev.device, seq, int(ev.droppable), now, payload))
                    results.append(StoredEvent(ev.id, ev.device, seq, ev.time, ev.type))
                await self._conn.executemany(
                    "INSERT INTO events (id, device, seq, droppable, created, payload)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                await self._conn.executemany(
                    "INSERT INTO devices (device, last_seq) VALUES (?, ?)"
                    " ON CONFLICT (device) DO UPDATE SET last_seq = excluded.last_seq",
                    [(d, self._last_seq[d]) for d in {r[1] for r in rows}],
                )
                await self._conn.execute("COMMIT")
                self.commits += 1
            except Exception as exc:
                with contextlib.suppress(sqlite3.Error):
                    await self._conn.execute("ROLLBACK")
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

    async def _make_room(self, size: int, *, droppable: bool) -> bool:
        """Enforce the cap (DESIGN section 4) inside the current transaction.

        First the oldest already-sent events go (their replay window shrinks), then the oldest
        pending telemetry (counted as dropped). Scans and RFID events are never dropped: when
        only they remain, the new event is refused.
        """
        over = self._bytes + size - self.max_bytes
        for condition, counter in (
            (f"state >= {STATE_SENT}", "evicted_sent"),
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
        if over <= 0:
            return True
        if not droppable:
            log.error("buffer_full_refusing_event", max_bytes=self.max_bytes, held=self._bytes)
        return False

    async def _delete(self, rowids: Sequence[int]) -> None:
        for start in range(0, len(rowids), 500):
            chunk = rowids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            await self._conn.execute(f"DELETE FROM events WHERE rowid IN ({marks})", chunk)  # noqa: S608

    async def claim(self, limit: int, live_after: int | None = None) -> list[OutgoingEvent]:
        """Mark up to ``limit`` of the oldest pending events in flight and return them.

        With ``live_after`` (the last rowid of the backlog when a drain began), events committed
        after it come first, so live events are not held behind a long backlog.
        """
        query = (
            "SELECT rowid, id, device, seq, payload FROM events"
            " WHERE state < 2 AND state = 0 {extra} ORDER BY rowid LIMIT ?"
        )
        async with self._locked(durable=False):
            if live_after is None:
                rows = await self._fetch(query.format(extra=""), (limit,), backlog=False)
            else:
                rows = await self._fetch(
                    query.format(extra="AND rowid > ?"), (live_after, limit), backlog=False
                )
                rows += await self._fetch(
                    query.format(extra="AND rowid <= ?"),
                    (live_after, limit - len(rows)),
                    backlog=True,
                )
            if rows:
                await self._set_state(rows, STATE_IN_FLIGHT)
        self.transitions["claimed"] += len(rows)
        return rows

    async def _fetch(
        self, sql: str, params: tuple[Any, ...], *, backlog: bool
    ) -> list[OutgoingEvent]:
        if params[-1] <= 0:
            return []
        async with self._conn.execute(sql, params) as cur:
            return [
                OutgoingEvent(int(r), str(i), str(d), int(s), bytes(p), backlog)
                async for r, i, d, s, p in cur
            ]

    async def _set_state(
        self, events: Sequence[OutgoingEvent], state: int, extra: str = "", *args: float
    ) -> None:
        marks = ",".join("?" * len(events))
        await self._conn.execute(
            f"UPDATE events SET state = ?{extra} WHERE rowid IN ({marks})",  # noqa: S608
            (state, *args, *(e.rowid for e in events)),
        )

    async def mark_sent(self, events: Sequence[OutgoingEvent]) -> None:
        """Record PUBACKs: these events reached the broker."""
        if not events:
            return
        last: dict[str, int] = {}
        for e in events:
            last[e.device] = max(last.get(e.device, 0), e.seq)
        async with self._locked(durable=False):
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                await self._set_state(events, STATE_SENT, ", sent = ?", time.time())
                await self._conn.executemany(
                    "UPDATE devices SET last_sent_seq = max(last_sent_seq, ?) WHERE device = ?",
                    [(seq, dev) for dev, seq in last.items()],
                )
                await self._conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await self._conn.execute("ROLLBACK")
                raise
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

    async def last_rowid(self) -> int:
        """The newest rowid, used as the boundary between backlog and live events."""
        async with (
            self._lock,
            self._conn.execute("SELECT coalesce(max(rowid), 0) FROM events") as c,
        ):
            row = await c.fetchone()
        return int(row[0]) if row else 0

    async def unsent_count(self, up_to_rowid: int | None = None) -> int:
        """Events not yet acknowledged by the broker (optionally only up to a rowid)."""
        sql = "SELECT count(*) FROM events WHERE state < 2"
        params: tuple[int, ...] = ()
        if up_to_rowid is not None:
            sql += " AND rowid <= ?"
            params = (up_to_rowid,)
        async with self._lock, self._conn.execute(sql, params) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def prune(self, retention: float, now: float | None = None) -> int:
        """Delete sent events older than ``retention`` seconds; returns how many went."""
        cutoff = (time.time() if now is None else now) - retention
        async with self._locked(durable=False):
            cur = await self._conn.execute(
                "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events"
                " WHERE state >= 2 AND sent < ? ORDER BY rowid LIMIT 10000)"
                " RETURNING length(payload)",
                (cutoff,),
            )
            freed = [int(r[0]) for r in await cur.fetchall()]
        self._bytes -= sum(freed)
        self.transitions["pruned"] += len(freed)
        return len(freed)

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
        """Depth by state, per-device sequence numbers, oldest unsent age."""
        async with self._lock:
            return await collect_stats(self._conn)

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
        async with self._lock:
            with contextlib.suppress(sqlite3.Error):
                await self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await self._conn.close()


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
        return BufferFullError(f"disk full: {exc}")
    return exc
