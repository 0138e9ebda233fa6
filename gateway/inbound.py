"""Messages from central: confirms and commands, dispatched by topic, never trusted.

The publisher hands every received message to :meth:`Inbound.handle` synchronously (parsing is
cheap and bounded), which validates it and queues the work. Confirms are applied in groups by
one task: all verdicts that arrived while the previous commit ran share the next transaction,
then each applied verdict settles its device's waiter. Bad input costs one counter bump, one log
line per burst, and, for a command whose ``request_id`` is readable, an error on ``cmd/result``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

import structlog

from buffer.schema import STATE_CONFIRMED
from buffer.store import Buffer
from gateway.commands import (
    InvalidMessageError,
    echo,
    parse_confirms,
    parse_replay,
    request_id_of,
    result_payload,
)
from gateway.confirmations import Confirmations
from gateway.replay import BurstLog, ReplayWorker, TokenBucket
from gateway.topics import Topics

log = structlog.get_logger(__name__)

MAX_PENDING_VERDICTS = 100_000
"""Verdicts waiting for their commit; beyond this a flood is shed (counted), never buffered."""

AnswerFn = Callable[[bytes], None]


class Inbound:
    """Validates and applies what central sends on ``{root}/confirm`` and ``{root}/cmd/*``."""

    def __init__(
        self,
        buffer: Buffer,
        confirmations: Confirmations,
        topics: Topics,
        replays: ReplayWorker,
        answer: AnswerFn,
    ) -> None:
        self._buffer = buffer
        self._confirmations = confirmations
        self._topics = topics
        self._replays = replays
        self._answer = answer
        self._verdicts: list[tuple[str, bool, str | None]] = []
        self._ready = asyncio.Event()
        self._answers = TokenBucket(50.0, burst=50.0)
        self._burst = BurstLog()
        self.counters: collections.Counter[str] = collections.Counter()
        """confirm_{messages,accepted,rejected,duplicate,unknown,invalid,shed}, cmd_*..."""

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The only topics the gateway listens on: its own root's confirm and cmd topics."""
        return (self._topics.confirm, self._topics.cmd_replay)

    def handle(self, topic: str, payload: bytes) -> None:
        """Dispatch one received message. Never raises."""
        try:
            if topic == self._topics.confirm:
                self._confirm(payload)
            elif topic == self._topics.cmd_replay:
                self._replay(payload)
            else:
                self.counters["foreign_topic"] += 1
                self._burst.warning("message_on_unexpected_topic", topic=echo(topic, 200))
        except Exception:
            self.counters["handler_error"] += 1
            log.exception("inbound_handler_failed", topic=echo(topic, 200))

    def _confirm(self, payload: bytes) -> None:
        self.counters["confirm_messages"] += 1
        try:
            confirms = parse_confirms(payload)
        except InvalidMessageError as exc:
            self.counters["confirm_invalid"] += 1
            self._burst.warning("confirm_invalid", detail=str(exc))
            return
        if len(self._verdicts) + len(confirms) > MAX_PENDING_VERDICTS:
            self.counters["confirm_shed"] += len(confirms)
            self._burst.warning("confirm_flood_shed", verdicts=len(confirms))
            return
        self._verdicts.extend((c.id, c.status == "accepted", c.reason) for c in confirms)
        self._ready.set()

    def _replay(self, payload: bytes) -> None:
        self.counters["cmd_messages"] += 1
        try:
            command = parse_replay(payload)
        except InvalidMessageError as exc:
            self.counters["cmd_invalid"] += 1
            self._burst.warning("cmd_invalid", detail=str(exc))
            self._refuse(request_id_of(payload), str(exc))
            return
        refusal = self._replays.submit(command)
        if refusal is not None:
            self.counters["cmd_busy"] += 1
            self._burst.warning("cmd_replay_busy", request_id=command.request_id)
            self._refuse(command.request_id, refusal)
            return
        self.counters["cmd_replay_queued"] += 1

    def _refuse(self, request_id: str | int | None, detail: str) -> None:
        if request_id is None:
            return
        if not self._answers.try_take():
            self.counters["answers_suppressed"] += 1
            return
        self._answer(result_payload(request_id, ok=False, detail=detail))

    async def run(self) -> None:
        """Apply queued verdicts, a group per commit, until cancelled."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._verdicts:
                batch, self._verdicts = self._verdicts[:5000], self._verdicts[5000:]
                await self._apply(batch)

    async def _apply(self, batch: list[tuple[str, bool, str | None]]) -> None:
        try:
            result = await self._buffer.settle([(i, ok) for i, ok, _ in batch])
        except Exception:
            self.counters["confirm_store_failed"] += len(batch)
            log.exception("confirm_store_failed", verdicts=len(batch))
            return
        reasons = {i: reason for i, _, reason in batch}
        for settled in result.applied:
            accepted = settled.state == STATE_CONFIRMED
            self.counters["confirm_accepted" if accepted else "confirm_rejected"] += 1
            self._confirmations.settled(
                settled.id, settled.device, accepted=accepted, reason=reasons.get(settled.id)
            )
        self.counters["confirm_duplicate"] += result.duplicate
        self.counters["confirm_unknown"] += result.unknown
        if result.unknown:
            self._burst.warning("confirm_unknown_ids", ids=result.unknown)
