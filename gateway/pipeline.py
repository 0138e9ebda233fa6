"""The pipeline: stamps each driver event (id, capture time), stores it, starts its confirmation.

Each device gets its own ``emit`` coroutine. It returns only after the buffer committed the
event, so a fast device is slowed to the disk's pace instead of queueing without bound. What
the worker hears about the event is not decided here: every stored or refused event goes to
:class:`Confirmations` with its device's feedback policy, which alone decides.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
import time

import structlog

from buffer.store import (
    Buffer,
    BufferClosedError,
    BufferFullError,
    CommitFuture,
    EventRenderError,
    NewEvent,
)
from drivers.base import DeviceConfig, DeviceEvent, EmitFn, StoredEvent
from gateway.confirmations import Confirmations
from gateway.events import SourceRenderer, new_id, rfc3339_now, source_for
from gateway.feedback_policy import FeedbackPolicy

log = structlog.get_logger(__name__)

REFUSED = (BufferFullError, EventRenderError, BufferClosedError, sqlite3.Error)
"""What ``Buffer.append`` raises for an event it did not store: the worker hears a bad read.
``EventRenderError``: the driver's data cannot be written as JSON (refused alone);
``BufferClosedError``: an event emitted once the buffer began closing (a stop whose drivers
outlived its shutdown bound), not stored."""


class Pipeline:
    """Turns driver events into stored events for every configured device."""

    def __init__(
        self, buffer: Buffer, confirmations: Confirmations, *, site: str, gateway_id: str
    ) -> None:
        self._buffer = buffer
        self._confirmations = confirmations
        self._site = site
        self._gateway_id = gateway_id
        self.refused = 0
        self._stored: dict[str, dict[str, int]] = {}
        """Events stored, by device, then type: a plain dict per device, which its emitters
        count in (a ``Counter`` keyed by (device, type) cost a tuple and its hashes, about 3x
        the instructions, per event)."""

    @property
    def stored(self) -> collections.Counter[tuple[str, str]]:
        """Events stored, by (device, type), for metrics: a snapshot, made when asked."""
        return collections.Counter(
            {
                (device, type_): n
                for device, by_type in self._stored.items()
                for type_, n in by_type.items()
            }
        )

    def _count_stored(self, device: str, type_: str) -> None:
        """One more event of ``device`` stored (the paths other than ``emit``'s own)."""
        by_type = self._stored.setdefault(device, {})
        by_type[type_] = by_type.get(type_, 0) + 1

    def emitter(self, device: DeviceConfig, policy: FeedbackPolicy | None = None) -> EmitFn:
        """The ``emit`` coroutine handed to ``device``'s driver.

        ``policy`` defaults to the one built from ``device``'s config and registered driver.
        One emitter per driver instance: its policy becomes the device's live one, so events
        an earlier (stopped) instance still commits are never left waiting for their level.
        """
        device_id = device.id
        stored_by_type = self._stored.setdefault(device_id, {})
        renderer = SourceRenderer(source_for(self._site, self._gateway_id, device_id))
        policy = policy or FeedbackPolicy.for_device(device)
        self._confirmations.driver_started(policy)

        async def emit(event: DeviceEvent) -> StoredEvent | None:
            captured = time.monotonic()
            event_id, key = new_id()
            stamp = rfc3339_now()
            render = renderer.render_for(event_id, event.type, stamp, event.data)
            new = NewEvent(event_id, device_id, stamp, event.type, event.droppable, render, key)
            # A driver cancelled here (reload, stop) must not leave an event the buffer commits
            # anyway without its feedback decision. The commit's future refuses cancellation
            # (buffer.store.CommitFuture): the CancelledError comes once the commit returned,
            # while the driver still holds its device, and the outcome is there to decide on.
            try:
                append = self._buffer.append_nowait(new)
            except REFUSED as exc:  # closing: refused at once, nothing queued
                self._refused(policy, event, exc)
                return None
            try:
                stored = await append
            except asyncio.CancelledError:
                self._stored_while_stopping(append, policy, event, captured)
                raise
            except REFUSED as exc:
                # Any store error (an I/O error, a lock held too long) means "not stored":
                # the worker hears a bad read and scans again, exactly as for a full disk.
                self._refused(policy, event, exc)
                return None
            self._confirmations.stored(policy, stored, captured)
            stored_by_type[event.type] = stored_by_type.get(event.type, 0) + 1
            return stored

        return emit

    def _refused(self, policy: FeedbackPolicy, event: DeviceEvent, exc: Exception) -> None:
        self.refused += 1
        log.error("event_refused", device=policy.device, type=event.type, reason=str(exc))
        self._confirmations.refused(policy, event.type)

    def _stored_while_stopping(
        self,
        append: CommitFuture,
        policy: FeedbackPolicy,
        event: DeviceEvent,
        captured: float,
    ) -> None:
        """The driver was cancelled while its event was being committed: finish the decision.

        Its task got the cancellation only once the commit returned (``CommitFuture``), so
        feedback is given now, while the driver still holds its device (a serial port closes
        as the cancellation unwinds). Should the future not be settled yet (asyncio delivering
        a cancellation some other way), the decision is made when it is.
        """
        if append.done():
            self._decide_late(append, policy, event, captured)
        else:  # pragma: no cover - asyncio wakes a task on its awaited future only
            append.add_done_callback(lambda done: self._decide_late(done, policy, event, captured))

    def _decide_late(
        self,
        done: asyncio.Future[StoredEvent],
        policy: FeedbackPolicy,
        event: DeviceEvent,
        captured: float,
    ) -> None:
        if done.cancelled():
            return
        exc = done.exception()
        if isinstance(exc, REFUSED):
            self._refused(policy, event, exc)
        elif exc is None:
            self._confirmations.stored_while_stopping(policy, done.result(), captured)
            self._count_stored(policy.device, event.type)
