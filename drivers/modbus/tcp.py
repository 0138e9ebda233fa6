"""Modbus TCP spoken directly: one asyncio Protocol per connection, a request and its answer.

A Modbus TCP read is a 12-byte request (the MBAP header: transaction id, protocol 0, length,
unit; then function, start, count) and its answer is the same header, the function, a byte
count and the data. pymodbus 3.16's async client spends about 50 µs more CPU than this per
read of 100 registers (a request and a response object, a framer pass, a ``wait_for`` per
attempt, the registers unpacked one ``struct.unpack`` at a time), and this hands back the
answer's data as bytes, so the driver can compare it with the previous poll's before decoding
anything (see ``drivers/modbus/image.py``). pymodbus still serves Modbus RTU, where the line,
not the Python, is the bottleneck.

Requests are serialised per connection (one in flight; many devices cannot take more), a
request is re-sent ``retries`` times with the same transaction id after ``timeout`` without an
answer, and an answer is taken only when its transaction id (and unit, unless the request went
to unit 0) is the one awaited: a late answer to a request given up on is dropped. A stream that
cannot be framed (protocol id not 0, an impossible length) ends the connection, as does its loss.
"""

from __future__ import annotations

import asyncio
import struct

MBAP = struct.Struct(">HHHB")
"""transaction id, protocol id (0), length of what follows (unit + PDU), unit id"""
MAX_PDU = 253


class NoAnswer(Exception):  # noqa: N818 - a state, like client.LinkDown
    """No answer within the timeout after every retry, or the connection is gone."""


def frame(tid: int, unit: int, pdu: bytes) -> bytes:
    """The ADU for ``pdu``: MBAP header, then the PDU."""
    return MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu


class TcpChannel(asyncio.Protocol):
    """One Modbus TCP connection to one unit; ``exchange`` sends a PDU and returns the answer's."""

    def __init__(self, unit: int, timeout: float, retries: int) -> None:
        self._unit = unit
        self._timeout = timeout
        self._attempts = retries + 1
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._waiter: asyncio.Future[bytes] | None = None
        self._expected = 0
        self._tid = 0
        self._lock = asyncio.Lock()
        self._gone: str | None = "not connected"

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Connected: requests may go out."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._gone = None

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket closed or failed: the waiting request (if any) fails at once."""
        self._end(f"connection lost: {exc}" if exc else "connection closed by the device")

    def data_received(self, data: bytes) -> None:
        """Frame answers out of the stream; hand the awaited one to its request."""
        buffer = self._buffer + data if self._buffer else data
        size = len(buffer)
        at = 0
        while size - at >= 8:  # header and function code
            tid, protocol, length, unit = MBAP.unpack_from(buffer, at)
            if protocol != 0 or not 2 <= length <= MAX_PDU + 1:
                self._end(f"cannot frame the answer (protocol {protocol}, length {length})")
                return
            end = at + 6 + length
            if end > size:
                break
            waiter = self._waiter
            if (
                waiter is not None
                and tid == self._expected
                and (unit == self._unit or not self._unit)
                and not waiter.done()
            ):
                waiter.set_result(buffer[at + 7 : end])
            at = end  # anything else: a late answer to a request given up on, or not ours
        self._buffer = buffer[at:] if at < size else b""

    # requests

    async def exchange(self, pdu: bytes) -> bytes:
        """Send ``pdu`` and return the answer's PDU; ``NoAnswer`` after every retry timed out."""
        async with self._lock:  # a feedback write may come while a poll waits
            self._tid = self._tid % 0xFFFF + 1
            request = frame(self._tid, self._unit, pdu)
            loop = asyncio.get_running_loop()
            for _attempt in range(self._attempts):
                if self._gone is not None or self._transport is None:
                    raise NoAnswer(self._gone or "not connected")
                waiter: asyncio.Future[bytes] = loop.create_future()
                self._waiter, self._expected = waiter, self._tid
                timer = loop.call_later(self._timeout, _expire, waiter)
                self._transport.write(request)
                try:
                    return await waiter
                except TimeoutError:
                    continue
                finally:
                    timer.cancel()
                    self._waiter = None
            raise NoAnswer("timed out")

    def close(self) -> None:
        """Drop the connection; safe to call twice."""
        self._end("closed")
        if self._transport is not None:
            self._transport.abort()  # nothing of ours is worth flushing to a device we leave
            self._transport = None

    def _end(self, why: str) -> None:
        if self._gone is None:
            self._gone = why
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(NoAnswer(why))
        if self._transport is not None and why.startswith("cannot frame"):
            self._transport.abort()


def _expire(waiter: asyncio.Future[bytes]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
