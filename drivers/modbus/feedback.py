"""Worker feedback on a Modbus device: a stack-light coil or a diverter register per outcome.

Writes have level semantics: a write identical to the last one that succeeded is skipped, so a
device whose every reading is confirmed does not put a coil write on the bus per poll. A
``pulse`` write is an event, not a level (a horn, a diverter kick): it is always written, then
``reset`` after the pulse.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from drivers.base import Outcome
from drivers.modbus.client import DeviceError, LinkDown, ModbusLink
from drivers.modbus.config import FeedbackWrite, ModbusConfig


class FeedbackWriter:
    """Performs the configured write for an outcome on the current link, if there is one."""

    def __init__(
        self,
        config: ModbusConfig,
        link: Callable[[], ModbusLink | None],
        count: Callable[[str], None],
    ) -> None:
        self._writes = config.feedback_writes()
        self._link = link
        self._count = count
        self._last: tuple[str, int, int] | None = None
        self._log = structlog.get_logger(__name__).bind(device=config.id)

    async def give(self, outcome: Outcome) -> None:
        """Write ``outcome``'s value; never raises (feedback must not fail an event)."""
        write = self._writes.get(outcome)
        if write is None:
            return
        link = self._link()
        if link is None:
            self._count("feedback_skipped")
            return
        target = (write.table, write.address, write.value)
        if write.pulse is None and target == self._last:
            return
        try:
            await link.write(write.table, write.address, write.value)
            self._last = target
            if write.pulse is not None:
                await asyncio.sleep(write.pulse)
                await link.write(write.table, write.address, write.reset)
                self._last = (write.table, write.address, write.reset)
            self._count("feedback_writes")
        except (DeviceError, LinkDown) as exc:
            self._last = None
            self._count("feedback_failures")
            self._log.warning("feedback_failed", outcome=outcome.value, error=str(exc))

    def forget(self) -> None:
        """After a reconnect the device may have reset its outputs: write the next level again."""
        self._last = None


def describe(write: FeedbackWrite) -> str:
    """``coil 10 = 1`` for logs."""
    return f"{write.table} {write.address} = {write.value}"
