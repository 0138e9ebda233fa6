"""The one module that talks to pymodbus: reads and writes with Modbus faults sorted by meaning.

pymodbus 3.16 returns exception responses instead of raising, raises its own exceptions for
timeouts and lost connections, and would reconnect on its own schedule. The driver needs three
outcomes instead: data; ``DeviceError`` (the device answered but refused: a wrong map entry or a
busy PLC, the link is fine); ``LinkDown`` (nobody answers: mark down, back off, reconnect on *our*
schedule with jitter); ``BadReply`` (the device answered out of shape: a non-compliant device
or gateway; the link is fine).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from drivers.modbus.config import ModbusConfig, Table

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


class ModbusLink:
    """One connection (TCP socket or serial port) to one device id."""

    def __init__(self, config: ModbusConfig) -> None:
        self._config = config
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient
        # reconnect_delay=0: pymodbus must not reconnect behind our back; run() owns retries.
        if config.host is not None:
            self._client = AsyncModbusTcpClient(
                config.host,
                port=config.port,
                timeout=config.timeout,
                retries=config.retries,
                reconnect_delay=0,
            )
        else:
            assert config.serial_port is not None
            self._client = AsyncModbusSerialClient(
                config.serial_port,
                framer=FramerType.RTU,
                baudrate=config.baudrate,
                bytesize=config.bytesize,
                parity=config.parity,
                stopbits=config.stopbits,
                timeout=config.timeout,
                retries=config.retries,
                reconnect_delay=0,
            )
        # Our own bound on top of pymodbus's: a wedged transport must not stall a poll forever.
        self._bound = config.timeout * (config.retries + 1) + 1.0

    async def open(self) -> None:
        """Connect (or open the serial port); ``LinkDown`` if that fails."""
        try:
            async with asyncio.timeout(self._bound):
                connected = await self._client.connect()
        except (TimeoutError, OSError, ModbusException) as exc:
            raise LinkDown(f"cannot connect to {self._config.transport}: {_why(exc)}") from exc
        if not connected:
            raise LinkDown(f"cannot connect to {self._config.transport}")

    def close(self) -> None:
        """Drop the connection; safe to call twice."""
        self._client.close()

    async def read(self, table: Table, start: int, count: int) -> list[int]:
        """Registers, or bits as 0/1, with busy answers retried."""
        label = f"{table} {start}+{count}"
        unit = self._config.unit
        client = self._client
        reader = {
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
        }[table]

        def call() -> Awaitable[Any]:
            return reader(start, count=count, device_id=unit)

        attempt = 0
        while True:
            response = await self._execute(call, label)
            code = _exception_code(response)
            if code is None:
                return _values(response, table, count, label)
            if code not in BUSY_CODES or attempt >= self._config.busy_retries:
                self._refused(code, label)
            attempt += 1
            await asyncio.sleep(self._config.busy_delay * attempt)

    async def write(self, table: Table, address: int, value: int) -> None:
        """Write one coil or holding register."""
        label = f"write {table} {address}"
        unit = self._config.unit
        client = self._client
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

    async def _execute(self, call: Callable[[], Awaitable[Any]], label: str) -> Any:  # noqa: ANN401
        # The call is made inside the try: pymodbus raises "not connected" before awaiting.
        try:
            async with asyncio.timeout(self._bound):
                return await call()
        except (TimeoutError, OSError, ModbusException) as exc:
            raise LinkDown(
                f"no answer to {label} from unit {self._config.unit}: {_why(exc)}"
            ) from exc

    def _refused(self, code: int, label: str) -> NoReturn:
        if code in GATEWAY_CODES:
            raise LinkDown(str(DeviceError(code, label)))
        raise DeviceError(code, label)


def _values(response: Any, table: Table, count: int, label: str) -> list[int]:  # noqa: ANN401
    """The reply's values, after checking it holds what was asked for: ``BadReply`` if not.

    pymodbus does not check counts. Bits come padded to whole bytes, so a reply may carry up to
    7 more bits than asked for, never fewer; registers come exactly.
    """
    if table in ("coil", "discrete"):
        bits = list(getattr(response, "bits", None) or [])
        if not count <= len(bits) < count + 8:
            raise BadReply(f"bad reply to {label}: {len(bits)} bits")
        return [int(bit) for bit in bits[:count]]
    registers = [int(word) for word in getattr(response, "registers", None) or []]
    if len(registers) != count:
        raise BadReply(f"bad reply to {label}: {len(registers)} registers")
    return registers


def _exception_code(response: Any) -> int | None:  # noqa: ANN401 - pymodbus's PDU
    if response is None or not response.isError():
        return None
    return int(getattr(response, "exception_code", 4) or 4)


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).removeprefix("Modbus Error: ")
    return text or type(exc).__name__
