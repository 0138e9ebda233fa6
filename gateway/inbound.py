"""Messages from central: confirms and commands, dispatched by topic, never trusted.

The link hands every received message to :meth:`Inbound.handle` (parsing is cheap and bounded),
which validates it and queues the work. What ``handle`` returns decides when the broker gets its
PUBACK (gateway/mqtt_link.py): None means at once (an invalid message, a replay command queued
or refused), a future means once that future is done. For a confirm it is done only when every
verdict in the message is committed by ``Buffer.settle``: a confirm acknowledged to the broker
is never lost, and one not yet committed is sent again by the broker in the next session.

Confirms are applied in groups by one task: all verdicts that arrived while the previous commit
ran share the next transaction, then each applied verdict settles its device's waiter. Pending
verdicts are bounded by bytes (:data:`MAX_PENDING_BYTES`): beyond it a message waits, not
acknowledged, until there is room, so the broker (Receive Maximum) stops sending: backpressure,
never shedding. A failed commit is retried with backoff, loudly, until it succeeds or the gateway
stops. Bad input costs one counter bump, one log line per burst, and, for a command whose
``request_id`` is readable, an error on ``cmd/result``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from buffer.schema import STATE_CONFIRMED
from buffer.store import Buffer
from drivers.backoff import Backoff
from gateway.command_limits import COMMAND_BURST, COMMAND_RATE, RequestWindow
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

MAX_PENDING_BYTES = 1024 * 1024
"""Payload bytes of confirm messages admitted and not yet committed. A message that would go
over waits, unacknowledged, until earlier ones are committed (one message is always admitted,
so a single large one cannot stall). Parsed verdicts kept 1.6 (UUID ids) to 3.4 (short ids)
times their payload in memory (tracemalloc, 64 KiB messages), so admitted confirms hold at most
~4 MiB. Messages waiting for room are parsed too, but the broker sends no more than our Receive
Maximum (32, gateway/mqtt_link.py) unacknowledged: at most 2 MiB of payload in all. This bound
still matters if a broker ignores Receive Maximum, or if it is raised."""

SETTLE_BATCH = 5000
"""Verdicts per ``Buffer.settle`` transaction."""

SETTLE_RETRY_MIN_S = 0.2
SETTLE_RETRY_MAX_S = 10.0
"""Backoff of a failed settle (a locked or full disk): retried until it commits, never dropped."""

AnswerFn = Callable[[bytes], None]
Verdict = tuple[str, bool, str | None]


@dataclass(eq=False, slots=True)
class _Message:
    """One confirm message: its verdicts, and the future its PUBACK waits for."""

    verdicts: list[Verdict]
    cost: int
    done: asyncio.Future[None]
    applied: int = 0
    taken: int = field(default=0)
    """Verdicts handed to the settle in progress (committed ones are ``applied``)."""


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
        self._admitted: collections.deque[_Message] = collections.deque()
        self._admitted_bytes = 0
        self._waiting: collections.deque[_Message] = collections.deque()
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._accepting = True
        self._answers = TokenBucket(50.0, burst=50.0)
        self._commands = TokenBucket(COMMAND_RATE, burst=COMMAND_BURST)
        self._requests = RequestWindow()
        if replays is not None:  # unit tests build one without a replay worker
            replays.on_refused = self._requests.discard  # a refused command may be retried
        self._burst = BurstLog()
        self.counters: collections.Counter[str] = collections.Counter()
        """confirm_{messages,accepted,rejected,duplicate,unknown,invalid,invalid_verdicts,
        backpressure,store_retry}, cmd_{messages,invalid,busy,retained,duplicate,rate_limited,
        replay_queued}, ..."""

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The only topics the gateway listens on: its own root's confirm and cmd topics."""
        return (self._topics.confirm, self._topics.cmd_replay)

    def handle(
        self, topic: str, payload: bytes, *, retained: bool = False
    ) -> asyncio.Future[None] | None:
        """Dispatch one received message; acknowledge it when the result is done (None: now).

        ``retained``: the broker kept the message and sends it because we subscribed; a command
        is then refused, not run (it would run again on every new subscription). Never raises.

        After :meth:`stop_accepting`, every message is held: never acknowledged
        by this session, so the broker sends it again in the next.
        """
        if not self._accepting:
            if not self.counters["held_at_stop"]:
                log.info("inbound_held_for_next_session", topic=topic[:200])
            self.counters["held_at_stop"] += 1
            return asyncio.get_running_loop().create_future()
        try:
            if topic == self._topics.confirm:
                return self._confirm(payload)
            if topic == self._topics.cmd_replay:
                self._replay(payload, retained=retained)
            else:
                self.counters["foreign_topic"] += 1
                self._burst.warning("message_on_unexpected_topic", topic=echo(topic, 200))
        except Exception:
            self.counters["handler_error"] += 1
            log.exception("inbound_handler_failed", topic=echo(topic, 200))
        return None

    def _confirm(self, payload: bytes) -> asyncio.Future[None] | None:
        self.counters["confirm_messages"] += 1
        try:
            parsed = parse_confirms(payload)
        except InvalidMessageError as exc:
            self.counters["confirm_invalid"] += 1
            self._burst.warning("confirm_invalid", detail=str(exc))
            return None
        if parsed.refused:
            self.counters["confirm_invalid_verdicts"] += parsed.refused
            self._burst.warning(
                "confirm_verdicts_refused", refused=parsed.refused, detail=parsed.problem
            )
        confirms = parsed.confirms
        message = _Message(
            [(c.id, c.status == "accepted", c.reason) for c in confirms],
            len(payload),
            asyncio.get_running_loop().create_future(),
        )
        self._idle.clear()
        if self._waiting or not self._has_room(message):
            self.counters["confirm_backpressure"] += 1
            self._burst.warning(
                "confirm_backpressure",
                pending_bytes=self._admitted_bytes,
                bound=MAX_PENDING_BYTES,
            )
            self._waiting.append(message)
        else:
            self._admit(message)
        return message.done

    def _has_room(self, message: _Message) -> bool:
        return not self._admitted or self._admitted_bytes + message.cost <= MAX_PENDING_BYTES

    def _admit(self, message: _Message) -> None:
        self._admitted.append(message)
        self._admitted_bytes += message.cost
        self._ready.set()

    def _replay(self, payload: bytes, *, retained: bool) -> None:
        self.counters["cmd_messages"] += 1
        if not self._commands.try_take():
            self.counters["cmd_rate_limited"] += 1
            self._burst.warning("cmd_rate_limited", rate=COMMAND_RATE, burst=COMMAND_BURST)
            if not self._answers.try_take():  # no answer can go out: do not even parse it
                self.counters["answers_suppressed"] += 1
                return
            request_id = request_id_of(payload)
            if request_id is not None:
                detail = f"rate limited: at most {COMMAND_RATE:g} commands/s; retry later"
                self._answer(result_payload(request_id, ok=False, detail=detail))
            return
        try:
            command = parse_replay(payload)
        except InvalidMessageError as exc:
            self.counters["cmd_invalid"] += 1
            self._burst.warning("cmd_invalid", detail=str(exc))
            self._refuse(request_id_of(payload), str(exc))
            return
        if command.request_id in self._requests:
            self.counters["cmd_duplicate"] += 1
            self._burst.warning("cmd_replay_duplicate", request_id=command.request_id)
            return  # the first one is answered; a redelivery (DUP) must not replay twice
        if retained:
            self.counters["cmd_retained"] += 1
            self._requests.add(command.request_id)
            self._burst.warning("cmd_replay_retained", request_id=command.request_id)
            self._refuse(
                command.request_id,
                "retained command not run (it would run again on every subscription):"
                " publish commands with retain=false and clear this retained message",
            )
            return
        refusal = self._replays.submit(command)
        if refusal is not None:
            self.counters["cmd_busy"] += 1
            self._burst.warning("cmd_replay_busy", request_id=command.request_id)
            self._refuse(command.request_id, refusal)
            return
        self._requests.add(command.request_id)
        self.counters["cmd_replay_queued"] += 1

    def _refuse(self, request_id: str | int | None, detail: str) -> None:
        if request_id is None:
            return
        if not self._answers.try_take():
            self.counters["answers_suppressed"] += 1
            return
        self._answer(result_payload(request_id, ok=False, detail=detail))

    def stop_accepting(self) -> None:
        """Graceful stop, first step: hold every message that arrives from now on."""
        self._accepting = False

    async def drain(self) -> None:
        """Stop accepting and wait until every confirm already received is committed.

        The caller bounds the wait; what is not committed then stays unacknowledged, and the
        broker sends it again next session.
        """
        self.stop_accepting()
        await self._idle.wait()

    @property
    def pending_bytes(self) -> int:
        """Payload bytes of admitted confirms not committed yet (metrics, tests)."""
        return self._admitted_bytes

    async def run(self) -> None:
        """Apply admitted verdicts, a group per commit, until cancelled."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._admitted:
                batch = self._take(SETTLE_BATCH)
                await self._apply(batch)
                self._finish_taken()
            if not self._waiting:
                self._idle.set()

    def _take(self, limit: int) -> list[Verdict]:
        """The next verdicts in arrival order, across messages, at most ``limit``."""
        batch: list[Verdict] = []
        for message in self._admitted:
            start = message.applied
            count = min(len(message.verdicts) - start, limit - len(batch))
            batch.extend(message.verdicts[start : start + count])
            message.taken = count
            if len(batch) >= limit:
                break
        return batch

    def _finish_taken(self) -> None:
        """The batch committed: acknowledge each message whose every verdict is in."""
        while self._admitted:
            message = self._admitted[0]
            message.applied += message.taken
            message.taken = 0
            if message.applied < len(message.verdicts):
                break
            self._admitted.popleft()
            self._admitted_bytes -= message.cost
            if not message.done.done():
                message.done.set_result(None)
        while self._waiting and self._has_room(self._waiting[0]):
            self._admit(self._waiting.popleft())

    async def _apply(self, batch: list[Verdict]) -> None:
        """Commit ``batch``, retrying with backoff until it commits; then give feedback."""
        backoff = Backoff(SETTLE_RETRY_MIN_S, SETTLE_RETRY_MAX_S)
        while True:
            try:
                result = await self._buffer.settle([(i, ok) for i, ok, _ in batch])
                break
            except Exception as exc:
                delay = backoff.next()
                self.counters["confirm_store_retry"] += 1
                log.error(
                    "confirm_store_failed",
                    verdicts=len(batch),
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in_s=round(delay, 2),
                    note="not acknowledged to the broker; retried until committed",
                )
                await asyncio.sleep(delay)
        reasons = {i: reason for i, _, reason in batch}
        for settled in result.applied:
            accepted = settled.state == STATE_CONFIRMED
            self.counters["confirm_accepted" if accepted else "confirm_rejected"] += 1
            try:
                self._confirmations.settled(
                    settled.id, settled.device, accepted=accepted, reason=reasons.get(settled.id)
                )
            except Exception:  # a feedback bug must not stop the applier (and every PUBACK)
                self.counters["feedback_error"] += 1
                log.exception("confirm_feedback_failed", device=settled.device)
        self.counters["confirm_duplicate"] += result.duplicate
        self.counters["confirm_unknown"] += result.unknown
        if result.unknown:
            self._burst.warning("confirm_unknown_ids", ids=result.unknown)
