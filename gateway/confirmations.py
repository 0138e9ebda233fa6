"""Single-touch confirmation (contract section 7): feedback once per event, when it is due.

What an event deserves at each stage (stored, delivered, accepted, rejected, refused, timeout,
stopped) is its device's :class:`~gateway.feedback_policy.FeedbackPolicy`'s answer; this module
only tracks the events still waiting for their level and fires the policy's answer once.

``stored`` devices get good feedback as soon as the buffer commit returns. ``delivered`` devices
wait for the broker's PUBACK (reported by the publisher when it arrives, before the buffer
records the event sent: the sent mark only decides whether a restart publishes it again); if it
does not come within ``confirm_timeout`` they get pending feedback instead, the event stays
buffered and will still be delivered, and no good feedback follows later (the worker has moved
on; a late beep would confuse the next scan).

``accepted`` devices wait for central's verdict on ``{root}/confirm``: ``accepted`` gives good
feedback, ``rejected`` bad (the reason is logged). A verdict also settles a ``delivered`` waiter
(central having the event implies the broker had it). Each waiter fires once: a repeated
confirm, or one arriving after the timeout, is recorded in the buffer but gives no feedback.
Events of kinds nobody waits on (telemetry, RFID departures) are never tracked.
See docs/confirmation.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from drivers.base import Outcome, StoredEvent
from gateway.commands import echo
from gateway.feedback_policy import NOT_HEARD, FeedbackPolicy, Stage

log = structlog.get_logger(__name__)

REASON_LIMIT = 200
"""Characters of a rejection's reason repeated in the log."""

TIMEOUT_LOG_INTERVAL = 10.0
"""During an outage every scan times out: the first ``confirm_timeout`` of a device is logged
with its id, the rest as one ``confirm_timeout_summary`` per device per this many seconds, with
the count (198 lines in 100 s at 2 scans/s before, issue 14)."""

FeedbackFn = Callable[[str, Outcome], None]
"""Starts a device's feedback and returns at once (the daemon's ``_feedback``): feedback runs
on the device's time, never on the pipeline's."""


@dataclass(slots=True)
class _TimeoutBurst:
    count: int
    last_id: str
    timer: asyncio.TimerHandle


@dataclass(slots=True)
class _Waiter:
    policy: FeedbackPolicy
    type: str
    started: float
    timer: asyncio.TimerHandle


