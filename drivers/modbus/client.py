"""Reads and writes with Modbus faults sorted by meaning (TCP: tcp.py; RTU: pymodbus).

pymodbus is imported only when a link to an RTU device opens: Modbus TCP runs on our own
channel, and the library costs ~2.5 MB of a daemon's idle RSS that has no serial device
(docs/performance.md). ``check-config`` reports an RTU device on a box without it
(``ModbusConfig``), and such a link is down with the same reason, never a crash.

pymodbus 3.16 returns exception responses instead of raising, raises its own exceptions for
timeouts and lost connections, and would reconnect on its own schedule. The driver needs three
outcomes instead: data; ``DeviceError`` (the device answered but refused: a wrong map entry or a
busy PLC, the link is fine); ``LinkDown`` (nobody answers: mark down, back off, reconnect on *our*
schedule with jitter); ``BadReply`` (the device answered out of shape: a non-compliant device
or gateway; the link is fine).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

from drivers.modbus.config import BIT_TABLES, RTU_LIBRARY_MISSING, ModbusConfig, Table
from drivers.modbus.tcp import NoAnswer, TcpChannel

if TYPE_CHECKING:
    from pymodbus.client import AsyncModbusSerialClient

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge (busy)",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}
BUSY_CODES = (5, 6)
GATEWAY_CODES = (10, 11)


class LinkDown(Exception):  # noqa: N818 - a state, not an error the caller can fix
    """The device or the link to it is not answering; the session must end."""


class DeviceError(Exception):
    """The device answered with a Modbus exception response."""

    def __init__(self, code: int, request: str) -> None:
        self.code = code
        name = EXCEPTION_NAMES.get(code, "unknown")
        super().__init__(f"exception 0x{code:02X} ({name}) for {request}")


class BadReply(Exception):  # noqa: N818 - a device fault, named like DeviceError's peers
    """The device answered, but not in the shape asked for (too few bits or registers)."""


_FUNCTION: dict[Table, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
_READ = struct.Struct(">BHH")
"""A read request's PDU: function, start, count (and a write's: function, address, value)."""


class ModbusLink:
    """One connection (TCP socket or serial port) to one device id.

    Reads return the answer's data bytes as the device sent them: registers big-endian, two
    bytes each; bits packed eight to a byte, least significant first (the Modbus layout), so
    the caller can compare them with the previous poll's before decoding anything.
    Modbus TCP goes through our own ``TcpChannel``; Modbus RTU through pymodbus's client.
    """

    def __init__(self, config: ModbusConfig) -> None:
        self._config = config
        self._tcp: TcpChannel | None = None
        self._serial: AsyncModbusSerialClient | None = None
        self._faults: tuple[type[Exception], ...] = (TimeoutError, OSError)
        """What a call that got no answer raises: pymodbus's own exception joins for RTU."""
        # Our own bound on top of pymodbus's: a wedged transport must not stall a poll forever.
        self._bound = config.timeout * (config.retries + 1) + 1.0

    async def open(self) -> None:
        """Connect (or open the serial port); ``LinkDown`` if that fails."""
        cfg = self._config
        if cfg.host is None:
            await self._open_serial()
            return
        channel = TcpChannel(cfg.unit, cfg.timeout, cfg.retries)
        try:
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(cfg.timeout):
                await loop.create_connection(lambda: channel, cfg.host, cfg.port)
        except (TimeoutError, OSError) as exc:
            raise LinkDown(f"cannot connect to {cfg.transport}: {_why(exc)}") from exc
        self._tcp = channel

    async def _open_serial(self) -> None:
        cfg = self._config
        assert cfg.serial_port is not None
        try:
            from pymodbus.client import AsyncModbusSerialClient  # noqa: PLC0415 - RTU only
            from pymodbus.exceptions import ModbusException  # noqa: PLC0415
            from pymodbus.framer import FramerType  # noqa: PLC0415
        except ImportError as exc:
            raise LinkDown(f"cannot open {cfg.transport}: {RTU_LIBRARY_MISSING} ({exc})") from exc
        self._faults = (TimeoutError, OSError, ModbusException)
        # reconnect_delay=0: pymodbus must not reconnect behind our back; run() owns retries.
        self._serial = AsyncModbusSerialClient(
            cfg.serial_port,
            framer=FramerType.RTU,
            baudrate=cfg.baudrate,
            bytesize=cfg.bytesize,
            parity=cfg.parity,
            stopbits=cfg.stopbits,
            timeout=cfg.timeout,
            retries=cfg.retries,
            reconnect_delay=0,
        )
        try:
            async with asyncio.timeout(self._bound):
                connected = await self._serial.connect()
        except self._faults as exc:
            raise LinkDown(f"cannot connect to {cfg.transport}: {_why(exc)}") from exc
        if not connected:
            raise LinkDown(f"cannot connect to {cfg.transport}")

    def close(self) -> None:
        """Drop the connection; safe to call twice."""
        if self._tcp is not None:
            self._tcp.close()
        if self._serial is not None:
            self._serial.close()

    async def read(self, table: Table, start: int, count: int) -> bytes:
        """The answer's data: ``2 * count`` bytes of registers or ``ceil(count / 8)`` of bits.

        Busy answers are retried.
        """
        attempt = 0
        while True:
            answer = await self._read_once(table, start, count)
            if isinstance(answer, bytes):
                return answer
            if answer not in BUSY_CODES or attempt >= self._config.busy_retries:
                self._refused(answer, f"{table} {start}+{count}")
            attempt += 1
            await asyncio.sleep(self._config.busy_delay * attempt)

    async def write(self, table: Table, address: int, value: int) -> None:
        """Write one coil or holding register."""
        label = f"write {table} {address}"
        if self._tcp is not None:
            if table == "coil":
                pdu = _READ.pack(5, address, 0xFF00 if value else 0)
            else:
                pdu = _READ.pack(6, address, value)
            answer = await self._exchange(pdu, label)
            code = None if answer[0] == pdu[0] else _exception(answer, pdu[0], label)
        else:
            client = self._serial
            assert client is not None
            unit = self._config.unit
            if table == "coil":
                response = await self._execute(
                    lambda: client.write_coil(address, bool(value), device_id=unit), label
                )
            else:
                response = await self._execute(
                    lambda: client.write_register(address, value, device_id=unit), label
                )
            code = _exception_code(response)
        if code is not None:
            self._refused(code, label)

    async def _read_once(self, table: Table, start: int, count: int) -> bytes | int:
        """The data bytes, or the exception code the device answered with."""
        bits = table in BIT_TABLES
        size = (count + 7) >> 3 if bits else count << 1
        if self._tcp is not None:
            function = _FUNCTION[table]
            answer = await self._exchange(_READ.pack(function, start, count), table, start, count)
            if answer[0] != function:
                return _exception(answer, function, f"{table} {start}+{count}")
            data = answer[2:]
            if len(answer) >= 2 and answer[1] == size == len(data):
                return data
            raise BadReply(_short(table, start, count, len(data), bits))
        return self._serial_read(await self._serial_call(table, start, count), table, start, count)

    async def _exchange(
        self, pdu: bytes, table: str, start: int | None = None, count: int = 0
    ) -> bytes:
        assert self._tcp is not None
        try:
            return await self._tcp.exchange(pdu)
        except NoAnswer as exc:
            label = table if start is None else f"{table} {start}+{count}"
            raise LinkDown(f"no answer to {label} from unit {self._config.unit}: {exc}") from exc

    async def _serial_call(self, table: Table, start: int, count: int) -> Any:  # noqa: ANN401
        client = self._serial
        assert client is not None
        reader = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
        }[table]
        unit = self._config.unit
        return await self._execute(
            lambda: reader(start, count=count, device_id=unit), f"{table} {start}+{count}"
        )

    def _serial_read(
        self,
        response: Any,  # noqa: ANN401 - pymodbus's PDU
        table: Table,
        start: int,
        count: int,
    ) -> bytes | int:
        code = _exception_code(response)
        if code is not None:
            return code
        return _packed(response, table, start, count)

    async def _execute(self, call: Callable[[], Awaitable[Any]], label: str) -> Any:  # noqa: ANN401
        # The call is made inside the try: pymodbus raises "not connected" before awaiting.
        try:
            async with asyncio.timeout(self._bound):
                return await call()
        except self._faults as exc:
            raise LinkDown(
                f"no answer to {label} from unit {self._config.unit}: {_why(exc)}"
            ) from exc

    def _refused(self, code: int, label: str) -> NoReturn:
        if code in GATEWAY_CODES:
            raise LinkDown(str(DeviceError(code, label)))
        raise DeviceError(code, label)


