"""CPU cost of polling 20 conveyors x 100 registers at 10 Hz with deadband on, as one JSON object.

The simulators run in a child process so their CPU is not counted; the drivers run in this
process with a counting ``emit`` (the buffer and MQTT are benchmarked elsewhere). CPU is
``time.process_time`` over a fixed wall-clock window after a warm-up.

    .venv/bin/python bench/modbus_poll.py [--devices 20] [--registers 100] [--rate 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pymodbus

from bench import logs_to_stderr
from drivers.base import DeviceEvent, StoredEvent
from drivers.modbus.config import ModbusConfig
from drivers.modbus.driver import ModbusDriver

ROOT = Path(__file__).resolve().parent.parent


def start_simulators(devices: int) -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.conveyor", "--tcp", "0", "--devices", str(devices)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    ports: list[int] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while len(ports) < devices and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        match = re.search(r":(\d+)$", line.strip())
        if match:
            ports.append(int(match[1]))
    if len(ports) < devices:
        proc.kill()
        raise SystemExit(f"simulators did not start ({len(ports)}/{devices})")
    return proc, ports


def device_config(index: int, port: int, registers: int, rate: float) -> ModbusConfig:
    points = [
        {"name": f"r{a}", "table": "input", "address": a, "scale": 0.01, "deadband_percent": 1.0}
        for a in range(registers)
    ]
    return ModbusConfig.model_validate(
        {
            "id": f"conveyor-{index:02d}",
            "driver": "modbus",
            "host": "127.0.0.1",
            "port": port,
            "interval": 1 / rate,
            "heartbeat": 60.0,
            "timeout": 1.0,
            "points": points,
        }
    )


async def measure(args: argparse.Namespace, ports: list[int]) -> dict[str, object]:
    events = {"reading": 0, "alarm": 0}

    async def emit(event: DeviceEvent) -> StoredEvent:
        events["alarm" if event.type.endswith("alarm.v1") else "reading"] += 1
        return StoredEvent("x", "d", 1, "t", event.type)

    drivers = [
        ModbusDriver(
            device_config(i, port, args.registers, args.rate),
            emit=emit,
            report_status=lambda _up, _detail: None,
        )
        for i, port in enumerate(ports)
    ]
    tasks = [asyncio.create_task(d.run()) for d in drivers]
    try:
        await asyncio.sleep(args.warmup)

        def totals() -> tuple[int, int]:
            counters = [d.health().counters for d in drivers]
            return sum(c.get("reads", 0) for c in counters), sum(
                c.get("overruns", 0) for c in counters
            )

        reads0, overruns0 = totals()
        events0 = dict(events)
        wall0, cpu0 = time.monotonic(), time.process_time()
        await asyncio.sleep(args.seconds)
        wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
        reads, overruns = totals()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for driver in drivers:
            await driver.stop()
    polls = reads - reads0
    values = polls * args.registers
    return {
        "benchmark": "modbus_poll",
        "devices": len(ports),
        "registers_per_device": args.registers,
        "rate_hz": args.rate,
        "deadband": "1% per register",
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "cpu_percent_one_core": round(100 * cpu / wall, 1),
        "target_cpu_percent": 15,
        "polls_per_s": round(polls / wall, 1),
        "expected_polls_per_s": len(ports) * args.rate,
        "values_per_s": round(values / wall),
        "values_per_cpu_s": round(values / cpu) if cpu else None,
        "reading_events_per_s": round((events["reading"] - events0["reading"]) / wall, 1),
        "overruns": overruns - overruns0,
        "python": sys.version.split()[0],
        "pymodbus": pymodbus.__version__,
        "thingsboard_gateway": "not measured (see the issue note)",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--registers", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    proc, ports = start_simulators(args.devices)
    try:
        result = asyncio.run(measure(args, ports))
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    logs_to_stderr()
    raise SystemExit(main())
