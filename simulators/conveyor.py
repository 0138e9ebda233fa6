"""A simulated conveyor line behind a pymodbus server: Modbus TCP, or RTU over a pty cable.

The register map and the physics are in ``simulators.conveyor_model``. The server is pymodbus
3.16's own, fed through its ``SimDevice``/``SimData`` API: every request runs our ``action``
hook, which advances the model to "now" and copies its registers in, so values move in real time
without a background task. Faults are scriptable while it runs: ``model.set_fault("jam", True)``,
``silent = True`` (the device stops answering: requests are read, answers never sent), and
``fail(code, ...)`` (exception responses such as 02 illegal address or 06 busy),
``dropped_replies = n`` (the next n answers never sent),
``short_bit_replies = n`` (the next n bit reads answered one byte short, RTU with a valid CRC) and
``unframed_replies = n`` (Modbus TCP: the next n answers with a protocol id no client frames).

Runnable alone: ``python -m simulators.conveyor --tcp 5020`` or ``--rtu-link /tmp/ttyConveyor``;
``--devices 20`` serves 20 conveyors on consecutive TCP ports (the benchmark's load).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self, cast

from pymodbus.constants import ExcCodes
from pymodbus.framer.rtu import FramerRTU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.conveyor_model import SIZES, ConveyorModel
from simulators.conveyor_pty import PtyCable

_TABLE_OF_FC = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 4: "input"}
_BIT_TABLES = ("coil", "discrete")


@dataclass
class FailRule:
    """Answer matching requests with exception ``code``, ``times`` times (None: until removed)."""

    code: int
    table: str | None = None
    address: int | None = None
    times: int | None = None

    def matches(self, table: str, address: int, count: int) -> bool:
        """Whether a request for ``count`` items from ``address`` of ``table`` hits this rule."""
        if self.table is not None and self.table != table:
            return False
        return self.address is None or address <= self.address < address + count


class ConveyorSimulator:
    """One conveyor (Modbus device id ``unit``) on TCP or RTU; use as an async context manager."""

    def __init__(
        self,
        *,
        unit: int = 1,
        model: ConveyorModel | None = None,
        tcp_port: int | None = None,
        rtu_link: Path | None = None,
        baudrate: int = 115200,
    ) -> None:
        if (tcp_port is None) == (rtu_link is None):
            raise ValueError("give tcp_port (0 picks a free one) or rtu_link, exactly one")
        self.unit = unit
        self.model = model or ConveyorModel()
        self.silent = False
        self.short_bit_replies = 0
        self.unframed_replies = 0
        self.dropped_replies = 0
        """Swallow this many of the next answers (a lost packet), then answer again."""
        """Modbus TCP: send this many of the next answers with a protocol id of 1, which no
        client can frame (a device or gateway out of step, or not speaking Modbus TCP)."""
        """Modbus TCP: answer this many of the next coil / discrete-input reads one data byte
        short (fewer bits than asked for), as a non-compliant device or gateway does."""
        self.rules: list[FailRule] = []
        self.writes: list[tuple[str, int, list[int]]] = []
        self.requests = 0
        self.port = tcp_port or 0
        self._rtu_link = rtu_link
        self._baudrate = baudrate
        self._cable: PtyCable | None = None
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._last = time.monotonic()

    @property
    def link(self) -> Path:
        """The RTU device path for clients (a symlink to a pty)."""
        assert self._rtu_link is not None
        return self._rtu_link

    def fail(
        self,
        code: int,
        *,
        table: str | None = None,
        address: int | None = None,
        times: int | None = None,
    ) -> FailRule:
        """Script exception responses; remove the returned rule from ``rules`` to stop them."""
        rule = FailRule(code, table, address, times)
        self.rules.append(rule)
        return rule

    async def start(self) -> None:
        """Build the pymodbus device and start serving."""
        device = SimDevice(
            id=self.unit,
            simdata=(
                [SimData(0, count=SIZES["coil"], values=False, datatype=DataType.BITS)],
                [SimData(0, count=SIZES["discrete"], values=False, datatype=DataType.BITS)],
                [SimData(0, count=SIZES["holding"], values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=SIZES["input"], values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._action,
        )
        if self._rtu_link is not None:
            self._cable = PtyCable(self._rtu_link)
            self._cable.open()
            self._server = ModbusSerialServer(
                device,
                port=self._cable.device_path,
                baudrate=self._baudrate,
                trace_packet=self._trace,
            )
        else:
            self._server = ModbusTcpServer(
                device, address=("127.0.0.1", self.port), trace_packet=self._trace
            )
        await self._server.serve_forever(background=True)
        if self._rtu_link is None:
            listener = cast("asyncio.Server", self._server.transport)
            self.port = listener.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop serving and remove the pty cable."""
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
        if self._cable is not None:
            self._cable.close()
            self._cable = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """The packet hook of pymodbus: silence swallows answers, a fault cuts bit replies."""
        if not sending:
            return data
        if self.silent:
            return b""
        if self.dropped_replies:
            self.dropped_replies -= 1
            return b""
        if self.unframed_replies and self._rtu_link is None:
            self.unframed_replies -= 1
            return data[:2] + b"\x00\x01" + data[4:]
        if self.short_bit_replies:
            return self._short_bit_reply(data)
        return data

    def _short_bit_reply(self, adu: bytes) -> bytes:
        """A TCP read-bits reply (MBAP header, unit, function, byte count, bits) one byte short."""
        if self._rtu_link is not None:
            return self._short_bit_reply_rtu(adu)
        unit, function, count = adu[6:9]
        if function not in (1, 2) or count == 0:
            return adu
        self.short_bit_replies -= 1
        pdu = bytes([unit, function, count - 1]) + adu[9 : 9 + count - 1]
        return adu[:4] + len(pdu).to_bytes(2, "big") + pdu

    def _short_bit_reply_rtu(self, adu: bytes) -> bytes:
        """An RTU read-bits reply (unit, function, byte count, bits, CRC) one byte short.

        The CRC is that of what is sent: a well-formed frame holding fewer bits than asked for.
        """
        unit, function, count = adu[:3]
        if function not in (1, 2) or count == 0:
            return adu
        self.short_bit_replies -= 1
        frame = bytes([unit, function, count - 1]) + adu[3 : 3 + count - 1]
        return frame + FramerRTU.compute_CRC(frame).to_bytes(2, "big")

    async def _action(  # noqa: PLR0917 - pymodbus's SimAction signature
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Every request lands here before pymodbus reads or writes the block."""
        self.requests += 1
        table = _TABLE_OF_FC.get(function_code, "holding")
        span = count * 16 if table in _BIT_TABLES else count
        for rule in list(self.rules):
            if rule.matches(table, address, span):
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self.rules.remove(rule)
                return ExcCodes(rule.code)
        now = time.monotonic()
        self.model.advance(now - self._last)
        self._last = now
        if set_values is not None:
            values = [int(v) for v in set_values]
            self.writes.append((table, address, values))
            self.model.write(table, address, values)
        _fill(registers, start_address, self.model.tables[table], table in _BIT_TABLES)
        return None


def _fill(registers: list[int], start: int, image: list[int], bits: bool) -> None:
    """Copy a table image into pymodbus's block (16 bits per register for coils and inputs)."""
    if not bits:
        registers[: len(image) - start] = image[start:]
        return
    for index in range(len(image) // 16):
        chunk = image[index * 16 : index * 16 + 16]
        registers[index - start] = sum(bit << n for n, bit in enumerate(chunk))


async def _serve(args: argparse.Namespace) -> None:
    sims: list[ConveyorSimulator] = []
    if args.rtu_link:
        sims.append(ConveyorSimulator(unit=args.unit, rtu_link=Path(args.rtu_link)))
    else:
        for index in range(args.devices):
            port = args.tcp + index if args.tcp else 0
            model = ConveyorModel(seed=index, noise=args.noise, churn=args.churn)
            sims.append(ConveyorSimulator(unit=args.unit, model=model, tcp_port=port))
    async with contextlib.AsyncExitStack() as stack:
        for sim in sims:
            await stack.enter_async_context(sim)
            where = sim.link if args.rtu_link else f"127.0.0.1:{sim.port}"
            print(f"conveyor unit {sim.unit} on {where}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    """CLI: serve one conveyor on TCP or RTU, or ``--devices N`` on consecutive TCP ports."""
    parser = argparse.ArgumentParser(
        prog="python -m simulators.conveyor", description="Simulated Modbus conveyor line."
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", type=int, help="TCP port of the first device (0: free ports)")
    where.add_argument("--rtu-link", help="symlink to create for the RTU pty")
    parser.add_argument("--unit", type=int, default=1, help="Modbus device id")
    parser.add_argument("--devices", type=int, default=1, help="TCP only: how many conveyors")
    parser.add_argument("--noise", type=float, default=1.0, help="0 for flat signals")
    parser.add_argument(
        "--churn",
        type=float,
        default=0.0,
        help="fraction of the spare input registers (10-127) changed every 100 ms",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"conveyor simulator: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