def _exception(answer: bytes, function: int, label: str) -> int:
    """The code of an exception answer to ``function``; ``BadReply`` for any other answer."""
    if answer[0] == function | 0x80 and len(answer) == 2:
        return answer[1]
    raise BadReply(f"bad reply to {label}: function 0x{answer[0]:02X}, {len(answer)} bytes")


def _short(table: str, start: int, count: int, size: int, bits: bool) -> str:
    what = f"{size * 8} bits" if bits else f"{size // 2} registers"
    return f"bad reply to {table} {start}+{count}: {what}"


def _packed(response: Any, table: Table, start: int, count: int) -> bytes:  # noqa: ANN401
    """The reply as the bytes a device sent, after checking it holds what was asked for.

    pymodbus does not check counts. Bits come padded to whole bytes, so a reply may carry up to
    7 more bits than asked for, never fewer; registers come exactly.
    """
    label = f"{table} {start}+{count}"
    if table in BIT_TABLES:
        bits = list(getattr(response, "bits", None) or [])
        if not count <= len(bits) < count + 8:
            raise BadReply(f"bad reply to {label}: {len(bits)} bits")
        packed = bytearray((count + 7) >> 3)
        for index, bit in enumerate(bits[:count]):
            if bit:
                packed[index >> 3] |= 1 << (index & 7)
        return bytes(packed)
    registers = [int(word) for word in getattr(response, "registers", None) or []]
    if len(registers) != count:
        raise BadReply(f"bad reply to {label}: {len(registers)} registers")
    return struct.pack(f">{count}H", *registers)


def _exception_code(response: Any) -> int | None:  # noqa: ANN401 - pymodbus's PDU
    if response is None or not response.isError():
        return None
    return int(getattr(response, "exception_code", 4) or 4)


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).removeprefix("Modbus Error: ")
    return text or type(exc).__name__
