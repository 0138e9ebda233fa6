"""The ``barcode-serial`` driver: a serial scanner's frames in, scan events out, beeps back.

Only the serial transport lives here: opening the port exclusively, reading it, and writing
feedback bytes. Framing, AIM, GS1, repeats, counters and the reconnect loop are shared with
the other barcode drivers (``drivers.barcode_common``), so a scan looks the same on any cable.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno

import serial_asyncio_fast

from drivers.barcode_common.driver import BarcodeDriver, describe_os_error
from drivers.barcode_common.framing import FrameMode
from drivers.barcode_serial.config import BarcodeSerialConfig
from drivers.base import EmitFn, Outcome, StatusFn

_READ_SIZE = 4096
_IO_TIMEOUT = 1.0
"""Bound on closing the port and draining feedback: a wedged USB adapter must not hang us."""


class BarcodeSerialDriver(BarcodeDriver[BarcodeSerialConfig]):
    """Reads a serial barcode scanner; see ``drivers/barcode_serial/README.md``."""

    config_model = BarcodeSerialConfig
    garbage_hint = "check baudrate, parity and framing"

    def __init__(
        self, config: BarcodeSerialConfig, *, emit: EmitFn, report_status: StatusFn
    ) -> None:
        super().__init__(config, emit=emit, report_status=report_status)
        self._feedback = config.feedback_bytes()
        self._writer: asyncio.StreamWriter | None = None

    def frame_mode(self) -> FrameMode:
        """The configured ``framing``."""
        return self.config.framing

    def feedback_now(self, outcome: Outcome) -> bool:
        """Write the bytes at once when the port has nothing queued; else defer to feedback().

        A queued write means the adapter is not keeping up: :meth:`feedback` then waits for
        it, with a timeout, and logs if it is wedged.
        """
        data = self._feedback.get(outcome)
        writer = self._writer
        if data is None or writer is None or writer.is_closing():
            return True  # nothing to send
        if writer.transport.get_write_buffer_size():
            return False
        try:
            writer.write(data)
        except Exception as exc:  # the transport reports its own fatal errors; be safe anyway
            self._log.warning("feedback_failed", outcome=outcome.value, error=str(exc))
        return True

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
        self._mark_up(f"open {port}")
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

    async def _read_loop(self, reader: asyncio.StreamReader) -> str:
        while True:
            chunk = await reader.read(_READ_SIZE)
            if not chunk:
                return f"port {self.config.port} closed (EOF)"
            await self._feed(chunk)


def _reason(exc: Exception) -> str:
    """Describe ``exc`` briefly; name the lock, pyserial's own text for it is cryptic."""
    if isinstance(exc, OSError) and exc.errno == errno.EWOULDBLOCK and "lock" in str(exc):
        return "locked by another process (another gateway?)"
    return describe_os_error(exc)


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
