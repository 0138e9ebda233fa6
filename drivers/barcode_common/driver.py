"""What every barcode driver shares: the scan reader on top of the reconnect loop.

Scanners get unplugged, re-enumerated and hot-swapped all day, on any cable: every such fault
is "down once, retry with jittered backoff, up once when back" (``ReconnectingDriver``), and
never escapes ``run()``, so one bad cable does not take the gateway (or the other devices) with
it.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping
from typing import ClassVar, TypeVar

from drivers.barcode_common.config import BarcodeConfig
from drivers.barcode_common.framing import FrameMode
from drivers.barcode_common.scans import EVENT_TYPE, ScanReader
from drivers.base import EmitFn, EventFeedback, Outcome, StatusFn
from drivers.reconnecting import ReconnectingDriver

BarcodeConfigT = TypeVar("BarcodeConfigT", bound=BarcodeConfig)


class BarcodeDriver(ReconnectingDriver[BarcodeConfigT]):
    """Base of the barcode drivers: subclasses open and read their transport in ``_session``."""

    event_feedback: ClassVar[Mapping[str, EventFeedback]] = {EVENT_TYPE: EventFeedback.CONFIRM}
    """A worker waits on every scan."""
    garbage_hint: ClassVar[str] = "check the scanner's settings"
    """Logged once per burst of garbage frames: what to check on this kind of scanner."""

    def __init__(self, config: BarcodeConfigT, *, emit: EmitFn, report_status: StatusFn) -> None:
        super().__init__(config, emit=emit, report_status=report_status)
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

    def _mark_up(self, detail: str) -> None:
        """The device is open: drop a stale partial frame, reset the backoff, report up."""
        self._scans.restart()
        super()._mark_up(detail)

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
