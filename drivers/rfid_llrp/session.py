"""One TCP connection to an LLRP reader, driven by asyncio.

This is our own small session rather than sllurp's ``LLRPClient`` state machine: that machine
raises from inside message handling on any unexpected response, only "panics" (logs) on error
statuses and then waits forever, knows nothing of GPI triggers or GPO writes, and matches
responses by state rather than by message id. Here every request is matched to its response by
message id, every failure is a ``SessionError`` carrying a reason a technician can read, and
sllurp is used for what it is good at: decoding messages and encoding parameters.

The read loop doubles as the keepalive watchdog: the reader is told to send a KEEPALIVE every
``keepalive_s``, so silence for three intervals means the link or the reader is gone, even when
TCP has not noticed (a pulled cable sends no FIN).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from drivers.rfid_llrp import messages
from drivers.rfid_llrp.decode import (
    MalformedMessageError,
    TagRead,
    connection_attempt,
    decode,
    notification_summary,
    status,
    tag_reads,
)
from drivers.rfid_llrp.framing import Framer, FramingError

_READ_SIZE = 256 * 1024
_MSG_ID_MAX = 0xFFFFFFFF
MAX_UNSENT = 256 * 1024
"""Bytes queued for the reader and not yet taken by the socket. Everything we send is small
(requests, GPO writes, KEEPALIVE_ACKs); a peer that lets this much pile up is not reading, and
answering its keepalives would grow our memory without bound."""

ReportFn = Callable[[list[TagRead]], None]
CountFn = Callable[[str, int], None]


class SessionError(Exception):
    """The session cannot continue; the text says why, for the device's status detail."""


