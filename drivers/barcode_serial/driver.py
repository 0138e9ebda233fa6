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
            reader, writer, protocol = await self._open()
        except (OSError, ValueError) as exc:  # pyserial's SerialException is an OSError
            self.count("open_failures")
            return f"cannot open {port}: {_reason(exc)}"
        self._writer = writer
        self._mark_up(f"open {port}")
        self._log.debug("port_open", port=port)
        try:
            reason = await self._read_loop(reader, protocol)
        except OSError as exc:
            reason = f"read failed on {port}: {_reason(exc)}"
        finally:
            self._writer = None
            await _close(writer)
        self.count("disconnects")
        return reason

    async def _open(self) -> _Port:
        opening = asyncio.ensure_future(_open_port(self.config))
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The open runs on in an executor thread: close the port it yields, or it leaks.
            opening.add_done_callback(_close_when_opened)
            raise

    async def _read_loop(self, reader: asyncio.StreamReader, protocol: _PortProtocol) -> str:
        while True:
            chunk = await reader.read(_READ_SIZE)
            if not chunk:
                if protocol.error is not None:
                    raise protocol.error  # only now: every byte before it was handed on
                return f"port {self.config.port} closed (EOF)"
            await self._feed(chunk)


class _PortProtocol(asyncio.StreamReaderProtocol):
    """Hands the reader every byte received before a port error, then EOF; keeps the error.

    ``StreamReader.read`` raises a stored error before it returns the bytes buffered ahead of
    it: a scan received while the previous one waited for its commit would be lost with the
    cable (or a USB hub reset). The read loop raises ``error`` once the reader is drained.
    """

    error: Exception | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        """Record ``exc`` and end the stream cleanly after the bytes already received."""
        self.error = exc
        super().connection_lost(None)


_Port = tuple[asyncio.StreamReader, asyncio.StreamWriter, _PortProtocol]


async def _open_port(cfg: BarcodeSerialConfig) -> _Port:
    """``serial_asyncio_fast.open_serial_connection`` with :class:`_PortProtocol`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    protocol = _PortProtocol(reader, loop=loop)
    transport, _ = await serial_asyncio_fast.create_serial_connection(
        loop,
        lambda: protocol,
        url=cfg.port,
        baudrate=cfg.baudrate,
        bytesize=cfg.bytesize,
        parity=cfg.parity,
        stopbits=cfg.stopbits,
        exclusive=True,  # two readers would split the scans between them
    )
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop), protocol


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


def _close_when_opened(opening: asyncio.Future[_Port]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result()[1].close()
