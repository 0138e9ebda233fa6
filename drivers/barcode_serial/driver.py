"""The ``barcode-serial`` driver: a serial scanner's frames in, scan events out, beeps back.

Scanners get unplugged, re-enumerated and hot-swapped all day; the driver treats every such
fault as "down, retry with backoff" and never lets it escape ``run()``, so one bad cable does
not take the gateway (or the other devices) with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from typing import Any

import serial_asyncio_fast
import structlog

from drivers.backoff import Backoff
from drivers.barcode_serial.config import BarcodeSerialConfig
from drivers.barcode_serial.framing import Framer
from drivers.barcode_serial.gs1 import parse_gs1, sniff_gs1
from drivers.barcode_serial.symbology import is_gs1, split_aim
from drivers.base import DeviceEvent, Driver, EmitFn, Outcome, StatusFn

EVENT_TYPE = "warehouse.barcode.scanned.v1"
_READ_SIZE = 4096
_IO_TIMEOUT = 1.0
"""Bound on closing the port and draining feedback: a wedged USB adapter must not hang us."""


class BarcodeSerialDriver(Driver[BarcodeSerialConfig]):
    """Reads a serial barcode scanner; see ``drivers/barcode_serial/README.md``."""

    config_model = BarcodeSerialConfig

    def __init__(
        self, config: BarcodeSerialConfig, *, emit: EmitFn, report_status: StatusFn
    ) -> None:
        super().__init__(config, emit=emit, report_status=report_status)
        self._log = structlog.get_logger(__name__).bind(device=config.id)
        self._feedback = config.feedback_bytes()
        self._backoff = Backoff(config.reconnect_min, config.reconnect_max)
        self._writer: asyncio.StreamWriter | None = None
        self._up: bool | None = None
        self._last_scan: tuple[str, float] | None = None
        self._garbage_burst = 0
        self._no_aim_logged = False

    async def run(self) -> None:
        """Open, read and reopen the port until cancelled; device faults only mark it down."""
        try:
            while True:
                reason = await self._session()
                self._mark_down(reason)
                await asyncio.sleep(self._backoff.next())
        finally:
            # Stopped, not failed: the supervisor reports that transition, not us.
            self._health.up = False
            self._health.detail = "stopped"

    async def feedback(self, outcome: Outcome) -> None:
        """Write the profile's bytes for ``outcome``; a no-op without bytes or an open port."""
        data = self._feedback.get(outcome)
        writer = self._writer
        if data is None or writer is None or writer.is_closing():
            return
        try:
            writer.write(data)
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
            async with asyncio.timeout(_IO_TIMEOUT):
                await writer.drain()
        except Exception as exc:
            self._log.warning("feedback_failed", outcome=outcome.value, error=str(exc))

    async def _session(self) -> str:
        """One open-read-close cycle of the port; returns why it ended."""
        port = self.config.port
        try:
            reader, writer = await self._open()
        except (OSError, ValueError) as exc:  # pyserial's SerialException is an OSError
            self.count("open_failures")
            return f"cannot open {port}: {_reason(exc)}"
        self._writer = writer
        self._backoff.reset()
        self._up = True
        self.set_status(up=True, detail=f"open {port}")
        self._log.debug("port_open", port=port)
        try:
            reason = await self._read_loop(reader)
        except OSError as exc:
            reason = f"read failed on {port}: {_reason(exc)}"
        finally:
            self._writer = None
            await _close(writer)
        self.count("disconnects")
        return reason

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        cfg = self.config
        opening = asyncio.ensure_future(
            serial_asyncio_fast.open_serial_connection(
                url=cfg.port,
                baudrate=cfg.baudrate,
                bytesize=cfg.bytesize,
                parity=cfg.parity,
                stopbits=cfg.stopbits,
                exclusive=True,  # two readers would split the scans between them
            )
        )
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The open runs on in an executor thread: close the port it yields, or it leaks.
            opening.add_done_callback(_close_when_opened)
            raise

    def _mark_down(self, reason: str) -> None:
        """Report down on the transition only; while it stays down just refresh the detail."""
        if self._up is False:
            self._health.detail = reason
            self._log.debug("port_retry", reason=reason)
            return
        self._up = False
        self.set_status(up=False, detail=reason)

    async def _read_loop(self, reader: asyncio.StreamReader) -> str:
        framer = Framer(self.config.framing, self.config.max_frame)
        while True:
            chunk = await reader.read(_READ_SIZE)
            if not chunk:
                return f"port {self.config.port} closed (EOF)"
            garbage, oversize = framer.garbage, framer.oversize
            frames = framer.feed(chunk)
            dropped = self._account(
                len(frames), framer.garbage - garbage, framer.oversize - oversize
            )
            for frame in frames:
                dropped |= not await self._handle(frame.decode("utf-8"))
            if dropped:
                # The worker scanned and nothing was recorded: say so, once per chunk.
                await self.feedback(Outcome.BAD)

    def _account(self, frames: int, garbage: int, oversize: int) -> bool:
        """Count a chunk's frames; log garbage once per burst. True if something was dropped."""
        if frames:
            self.count("frames", frames)
        if oversize:
            self.count("oversize", oversize)
            self._log.warning("frame_too_long", max_frame=self.config.max_frame)
        if garbage:
            self.count("garbage", garbage)
            if not self._garbage_burst:
                self._log.warning("garbage_received", hint="check baudrate, parity and framing")
            self._garbage_burst += garbage
        elif frames and self._garbage_burst:
            self._log.info("garbage_burst_ended", frames_dropped=self._garbage_burst)
            self._garbage_burst = 0
        return bool(garbage or oversize)

    async def _handle(self, text: str) -> bool:
        """Turn one frame into a scan event; False if it was rejected (not merely suppressed)."""
        aim: str | None = None
        name: str | None = None
        code = text
        if self.config.aim != "none":
            aim, name, code = split_aim(text)
            if aim is None and self.config.aim == "required":
                self.count("no_aim")
                if not self._no_aim_logged:  # once until a good frame: a setting, not an event
                    self._log.warning("frame_without_aim_id", hint="enable AIM ids on the scanner")
                    self._no_aim_logged = True
                return False
            self._no_aim_logged = False
        if not code:
            self.count("empty")
            return True
        if self._suppressed(text):
            self.count("suppressed")
            return True
        self.count("scans")
        await self._emit(DeviceEvent(type=EVENT_TYPE, data=self._scan_data(aim, name, code)))
        return True

    def _scan_data(self, aim: str | None, name: str | None, code: str) -> dict[str, Any]:
        """Build the event body: GS1 fields only where the symbology (or the text) says GS1."""
        data: dict[str, Any] = {"code": code}
        if aim is not None:
            data["symbology"] = aim
        if name is not None:
            data["symbology_name"] = name
        if self.config.gs1:
            if is_gs1(aim):
                data.update(parse_gs1(code))
            elif aim is None:
                data.update(sniff_gs1(code) or {})
        return data

    def _suppressed(self, text: str) -> bool:
        """Tell a repeat of the last emitted code within ``suppress_window`` of its emission."""
        window = self.config.suppress_window
        if window <= 0:
            return False
        now = asyncio.get_running_loop().time()
        if self._last_scan is not None:
            last_text, emitted_at = self._last_scan
            if last_text == text and now - emitted_at < window:
                return True
        self._last_scan = (text, now)
        return False


def _reason(exc: Exception) -> str:
    """Describe ``exc`` briefly: pyserial repeats the port, the errno text is what helps."""
    if isinstance(exc, OSError) and exc.errno:
        if exc.errno == errno.EWOULDBLOCK and "lock" in str(exc):
            return "locked by another process (another gateway?)"
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    # The port is gone either way, and a read error was already reported.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(_IO_TIMEOUT):
            await writer.wait_closed()


def _close_when_opened(
    opening: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result()[1].close()