class LlrpSession:
    """Framing, request/response by message id, keepalives and report dispatch."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        on_report: ReportFn,
        count: CountFn,
        idle_timeout: float,
        log: structlog.typing.FilteringBoundLogger,
        after_chunk: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_report = on_report
        self._count = count
        self._idle_timeout = idle_timeout
        self._log = log
        self._after_chunk = after_chunk
        self._framer = Framer()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._connected: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._malformed_burst = 0
        self._overflow: str | None = None
        self.closed_reason: str | None = None
        self.last_heard = -math.inf
        """Event-loop time at which the last bytes from the reader were handled: what it said
        up to then is known, anything since is not (it may be talking into a dead link, or we
        may not be reading because emits are backed up)."""

    def next_id(self) -> int:
        """A fresh message id; responses echo it."""
        return next(self._ids) & _MSG_ID_MAX

    def send(self, data: bytes) -> None:
        """Queue bytes for the reader (no response expected)."""
        if self.closed_reason is None and self._overflow is None:
            self._write(data)

    def _write(self, data: bytes) -> None:
        """Queue ``data``; drop the session if the reader has stopped taking what we send."""
        self._writer.write(data)
        unsent = self._writer.transport.get_write_buffer_size()
        if unsent > MAX_UNSENT and self._overflow is None:
            self._overflow = f"reader is not reading: {unsent} bytes unsent"
            self._count("write_overflow", 1)
            self._log.warning("llrp_reader_not_reading", unsent=unsent)
            self._writer.transport.abort()  # the pump ends on the EOF this gives

    async def request(
        self, build: Callable[[int], bytes], what: str, timeout: float
    ) -> dict[str, Any]:
        """Send one message and return its response's body; raise unless its status is Success."""
        if self.closed_reason is not None or self._overflow is not None:
            raise SessionError(self.closed_reason or self._overflow or "")
        msg_id = self.next_id()
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        try:
            self._write(build(msg_id))
            async with asyncio.timeout(timeout):
                await self._writer.drain()
                body = await future
        except TimeoutError:
            raise SessionError(
                f"{what}: no response from the reader within {timeout:g} s"
            ) from None
        except (OSError, ConnectionError) as exc:
            raise SessionError(f"{what}: {exc}") from None
        finally:
            self._pending.pop(msg_id, None)
        ok, text = status(body)
        if not ok:
            self._count("error_responses", 1)
            raise SessionError(f"{what} refused by the reader: {text}")
        return body

    async def wait_connected(self, timeout: float) -> None:
        """Wait for the reader's ConnectionAttemptEvent; readers allow one client at a time."""
        try:
            async with asyncio.timeout(timeout):
                result = await asyncio.shield(self._connected)
        except TimeoutError:
            raise SessionError(
                f"no connection event from the reader within {timeout:g} s (is it LLRP?)"
            ) from None
        if result != "Success":
            raise SessionError(f"reader refused the session: {result}")

    async def pump(self) -> str:
        """Read and dispatch until the connection ends; return why it ended."""
        reason = "reader closed the connection"
        try:
            while True:
                try:
                    async with asyncio.timeout(self._idle_timeout):
                        chunk = await self._reader.read(_READ_SIZE)
                except TimeoutError:
                    reason = f"keepalive lost: nothing from the reader for {self._idle_timeout:g} s"
                    self._count("keepalive_lost", 1)
                    break
                except (OSError, ConnectionError) as exc:
                    reason = f"connection lost: {exc}"
                    break
                if not chunk:
                    break
                try:
                    frames = self._framer.feed(chunk)
                except FramingError as exc:
                    for raw in exc.complete:  # whole before the bad header: reads that happened
                        self._dispatch(raw)
                    self._count("malformed", 1)
                    self._log.warning("llrp_stream_out_of_sync", error=str(exc))
                    reason = str(exc)
                    break
                for raw in frames:
                    self._dispatch(raw)
                self.last_heard = asyncio.get_running_loop().time()
                if self._overflow is not None:
                    break
                if self._after_chunk is not None:
                    await self._after_chunk()
        finally:
            reason = self._overflow or reason
            self._close(reason)
        return reason

    def _close(self, reason: str) -> None:
        self.closed_reason = reason
        for future in self._pending.values():
            if not future.done():
                future.set_exception(SessionError(reason))
        if not self._connected.done():
            self._connected.set_result(reason)

    def _malformed(self, error: str) -> None:
        """Count every bad message, log the first of each burst only."""
        self._count("malformed", 1)
        if not self._malformed_burst:
            self._log.warning("malformed_llrp_message", error=error)
        self._malformed_burst += 1

    def _good(self) -> None:
        if self._malformed_burst:
            self._log.info("malformed_burst_ended", dropped=self._malformed_burst)
            self._malformed_burst = 0

    def _dispatch(self, raw: bytes) -> None:
        try:
            name, msg_id, body = decode(raw)
            if name == "RO_ACCESS_REPORT":
                reads = tag_reads(body)
        except MalformedMessageError as exc:
            self._malformed(str(exc))
            return
        self._good()
        if name == "RO_ACCESS_REPORT":
            self._on_report(reads)
        elif name == "KEEPALIVE":
            self.send(messages.frame(messages.KEEPALIVE_ACK, msg_id))
        elif name == "READER_EVENT_NOTIFICATION":
            self._notification(body)
        else:
            future = self._pending.get(msg_id)
            if future is not None and not future.done():
                future.set_result(body)
            else:
                self._count("unexpected_messages", 1)
                self._log.debug("unexpected_llrp_message", name=name, id=msg_id)

    def _notification(self, body: dict[str, Any]) -> None:
        attempt = connection_attempt(body)
        if attempt is not None:
            if not self._connected.done():
                self._connected.set_result(attempt)
            return
        summary = notification_summary(body)
        if "AntennaEvent" in summary or "ReaderExceptionEvent" in summary:
            self._log.warning("reader_event", **_loggable(summary))
        else:
            self._log.debug("reader_event", **_loggable(summary))

    def close(self) -> None:
        """Close the socket (idempotent); the pump ends with EOF or an error."""
        self._writer.close()


def _loggable(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v for k, v in summary.items()
    }
