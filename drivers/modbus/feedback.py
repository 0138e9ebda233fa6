"""Worker feedback on a Modbus device: a stack-light coil or a diverter register per outcome.

Writes have level semantics: a write identical to the last one that succeeded is skipped, so a
device whose every reading is confirmed does not put a coil write on the bus per poll. A
``pulse`` write is an event, not a level (a horn, a diverter kick): it is always written, then
``reset`` after the pulse. A pulse requested while the same output is pulsing extends it.

An output must never be left on: the reset goes through whatever link is current when the pulse
ends (a blip may have replaced the one it started on), it is written even if the pulse is
cancelled, and every pulse output not pulsing is put back at rest after each (re)connect, for a
reset that found no link.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from drivers.base import Outcome
from drivers.modbus.client import DeviceError, LinkDown, ModbusLink
from drivers.modbus.config import FeedbackWrite, ModbusConfig, Table


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
        self._until: dict[tuple[Table, int], float] = {}
        """Outputs pulsing now, and when each pulse ends (event-loop time)."""
        self._log = structlog.get_logger(__name__).bind(device=config.id)

    async def give(self, outcome: Outcome) -> None:
        """Write ``outcome``'s value; never raises (feedback must not fail an event)."""
        write = self._writes.get(outcome)
        if write is None:
            return
        if write.pulse is not None:
            await self._pulse(outcome, write, write.pulse)
            return
        target = (write.table, write.address, write.value)
        if target == self._last:
            return
        if await self._write(outcome, write.table, write.address, write.value):
            self._last = target
            self._count("feedback_writes")

    async def restore(self) -> None:
        """After a (re)connect: outputs may have been reset, or left on by a lost reset.

        The next level write is written again, and every pulse output not pulsing now is put
        back at rest. Never raises; a failed write is counted and logged.
        """
        self._last = None
        done: set[tuple[Table, int]] = set()
        for outcome, write in self._writes.items():
            key = (write.table, write.address)
            if write.pulse is None or key in self._until or key in done:
                continue
            done.add(key)
            await self._write(outcome, write.table, write.address, write.reset)

    async def _pulse(self, outcome: Outcome, write: FeedbackWrite, pulse: float) -> None:
        key = (write.table, write.address)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + pulse
        if key in self._until:
            self._until[key] = max(self._until[key], deadline)
            self._count("feedback_merged")
            return
        self._until[key] = deadline
        try:
            if await self._write(outcome, write.table, write.address, write.value):
                self._count("feedback_writes")
            # Sleep to the deadline, then again if a merged pulse moved it.
            while (remaining := self._until[key] - loop.time()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(remaining)
        finally:
            del self._until[key]
            self._last = None
            # Shielded: a cancellation (shutdown) must not leave a horn or diverter on.
            await asyncio.shield(self._write(outcome, write.table, write.address, write.reset))

    async def _write(self, outcome: Outcome, table: Table, address: int, value: int) -> bool:
        """One write through the link of *now*; True if the device took it."""
        link = self._link()
        if link is None:
            self._count("feedback_skipped")
            return False
        try:
            await link.write(table, address, value)
        except (DeviceError, LinkDown) as exc:
            self._last = None
            self._count("feedback_failures")
            self._log.warning("feedback_failed", outcome=outcome.value, error=str(exc))
            return False
        return True


def describe(write: FeedbackWrite) -> str:
    """``coil 10 = 1`` for logs."""
    return f"{write.table} {write.address} = {write.value}"
