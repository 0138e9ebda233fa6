"""The reconnect loop and device status every barcode driver shares.

Scanners get unplugged, re-enumerated and hot-swapped all day, on any cable: every such fault
is "down once, retry with jittered backoff, up once when back", and never escapes ``run()``, so
one bad cable does not take the gateway (or the other devices) with it.
"""

from __future__ import annotations

import abc
import asyncio
import os
from typing import ClassVar, TypeVar

import structlog

from drivers.backoff import Backoff
from drivers.barcode_common.config import BarcodeConfig
from drivers.barcode_common.framing import FrameMode
from drivers.barcode_common.scans import ScanReader
from drivers.base import Driver, EmitFn, Outcome, StatusFn

BarcodeConfigT = TypeVar("BarcodeConfigT", bound=BarcodeConfig)


class BarcodeDriver(Driver[BarcodeConfigT]):
    """Base of the barcode drivers: subclasses open and read their transport in ``_session``."""

    garbage_hint: ClassVar[str] = "check the scanner's settings"
    """Logged once per burst of garbage frames: what to check on this kind of scanner."""

    def __init__(self, config: BarcodeConfigT, *, emit: EmitFn, report_status: StatusFn) -> None:
        super().__init__(config, emit=emit, report_status=report_status)
        self._log = structlog.get_logger(type(self).__module__).bind(device=config.id)
        self._backoff = Backoff(config.reconnect_min, config.reconnect_max)
        self._up: bool | None = None
        self._scans = ScanReader(
            config,
            self.frame_mode(),
            emit=emit,
            count=self.count,
            log=self._log,
            garbage_hint=self.garbage_hint,
        )

    @abc.abstractmethod
    def frame_mode(self) -> FrameMode:
        """How this device's configuration ends a code."""

    @abc.abstractmethod
    async def _session(self) -> str:
        """One open-read-close cycle of the device; returns why it ended.

        Calls ``_mark_up`` once open; device faults are returned as the reason, never raised.
        """

    async def run(self) -> None:
        """Open, read and reopen the device until cancelled; device faults only mark it down."""
        try:
            while True:
                reason = await self._session()
                self._mark_down(reason)
                await asyncio.sleep(self._backoff.next())
        finally:
            # Stopped, not failed: the supervisor reports that transition, not us.
            self._health.up = False
            self._health.detail = "stopped"

    def _mark_up(self, detail: str) -> None:
        """The device is open: reset the backoff, drop a stale partial frame, report up."""
        self._backoff.reset()
        self._scans.restart()
        self._up = True
        self.set_status(up=True, detail=detail)

    def _mark_down(self, reason: str) -> None:
        """Report down on the transition only; while it stays down just refresh the detail."""
        if self._up is False:
            self._health.detail = reason
            self._log.debug("device_retry", reason=reason)
            return
        self._up = False
        self.set_status(up=False, detail=reason)

    async def _feed(self, data: bytes) -> None:
        """Hand received bytes to the scan reader; a dropped frame gets bad-read feedback."""
        if await self._scans.feed(data):
            # The worker scanned and nothing was recorded: say so, once per chunk.
            await self.feedback(Outcome.BAD)


def describe_os_error(exc: Exception) -> str:
    """Describe ``exc`` briefly: libraries repeat the path, the errno text is what helps."""
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__
