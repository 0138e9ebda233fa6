"""Frames in, scan events out: the part of a barcode driver that is the same on every cable.

Whether the bytes came from a UART or were typed by a keyboard wedge, one frame is one scan:
split off the AIM identifier, parse GS1 where the symbology says so, drop a repeat inside the
suppress window, count everything, and emit ``warehouse.barcode.scanned.v1``. Drivers keep
only their transport (open, read, reconnect, feedback bytes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from drivers.barcode_common.config import BarcodeConfig
from drivers.barcode_common.framing import FrameMode, Framer
from drivers.barcode_common.gs1 import parse_gs1, sniff_gs1
from drivers.barcode_common.symbology import is_gs1, split_aim
from drivers.base import DeviceEvent, EmitFn

EVENT_TYPE = "warehouse.barcode.scanned.v1"

CountFn = Callable[[str, int], None]
"""``Driver.count``: bump a health counter by an amount."""


def scan_data(code: str, aim: str | None, name: str | None, *, gs1: bool) -> dict[str, Any]:
    """Build a scan's event body: GS1 fields only where the symbology (or the text) says GS1."""
    data: dict[str, Any] = {"code": code}
    if aim is not None:
        data["symbology"] = aim
    if name is not None:
        data["symbology_name"] = name
    if gs1:
        if is_gs1(aim):
            data.update(parse_gs1(code))
        elif aim is None:
            data.update(sniff_gs1(code) or {})
    return data


class ScanReader:
    """Turns a scanner's bytes into stored scan events, counting what it drops.

    One per driver, living across reconnects so that the suppress window and the log-once
    state survive an unplug; ``restart`` drops a frame cut short by one.
    """

    def __init__(
        self,
        config: BarcodeConfig,
        mode: FrameMode,
        *,
        emit: EmitFn,
        count: CountFn,
        log: Any,  # noqa: ANN401 - a structlog bound logger, untyped by structlog
        garbage_hint: str,
    ) -> None:
        self._config = config
        self._mode: FrameMode = mode
        self._emit = emit
        self._count = count
        self._log = log
        self._garbage_hint = garbage_hint
        self._framer = Framer(mode, config.max_frame)
        self._last_scan: tuple[str, float] | None = None
        self._garbage_burst = 0
        self._no_aim_logged = False

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held."""
        return self._framer.buffered

    def restart(self) -> None:
        """Forget any partial frame: a reopened device starts afresh."""
        self._framer = Framer(self._mode, self._config.max_frame)

    async def feed(self, data: bytes) -> bool:
        """Consume ``data``; True if it dropped a frame, so the worker should get bad feedback."""
        framer = self._framer
        garbage, oversize = framer.garbage, framer.oversize
        frames = framer.feed(data)
        dropped = self._account(len(frames), framer.garbage - garbage, framer.oversize - oversize)
        for frame in frames:
            dropped |= not await self.handle(frame.decode("utf-8"))
        return dropped

    def _account(self, frames: int, garbage: int, oversize: int) -> bool:
        """Count a chunk's frames; log garbage once per burst. True if something was dropped."""
        if frames:
            self._count("frames", frames)
        if oversize:
            self._count("oversize", oversize)
            self._log.warning("frame_too_long", max_frame=self._config.max_frame)
        if garbage:
            self._count("garbage", garbage)
            if not self._garbage_burst:
                self._log.warning("garbage_received", hint=self._garbage_hint)
            self._garbage_burst += garbage
        elif frames and self._garbage_burst:
            self._log.info("garbage_burst_ended", frames_dropped=self._garbage_burst)
            self._garbage_burst = 0
        return bool(garbage or oversize)

    async def handle(self, text: str) -> bool:
        """Turn one frame into a scan event; False if it was rejected (not merely suppressed)."""
        aim: str | None = None
        name: str | None = None
        code = text
        if self._config.aim != "none":
            aim, name, code = split_aim(text)
            if aim is None and self._config.aim == "required":
                self._count("no_aim", 1)
                if not self._no_aim_logged:  # once until a good frame: a setting, not an event
                    self._log.warning("frame_without_aim_id", hint="enable AIM ids on the scanner")
                    self._no_aim_logged = True
                return False
            self._no_aim_logged = False
        if not code:
            self._count("empty", 1)
            return True
        read_at = asyncio.get_running_loop().time()
        if self._suppressed(text, read_at):
            self._count("suppressed", 1)
            return True
        self._count("scans", 1)
        data = scan_data(code, aim, name, gs1=self._config.gs1)
        stored = await self._emit(DeviceEvent(type=EVENT_TYPE, data=data))
        if stored is not None:
            # Only a stored scan counts as seen: after a refusal (bad-read feedback) or a
            # failed emit, the rescan the worker was asked for must go through.
            self._last_scan = (text, read_at)
        return True

    def _suppressed(self, text: str, now: float) -> bool:
        """Tell a repeat of the last stored code within ``suppress_window`` of its reading."""
        window = self._config.suppress_window
        if window <= 0 or self._last_scan is None:
            return False
        last_text, read_at = self._last_scan
        return last_text == text and now - read_at < window
