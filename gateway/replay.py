"""Replays (contract section 6, ``cmd/replay``): re-publish a stored seq range, rate-limited.

A replay sends the stored payload bytes again, so ids and seqs are the originals, flagged
``"historical": true, "replayed": true``. Only events already delivered once are replayed;
events still pending are on their way through the normal path and are counted as ``unsent`` in
the answer. A token bucket (``mqtt.replay_rate`` events/s) and a small window of outstanding
publishes keep a large replay from taking the publisher's in-flight slots from live events.

The daemon runs one :class:`ReplayWorker`, fed by ``cmd/replay``; ``edge-gateway replay`` uses
:func:`replay_messages` on the buffer file read-only with its own short MQTT connection.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import aiosqlite
import structlog

from buffer.connection import BufferConnection, read_only_uri
from buffer.dropped import runs
from buffer.replay_reads import ReplayRange, check_range, delivered_rows
from buffer.stats import reader
from buffer.store import Buffer
from gateway.commands import MAX_DETAIL, MAX_REPLAY_SPAN, ReplayCommand, echo, result_payload
from gateway.events import mark_replayed
from gateway.publisher import publish_oneshot
from gateway.settings import Settings
from gateway.topics import Topics

log = structlog.get_logger(__name__)

CHUNK = 200
WINDOW = 10
"""Replay publishes outstanding at once: a tenth of the default ``max_inflight``."""
MAX_QUEUED = 16
MAX_QUEUED_SPAN = MAX_REPLAY_SPAN
"""Events the admitted replays waiting to run may cover together (the one running is not
counted): at the default 500 events/s, about half an hour of work."""

SendFn = Callable[[str, bytes], Awaitable[int | None]]
"""Publishes one message; None when the broker took it, else the reason code it refused it with."""
AnswerFn = Callable[[bytes], None]


class TokenBucket:
    """``rate`` tokens per second, bursts up to ``burst``; ``take`` sleeps until they are there."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self._tokens = self.burst
        self._at = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def try_take(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens if there are enough, without waiting."""
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    async def take(self, n: float = 1.0) -> None:
        """Wait for ``n`` tokens (n may exceed the burst: the debt is slept off)."""
        self._refill()
        self._tokens -= n
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.rate)


class ReplayWorker:
    """Runs queued replay commands one at a time and answers each on ``cmd/result``."""

    def __init__(
        self,
        buffer: Buffer,
        topics: Topics,
        *,
        send: SendFn,
        connected: Callable[[], Awaitable[object]],
        answer: AnswerFn,
        rate: float,
    ) -> None:
        self._buffer = buffer
        self._topics = topics
        self._send = send
        self._connected = connected
        self._answer = answer
        self._bucket = TokenBucket(rate, burst=WINDOW)
        self._incoming: asyncio.Queue[ReplayCommand] = asyncio.Queue()
        self._admitted: asyncio.Queue[tuple[ReplayCommand, int | None]] = asyncio.Queue()
        self._waiting = 0
        self._refusals = TokenBucket(50.0, burst=50.0)
        self._burst = BurstLog()
        self.queued_span = 0
        """Events the admitted, waiting commands cover together (at most MAX_QUEUED_SPAN)."""
        self.refused = 0
        self.replayed = 0
        self.active: ReplayCommand | None = None
        self.on_refused: Callable[[str | int], None] = _nothing
        """Told the request_id of a command refused at admission (busy, too long): whoever
        remembers request_ids against repeats must forget it, so a retry may run."""

    def reconfigure(self, *, rate: float) -> None:
        """A reload's ``mqtt.replay_rate``: applies from the next window, even mid-replay."""
        self._bucket.rate = rate

    def submit(self, command: ReplayCommand) -> str | None:
        """Take a command, or say why not (the caller answers with that).

        At most ``MAX_QUEUED`` commands wait; each is then admitted in order, once its end is
        known, only if the events all admitted commands cover stay within ``MAX_QUEUED_SPAN``.
        """
        if self._waiting >= MAX_QUEUED:
            return f"busy: {MAX_QUEUED} replays already queued, retry later"
        self._waiting += 1
        self._incoming.put_nowait(command)
        return None

    async def run(self) -> None:
        """Admit and serve commands until cancelled; a failing command is answered, never fatal."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._admit_loop())
            group.create_task(self._serve_loop())

    async def _admit_loop(self) -> None:
        """Resolve each command's end, then refuse it or queue it, in arrival order.

        An open end ("up to the last stored one") is resolved here, not when the command is
        served, so the span limit and the bound on queued work apply to what it really covers.
        """
        while True:
            command = await self._incoming.get()
            try:
                to_seq = command.to_seq
                if to_seq is None:
                    to_seq = await self._last_seq(command.device)
                problem = self._admission_problem(command, to_seq)
            except Exception as exc:
                log.exception("replay_failed", request_id=command.request_id)
                problem = echo(str(exc) or type(exc).__name__, MAX_DETAIL)
            if problem is not None:
                self._waiting -= 1
                self._refuse(command, problem)
                continue
            self.queued_span += _span(command.from_seq, to_seq)
            self._admitted.put_nowait((command, to_seq))

    def _admission_problem(self, command: ReplayCommand, to_seq: int | None) -> str | None:
        """Why ``command`` (ending at ``to_seq``) may not be queued, or None."""
        span = _span(command.from_seq, to_seq)
        if to_seq is not None and span > MAX_REPLAY_SPAN:
            return (
                f"range {command.from_seq}..{to_seq} is longer than {MAX_REPLAY_SPAN} events;"
                " split the request with to_seq"
            )
        if self.queued_span + span > MAX_QUEUED_SPAN:
            return (
                f"busy: replays already queued cover {self.queued_span} events, at most "
                f"{MAX_QUEUED_SPAN} may wait; retry later"
            )
        return None

    def _refuse(self, command: ReplayCommand, detail: str) -> None:
        self.on_refused(command.request_id)
        self.refused += 1
        self._burst.warning("replay_refused", request_id=command.request_id, detail=detail)
        if self._refusals.try_take():
            self._answer(result_payload(command.request_id, ok=False, detail=detail))

    async def _serve_loop(self) -> None:
        while True:
            command, to_seq = await self._admitted.get()
            self.queued_span -= _span(command.from_seq, to_seq)
            self._waiting -= 1
            self.active = command
            try:
                await self._serve(command, to_seq)
            except Exception as exc:
                log.exception("replay_failed", request_id=command.request_id)
                detail = echo(str(exc) or type(exc).__name__, MAX_DETAIL)
                self._answer(result_payload(command.request_id, ok=False, detail=detail))
            finally:
                self.active = None

    async def _serve(self, command: ReplayCommand, to_seq: int | None) -> None:
        span = await self._buffer.check_replay(command.device, command.from_seq, to_seq)
        if span.error:
            log.warning("replay_refused", request_id=command.request_id, detail=span.error)
            self._answer(result_payload(command.request_id, ok=False, detail=span.error))
            return
        log.info("replay_started", device=span.device, from_seq=span.from_seq, to_seq=span.to_seq)
        count, gaps, refused = await self._publish_range(span)
        self.replayed += count
        lost, lost_ranges = await self._buffer.replay_lost(span.device, gaps) if gaps else (0, [])
        # Read again now: telemetry pending at the check may have been dropped meanwhile.
        unsent, dropped = await self._buffer.replay_figures(span.device, span.from_seq, span.to_seq)
        fields: dict[str, object] = {
            "count": count,
            "unsent": unsent,
            "from_seq": span.from_seq,
            "to_seq": span.to_seq,
        }
        if dropped:
            fields["dropped"] = [list(r) for r in dropped]
        if lost:
            # Deleted by retention (or the size cap) after the range check, before the replay
            # read them: the answer must not say ok with a silently smaller count (issue 18).
            log.warning("replay_incomplete", request_id=command.request_id, missing=lost)
            fields["missing"] = lost
            fields["missing_ranges"] = [list(r) for r in lost_ranges]
            fields["detail"] = (
                f"{lost} events of the range were deleted (retention) while the replay ran;"
                f" {count} replayed"
            )
        if refused:
            # The broker would not take them (over its size limit once marked replayed, or not
            # authorized): not ok, and said which, so central does not wait for them.
            log.warning(
                "replay_refused_by_broker", request_id=command.request_id, events=len(refused)
            )
            fields["refused"] = len(refused)
            fields["refused_ranges"] = [list(r) for r in runs(refused)[:MAX_REPORTED_RANGES]]
            fields["detail"] = f"the broker refused {len(refused)} of the replayed events"
        log.info("replay_finished", request_id=command.request_id, count=count, missing=lost)
        self._answer(result_payload(command.request_id, ok=not lost and not refused, **fields))

    async def _last_seq(self, device: str) -> int | None:
        """The device's last stored seq, read without the buffer's lock (WAL lets us)."""
        async with reader(self._buffer.path) as conn:
            return await last_stored_seq(conn, device)

    async def _publish_range(
        self, span: ReplayRange
    ) -> tuple[int, list[tuple[int, int]], list[int]]:
        """Publish the range's delivered rows.

        Returns how many the broker took, the seqs it skipped, and the seqs the broker refused
        (too large, not authorized: sending them again would not change that).
        """
        topic = self._topics.events(span.device)
        cursor, count = span.from_seq, 0
        gaps: list[tuple[int, int]] = []
        refused: list[int] = []
        expected = span.from_seq
        while cursor <= span.to_seq:
            rows = await self._buffer.replay_chunk(span.device, cursor, span.to_seq, CHUNK)
            if not rows:
                break
            for row in rows:
                if row.seq > expected:
                    _add_gap(gaps, expected, row.seq - 1)
                expected = row.seq + 1
            for start in range(0, len(rows), WINDOW):
                window = rows[start : start + WINDOW]
                await self._bucket.take(len(window))
                while True:
                    await self._connected()
                    try:
                        reasons = await asyncio.gather(
                            *(self._send(topic, mark_replayed(r.payload)) for r in window)
                        )
                        break
                    except ConnectionError:
                        await asyncio.sleep(0.1)  # the publisher reconnects; send again
                refused += [r.seq for r, reason in zip(window, reasons, strict=True) if reason]
                count += sum(1 for reason in reasons if reason is None)
                cursor = window[-1].seq + 1
        if expected <= span.to_seq:
            _add_gap(gaps, expected, span.to_seq)
        return count, gaps, refused


def _nothing(_request_id: str | int) -> None:
    """Nobody to tell."""


MAX_REPORTED_RANGES = 20
"""Refused ranges named in a replay's answer (the count is complete)."""

MAX_GAPS = 10_000
"""Skipped seq ranges a replay keeps apart; beyond, a new one is merged into the last (a row
replayed in between and deleted afterwards then counts as missing: an overstatement, never an
understatement)."""


def _add_gap(gaps: list[tuple[int, int]], first: int, last: int) -> None:
    if len(gaps) >= MAX_GAPS:
        gaps[-1] = (gaps[-1][0], last)
    else:
        gaps.append((first, last))


def _span(from_seq: int, to_seq: int | None) -> int:
    """Events in ``from_seq..to_seq``; 0 for an unknown device (the range check refuses it)."""
    return 0 if to_seq is None else max(0, to_seq - from_seq + 1)


async def last_stored_seq(conn: aiosqlite.Connection, device: str) -> int | None:
    """``device``'s last stored seq, None if it has none (the range check then says so)."""
    async with conn.execute("SELECT last_seq FROM devices WHERE device = ?", (device,)) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row is not None and int(row[0]) > 0 else None


async def replay_messages(
    path: str, *, device: str, from_seq: int, to_seq: int | None, topics: Topics, rate: float
) -> tuple[ReplayRange, _RowStream]:
    """For ``edge-gateway replay``: check the range in the file, then stream it, rate-limited."""
    raw = await aiosqlite.connect(read_only_uri(path), uri=True)
    conn = BufferConnection(raw, read_only=True)
    try:
        await raw.execute("PRAGMA busy_timeout=5000")
        span = await conn.read(
            partial(check_range, device=device, from_seq=from_seq, to_seq=to_seq)
        )
    except BaseException:
        await conn.close()
        raise

    async def stream() -> AsyncGenerator[tuple[str, bytes], None]:
        bucket = TokenBucket(rate, burst=WINDOW)
        topic = topics.events(device)
        cursor = span.from_seq
        while cursor <= span.to_seq:
            rows = await conn.read(
                partial(
                    delivered_rows,
                    device=device,
                    from_seq=cursor,
                    to_seq=span.to_seq,
                    limit=CHUNK,
                )
            )
            if not rows:
                break
            for row in rows:
                await bucket.take()
                yield topic, mark_replayed(row.payload)
            cursor = rows[-1].seq + 1

    if span.error:
        await conn.close()
        return span, _RowStream(_empty(), None)
    return span, _RowStream(stream(), conn)


class _RowStream:
    """The replay's messages; :meth:`aclose` closes the buffer file, iterated or not.

    A generator that never started never runs its ``finally``: with the broker unreachable the
    file stayed open, and aiosqlite's thread kept ``edge-gateway replay`` from exiting (issue 14).
    """

    def __init__(
        self, rows: AsyncGenerator[tuple[str, bytes], None], conn: BufferConnection | None
    ) -> None:
        self._rows = rows
        self._conn = conn

    def __aiter__(self) -> AsyncIterator[tuple[str, bytes]]:
        return self._rows

    async def aclose(self) -> None:
        """Stop the stream and close the file (once)."""
        await self._rows.aclose()
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()


async def _empty() -> AsyncGenerator[tuple[str, bytes], None]:
    return
    yield  # pragma: no cover - makes this an async generator


class BurstLog:
    """One warning per burst of bad input: the first, then a summary at most every ``period``."""

    def __init__(self, period: float = 10.0) -> None:
        self._period = period
        self._last: dict[str, float] = {}
        self._suppressed: collections.Counter[str] = collections.Counter()

    def warning(self, event: str, **fields: object) -> None:
        """Log ``event`` unless one was logged within the period; count what is held back."""
        now = time.monotonic()
        if now - self._last.get(event, -self._period) < self._period:
            self._suppressed[event] += 1
            return
        self._last[event] = now
        suppressed = self._suppressed.pop(event, 0)
        log.warning(event, suppressed_since_last=suppressed, **fields)


@dataclass(slots=True)
class ReplayOutcome:
    """What ``edge-gateway replay`` did."""

    from_seq: int
    to_seq: int
    count: int = 0
    """Events the broker took."""
    attempted: int = 0
    """Events read for the replay; more than ``count`` when the broker refused some."""
    unsent: int = 0
    error: str | None = None


async def replay_from_file(
    settings: Settings, *, device: str, from_seq: int, to_seq: int | None
) -> ReplayOutcome:
    """Check the range in the buffer file, then publish it with a client id of its own."""
    path = settings.database_path
    if not path.exists():
        return ReplayOutcome(from_seq, to_seq or 0, error=f"no buffer at {path}")
    span, messages = await replay_messages(
        str(path),
        device=device,
        from_seq=from_seq,
        to_seq=to_seq,
        topics=Topics(settings.topic_root),
        rate=settings.mqtt.replay_rate,
    )
    outcome = ReplayOutcome(span.from_seq, span.to_seq, unsent=span.unsent, error=span.error)
    if span.error:
        return outcome
    base = settings.mqtt.client_id or f"edge-gateway-{settings.gateway.site}-{settings.gateway.id}"

    async def counted() -> AsyncIterator[tuple[str, bytes]]:
        async for message in messages:
            outcome.attempted += 1
            yield message

    try:
        outcome.count = await publish_oneshot(
            settings.mqtt,
            client_id=f"{base}-replay-{os.getpid()}",
            messages=counted(),
            window=WINDOW,
        )
    finally:
        await messages.aclose()
    return outcome