class Confirmations:
    """Tracks events awaiting their confirmation level and fires device feedback."""

    def __init__(self, feedback: FeedbackFn) -> None:
        self._feedback = feedback
        self._waiting: dict[str, _Waiter] = {}
        self._live: dict[str, FeedbackPolicy | None] = {}
        """Device -> the policy of the driver now holding it (None: stopped, none yet since).
        A device not in here (a policy made outside the pipeline) is never taken as stopping."""
        self.latencies: list[float] = []
        self.latencies_total = 0
        """Seconds from capture to good feedback, most recent last (bounded)."""
        self.outcomes: dict[str, int] = {o.value: 0 for o in Outcome}
        self._timeout_bursts: dict[str, _TimeoutBurst] = {}

    def driver_started(self, policy: FeedbackPolicy) -> None:
        """A driver instance with its own ``policy`` now holds ``policy.device``.

        Called once per driver instance (``Pipeline.emitter``); a driver the supervisor
        restarts after a crash keeps its emitter, so its policy stays the live one. Events
        of the device's earlier policies are from a stopped driver (see :meth:`stored`).
        """
        self._live[policy.device] = policy

    def stored(self, policy: FeedbackPolicy, event: StoredEvent, captured: float) -> None:
        """An event committed: give what the policy says now, or wait for its level.

        An event of a driver instance that is no longer its device's live one (stopped: its
        emit was in flight in a task the stop's cancellation does not reach, as the RFID
        driver's tag reports are) is decided now as :meth:`stored_while_stopping`: a waiter
        would be left after :meth:`device_stopped`, and its PUBACK would later blink whichever
        driver then holds the device.
        """
        if self._live.get(policy.device, policy) is not policy:
            self.stored_while_stopping(policy, event, captured)
            return
        outcome, waits = policy.at_stored.get(event.type, NOT_HEARD)
        if outcome is not None:
            self._give(policy.device, outcome, captured)
        elif waits:
            loop = asyncio.get_running_loop()
            timer = loop.call_later(policy.timeout, self._timed_out, event.id)
            self._waiting[event.id] = _Waiter(policy, event.type, captured, timer)

    def stored_while_stopping(
        self, policy: FeedbackPolicy, event: StoredEvent, captured: float
    ) -> None:
        """An event committed while its device is being stopped: decide now, never wait.

        The driver that could give later feedback is going away (on a reload a new one takes
        over, on shutdown none does), so an event that reached its level gets that, and one that
        has not gets the policy's ``stopped`` answer (pending: it is stored, do not scan again).
        """
        outcome = policy.outcome(event.type, Stage.STORED)
        if outcome is None:
            outcome = policy.outcome(event.type, Stage.STOPPED)
        if outcome is not None:
            self._give(policy.device, outcome, captured if outcome is Outcome.GOOD else None)

    def device_stopped(self, device: str) -> int:
        """``device``'s driver is about to stop: its waiting events get the ``stopped`` answer.

        Called while the driver still holds its device. Later feedback would reach a driver
        that is gone (shutdown, removal) or a new one after a restart; the worker is told now
        instead (pending: stored, not lost, no need to scan again). Its events still being
        committed are decided as they commit (:meth:`stored`). Returns how many.
        """
        if device in self._live:
            self._live[device] = None
        stopped = [(i, w) for i, w in self._waiting.items() if w.policy.device == device]
        for event_id, waiter in stopped:
            del self._waiting[event_id]
            waiter.timer.cancel()
            outcome = waiter.policy.outcome(waiter.type, Stage.STOPPED)
            if outcome is not None:
                self._give(device, outcome, None)
        return len(stopped)

    def refused(self, policy: FeedbackPolicy, type_: str) -> None:
        """The buffer refused an event of ``type_``: whatever the policy says (scan again)."""
        outcome = policy.outcome(type_, Stage.REFUSED)
        if outcome is not None:
            self._give(policy.device, outcome, None)

    def delivered(self, event_ids: Iterable[str]) -> None:
        """The broker acknowledged these events."""
        for event_id in event_ids:
            waiter = self._waiting.get(event_id)
            if waiter is None:
                continue
            outcome = waiter.policy.outcome(waiter.type, Stage.DELIVERED)
            if outcome is not None:
                del self._waiting[event_id]
                waiter.timer.cancel()
                self._give(waiter.policy.device, outcome, waiter.started)

    def settled(self, event_id: str, device: str, *, accepted: bool, reason: str | None) -> None:
        """Central's verdict, already recorded in the buffer: feedback if someone still waits."""
        if not accepted:
            # The reason is central's free text: bounded and escaped before it reaches the log.
            shown = None if reason is None else echo(reason, REASON_LIMIT)
            log.warning("event_rejected", device=device, id=event_id, reason=shown)
        waiter = self._waiting.pop(event_id, None)
        if waiter is None:
            return
        waiter.timer.cancel()
        outcome = waiter.policy.outcome(waiter.type, Stage.ACCEPTED if accepted else Stage.REJECTED)
        if outcome is not None:
            good = outcome is Outcome.GOOD
            self._give(waiter.policy.device, outcome, waiter.started if good else None)

    @property
    def waiting(self) -> int:
        """Events whose device is still waiting for its confirmation level."""
        return len(self._waiting)

    def _timed_out(self, event_id: str) -> None:
        waiter = self._waiting.pop(event_id, None)
        if waiter is not None:
            self._log_timeout(waiter.policy.device, event_id)
            outcome = waiter.policy.outcome(waiter.type, Stage.TIMEOUT)
            if outcome is not None:
                self._give(waiter.policy.device, outcome, None)

    def _log_timeout(self, device: str, event_id: str) -> None:
        burst = self._timeout_bursts.get(device)
        if burst is not None:
            burst.count += 1
            burst.last_id = event_id
            return
        log.warning("confirm_timeout", device=device, id=event_id)
        timer = asyncio.get_running_loop().call_later(
            TIMEOUT_LOG_INTERVAL, self._timeout_summary, device
        )
        self._timeout_bursts[device] = _TimeoutBurst(0, event_id, timer)

    def _timeout_summary(self, device: str) -> None:
        """End of an interval: the count since the last line, and a new interval if any."""
        burst = self._timeout_bursts.pop(device, None)
        if burst is None or not burst.count:
            return
        log.warning(
            "confirm_timeout_summary",
            device=device,
            count=burst.count,
            interval_s=TIMEOUT_LOG_INTERVAL,
            last_id=burst.last_id,
        )
        burst.count = 0
        burst.timer = asyncio.get_running_loop().call_later(
            TIMEOUT_LOG_INTERVAL, self._timeout_summary, device
        )
        self._timeout_bursts[device] = burst

    def _give(self, device: str, outcome: Outcome, captured: float | None) -> None:
        # ``_value_``: ``value`` is a descriptor written in Python (enum.property) in 3.11.
        self.outcomes[outcome._value_] += 1
        if captured is not None:
            self.latencies.append(time.monotonic() - captured)
            self.latencies_total += 1
            if len(self.latencies) > 10_000:
                del self.latencies[:5_000]
        self._feedback(device, outcome)

    def close(self) -> None:
        """Cancel the timers: nobody waits for feedback any more."""
        for waiter in self._waiting.values():
            waiter.timer.cancel()
        self._waiting.clear()
        for device, burst in list(self._timeout_bursts.items()):
            burst.timer.cancel()
            if burst.count:  # said before stopping, not lost
                log.warning(
                    "confirm_timeout_summary",
                    device=device,
                    count=burst.count,
                    last_id=burst.last_id,
                )
        self._timeout_bursts.clear()
