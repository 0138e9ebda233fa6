"""Worker feedback on an RFID portal: pulse a reader GPO (stack light, buzzer) per outcome.

A pallet of 40 tags confirms 40 events within a few hundred milliseconds. Forty separate on/off
pairs would flicker and flood the reader with SET_READER_CONFIG messages, so a pulse requested
while the same output is already on extends it instead: one visible pulse, counted as merged.
The output is always switched off again, even if the pulse is cancelled mid-way. A reconnect
switches every output off (the reader may have kept one on); ``reassert`` then switches on again
the ones still pulsing, so a pulse (or a good merged into it) is not dark for its remainder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from drivers.base import Outcome

WriteFn = Callable[[int, bool], Awaitable[bool]]
"""Set a GPO port on or off; True if the reader confirmed it."""


class GpoPulser:
    """Pulses the GPO port configured for each outcome."""

    def __init__(self, ports: Mapping[Outcome, int], pulse_s: float, write: WriteFn) -> None:
        self._ports = dict(ports)
        self._pulse_s = pulse_s
        self._write = write
        self._until: dict[int, float] = {}
        self.pulses = 0
        self.merged = 0

    @property
    def ports(self) -> list[int]:
        """Every configured port, to switch off after a reconnect."""
        return sorted(set(self._ports.values()))

    async def reassert(self) -> None:
        """After a (re)connect switched every port off: switch on those still pulsing.

        Each pulse's own end switches its port off later, after this write on the wire.
        """
        for port in sorted(self._until):
            if port in self._until:  # the pulse may have ended while we awaited the last one
                await self._write(port, True)

    async def pulse(self, outcome: Outcome) -> None:
        """Turn the outcome's port on for ``pulse_s`` (extending a pulse already running)."""
        port = self._ports.get(outcome)
        if port is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._pulse_s
        if port in self._until:
            self._until[port] = max(self._until[port], deadline)
            self.merged += 1
            return
        self._until[port] = deadline
        self.pulses += 1
        try:
            await self._write(port, True)
            # Sleep to the deadline, then again if a merged pulse moved it: no wake-ups between.
            while (remaining := self._until[port] - loop.time()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(remaining)
        finally:
            del self._until[port]
            # Shielded: a light left on after shutdown reads as "still confirming".
            await asyncio.shield(self._write(port, False))
