"""Replays (DESIGN section 6, ``cmd/replay``): re-publish a stored seq range, rate-limited.

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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiosqlite
import structlog

from buffer.store import Buffer, ReplayRange, check_replay_range, replay_rows
from gateway.commands import MAX_DETAIL, ReplayCommand, echo, result_payload
from gateway.events import mark_replayed
from gateway.publisher import publish_oneshot
from gateway.settings import Settings
from gateway.topics import Topics

log = structlog.get_logger(__name__)

CHUNK = 200
WINDOW = 10
"""Replay publishes outstanding at once: a tenth of the default ``max_inflight``."""
MAX_QUEUED = 16

SendFn = Callable[[str, bytes], Awaitable[None]]
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
        self._queue: asyncio.Queue[ReplayCommand] = asyncio.Queue(MAX_QUEUED)
        self.replayed = 0
        self.active: ReplayCommand | None = None

    def submit(self, command: ReplayCommand) -> bool:
        """Queue a command; False when too many are already waiting (the caller answers busy)."""
        try:
            self._queue.put_nowait(command)
        except asyncio.QueueFull:
            return False
        return True

    async def run(self) -> None:
        """Serve commands until cancelled; a failing command is answered, never fatal."""
        while True:
            command = await self._queue.get()
            self.active = command
            try:
                await self._serve(command)
            except Exception as exc:
                log.exception("replay_failed", request_id=command.request_id)
                detail = echo(str(exc) or type(exc).__name__, MAX_DETAIL)
                self._answer(result_payload(command.request_id, ok=False, detail=detail))
            finally:
                self.active = None

    async def _serve(self, command: ReplayCommand) -> None:
        span = await self._buffer.check_replay(command.device, command.from_seq, command.to_seq)
        if span.error:
            log.warning("replay_refused", request_id=command.request_id, detail=span.error)
            self._answer(result_payload(command.request_id, ok=False, detail=span.error))
            return
        log.info("replay_started", device=span.device, from_seq=span.from_seq, to_seq=span.to_seq)
        count = await self._publish_range(span)
        self.replayed += count
        log.info("replay_finished", request_id=command.request_id, count=count)
        self._answer(
            result_payload(
                command.request_id,
                ok=True,
                count=count,
                unsent=span.unsent,
                from_seq=span.from_seq,
                to_seq=span.to_seq,
            )
        )

    async def _publish_range(self, span: ReplayRange) -> int:
        topic = self._topics.events(span.device)
        cursor, count = span.from_seq, 0
        while cursor <= span.to_seq:
            rows = await self._buffer.replay_chunk(span.device, cursor, span.to_seq, CHUNK)
            if not rows:
                break
            for start in range(0, len(rows), WINDOW):
                window = rows[start : start + WINDOW]
                await self._bucket.take(len(window))
                while True:
                    await self._connected()
                    try:
                        await asyncio.gather(
                            *(self._send(topic, mark_replayed(r.payload)) for r in window)
                        )
                        break
                    except ConnectionError:
                        await asyncio.sleep(0.1)  # the publisher reconnects; send again
                count += len(window)
                cursor = window[-1].seq + 1
        return count


async def replay_messages(
    path: str, *, device: str, from_seq: int, to_seq: int | None, topics: Topics, rate: float
) -> tuple[ReplayRange, AsyncIterator[tuple[str, bytes]]]:
    """For ``edge-gateway replay``: check the range in the file, then stream it, rate-limited."""
    conn = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True)
    try:
        await conn.execute("PRAGMA busy_timeout=5000")
        span = await check_replay_range(conn, device, from_seq, to_seq)
    except BaseException:
        await conn.close()
        raise

    async def stream() -> AsyncIterator[tuple[str, bytes]]:
        bucket = TokenBucket(rate, burst=WINDOW)
        topic = topics.events(device)
        cursor = span.from_seq
        try:
            while cursor <= span.to_seq:
                rows = await replay_rows(conn, device, cursor, span.to_seq, CHUNK)
                if not rows:
                    break
                for row in rows:
                    await bucket.take()
                    yield topic, mark_replayed(row.payload)
                cursor = rows[-1].seq + 1
        finally:
            await conn.close()

    if span.error:
        await conn.close()
        return span, _empty()
    return span, stream()


async def _empty() -> AsyncIterator[tuple[str, bytes]]:
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
    outcome.count = await publish_oneshot(
        settings.mqtt, client_id=f"{base}-replay-{os.getpid()}", messages=messages, window=WINDOW
    )
    return outcome
