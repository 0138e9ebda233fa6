"""The reconnect loop and its config keys, shared by every driver that holds a device connection.

Cables get unplugged, readers reboot and PLCs stop answering all day: every such fault is
"down once, retry with jittered backoff, up once when back", and never escapes ``run()``, so one
bad device does not take the gateway (or the other devices) with it. Subclasses implement one
open-read-close cycle in ``_session``; this module does the rest.
"""

from __future__ import annotations

import abc
import asyncio
from typing import ClassVar, TypeVar

import structlog
from pydantic import Field, ValidationInfo, field_validator

from drivers.backoff import Backoff
from drivers.base import DeviceConfig, Driver, EmitFn, StatusFn


def reconnect_bounds_error(low: float, high: float) -> str | None:
    """The message for a ``reconnect_max`` below ``reconnect_min``, else ``None``."""
    return f"must be >= reconnect_min ({low})" if high < low else None


def reconnect_max_field(default: float) -> float:
    """The ``reconnect_max`` key with a driver's own default (the bounds stay the same)."""
    field: float = Field(default=default, gt=0, le=3600, validate_default=True)
    return field


class ReconnectConfig(DeviceConfig):
    """Keys of a device that is reconnected with backoff: seconds between attempts."""

    reconnect_min: float = Field(default=0.5, gt=0, le=3600)
    reconnect_max: float = reconnect_max_field(30.0)

    @field_validator("reconnect_max")
    @classmethod
    def _max_above_min(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("reconnect_min")
        message = None if low is None else reconnect_bounds_error(low, value)
        if message is not None:
            raise ValueError(message)
        return value


ReconnectConfigT = TypeVar("ReconnectConfigT", bound=ReconnectConfig)


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that something below us swallowed.

    A driver cancelled at stop must stop. A cancellation that lands inside a library call can be
    turned into an ordinary error (on 3.11, ``asyncio.timeout`` expiring at the same moment
    does so), and the loop would then poll on while stop waits for it: seen once in CI, as the
    Modbus driver still polling 5 s after its task was cancelled.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class ReconnectingDriver(Driver[ReconnectConfigT]):
    """Base of drivers that open, read and reopen a device in ``_session`` until cancelled."""

    retry_event: ClassVar[str] = "device_retry"
    """Logged (at debug) on each failed retry while the device stays down."""

    def __init__(self, config: ReconnectConfigT, *, emit: EmitFn, report_status: StatusFn) -> None:
        super().__init__(config, emit=emit, report_status=report_status)
        self._log = structlog.get_logger(type(self).__module__).bind(device=config.id)
        self._backoff = Backoff(config.reconnect_min, config.reconnect_max)
        self._up: bool | None = None

    @abc.abstractmethod
    async def _session(self) -> str:
        """One open-read-close cycle of the device; returns why it ended.

        Calls ``_mark_up`` once the device answers; device faults are returned as the reason,
        never raised.
        """

    async def run(self) -> None:
        """Open, read and reopen the device until cancelled; device faults only mark it down."""
        try:
            while True:
                reason = await self._session()
                raise_if_cancelling()
                self._mark_down(reason)
                await asyncio.sleep(self._backoff.next())
        finally:
            # Stopped, not failed: the supervisor reports that transition, not us.
            self._health.up = False
            self._health.detail = "stopped"

    def _mark_up(self, detail: str) -> None:
        """The device answered: reset the backoff and report up."""
        self._backoff.reset()
        self._up = True
        self.set_status(up=True, detail=detail)

    def _mark_down(self, reason: str) -> None:
        """Report down on the transition only; while it stays down just refresh the detail."""
        if self._up is False:
            self._health.detail = reason
            self._log.debug(self.retry_event, reason=reason)
            return
        self._up = False
        self.set_status(up=False, detail=reason)
