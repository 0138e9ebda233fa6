"""The contract between the gateway core and a device driver.

A driver speaks only its device's protocol. It hands typed events to ``emit`` (which returns once
the event is durably stored, giving natural backpressure), reports its device going up or down,
and turns an outcome into device feedback (a beep, a GPO pulse, a coil write). It never touches
SQLite or MQTT: that is what lets the durability guarantees live in one place.
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Device ids become MQTT topic levels and CloudEvents sources: no '/', '+', '#' or spaces."""

DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)


class Outcome(enum.StrEnum):
    """What the worker is told about an event."""

    GOOD = "good"
    BAD = "bad"
    PENDING = "pending"


ConfirmLevel = Literal["stored", "delivered", "accepted"]


class EventFeedback(enum.StrEnum):
    """Whether a worker waits to hear about an event kind: a driver's only say in feedback.

    The gateway turns this, with the device's ``confirm`` level, into the device's feedback
    policy (``gateway.feedback_policy``), and nothing else decides who hears what.
    """

    CONFIRM = "confirm"
    """Someone waits (a scan, a tag arriving at a portal, a conveyor alarm): good once the
    device's level is reached, pending on timeout or stop, bad when refused or rejected."""
    NONE = "none"
    """Nobody waits (telemetry, a tag leaving): no feedback, whatever happens to the event."""


class DeviceConfig(BaseModel):
    """Keys every ``[[devices]]`` entry has, whatever its driver."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=DEVICE_ID_PATTERN, description="device id, used in topics and sources")
    driver: str
    confirm: ConfirmLevel = "stored"
    confirm_timeout: float = Field(default=3.0, gt=0, le=3600)


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """An event as a driver sees it: a CloudEvents type and its body, not yet stamped.

    ``droppable`` marks telemetry that the buffer may coalesce or drop under its size cap; scans
    and RFID arrivals/departures are never droppable (contract section 4). It is the buffer's
    concern only: who hears about an event is decided by its type, through the driver's
    ``event_feedback`` table.
    """

    type: str
    data: Mapping[str, Any]
    droppable: bool = False


@dataclass(slots=True)
class StoredEvent:
    """An event after the buffer committed it: its stable id and per-device sequence number.

    Not ``frozen``, like ``buffer.store.NewEvent``: one is built per event.
    """

    id: str
    device: str
    seq: int
    time: str
    type: str


@dataclass(slots=True)
class DeviceHealth:
    """A driver's view of its device, for status output and metrics."""

    up: bool = False
    detail: str = "starting"
    counters: dict[str, int] = field(default_factory=dict)


EmitFn = Callable[[DeviceEvent], Awaitable[StoredEvent | None]]
"""Store an event. Returns once committed, or ``None`` when the buffer refused it (the device's
feedback policy has then given whatever feedback that deserves)."""

StatusFn = Callable[[bool, str], None]
"""Report the device up (True) or down (False) with a human-readable detail."""

ConfigT = TypeVar("ConfigT", bound=DeviceConfig)


class Driver(abc.ABC, Generic[ConfigT]):
    """Base class of every driver. Subclasses set ``config_model`` and implement ``run``."""

    config_model: ClassVar[type[DeviceConfig]]
    event_feedback: ClassVar[Mapping[str, EventFeedback]] = {}
    """Event type -> whether a worker waits to hear about it. Types not listed get no
    feedback at all: list every type a worker waits on."""

    def __init__(self, config: ConfigT, *, emit: EmitFn, report_status: StatusFn) -> None:
        self.config = config
        self._emit = emit
        self._report_status = report_status
        self._health = DeviceHealth()

    @property
    def device_id(self) -> str:
        """The configured device id."""
        return self.config.id

    def set_status(self, up: bool, detail: str) -> None:
        """Record and report a state; the supervisor logs only transitions."""
        self._health.up = up
        self._health.detail = detail
        self._report_status(up, detail)

    def count(self, name: str, amount: int = 1) -> None:
        """Bump a driver counter (garbage frames, reconnects ...)."""
        self._health.counters[name] = self._health.counters.get(name, 0) + amount

    def health(self) -> DeviceHealth:
        """The device's current state and counters."""
        return self._health

    @abc.abstractmethod
    async def run(self) -> None:
        """Read the device until cancelled, reconnecting with backoff on failures.

        Must never raise for device faults: report them with ``set_status`` and retry.
        """

    @abc.abstractmethod
    async def feedback(self, outcome: Outcome) -> None:
        """Give the worker feedback; failures are logged by the caller, never fatal."""

    def feedback_now(self, outcome: Outcome) -> bool:
        """Give ``outcome`` at once if that needs no waiting; False asks for :meth:`feedback`.

        The gateway tries this first for every outcome: a task per beep cost about a sixth of
        the pipeline's CPU at full rate, and most feedback is a few bytes written to a port
        that is ready. Must neither block nor raise. The default always defers.
        """
        del outcome
        return False

    async def stop(self) -> None:
        """Release device resources after ``run`` was cancelled."""
