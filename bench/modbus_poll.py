"""CPU cost of polling 20 conveyors x 100 registers at 10 Hz with deadband on, as one JSON object.

The simulators run in a child process so their CPU is not counted; the drivers run in this
process with a counting ``emit`` (the buffer and MQTT are benchmarked elsewhere). CPU is
``time.process_time`` (user + system) over ``--repeat`` fixed wall-clock windows after a
warm-up; the headline figures are the windows' medians. The simulators change ``--churn`` of
their spare registers (10-127) every 100 ms, on top of the live ones (0-9): with the defaults
about 10-12 % of the registers read change between two polls.

    .venv/bin/python -m bench.modbus_poll [--devices 20] [--registers 100] [--rate 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pymodbus

from bench import logs_to_stderr
from drivers.base import DeviceEvent, StoredEvent
from drivers.modbus.config import ModbusConfig
from drivers.modbus.driver import ModbusDriver

ROOT = Path(__file__).resolve().parent.parent


def start_simulators(devices: int, churn: float) -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen(
        [
            sys.executable,
            *("-m", "simulators.conveyor", "--tcp", "0"),
            *("--devices", str(devices), "--churn", str(churn)),
        ],
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

    def totals() -> tuple[int, int]:
        counters = [d.health().counters for d in drivers]
        return sum(c.get("reads", 0) for c in counters), sum(c.get("overruns", 0) for c in counters)

    windows: list[dict[str, float]] = []
    tasks = [asyncio.create_task(d.run()) for d in drivers]
    try:
        await asyncio.sleep(args.warmup)
        for _ in range(args.repeat):
            reads0, overruns0 = totals()
            readings0 = events["reading"]
            times0 = os.times()
            wall0, cpu0 = time.monotonic(), time.process_time()
            await asyncio.sleep(args.seconds)
            wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
            times = os.times()
            reads, overruns = totals()
            windows.append(
                {
                    "wall": wall,
                    "cpu": cpu,
                    "user": times.user - times0.user,
                    "system": times.system - times0.system,
                    "polls": reads - reads0,
                    "overruns": overruns - overruns0,
                    "readings": events["reading"] - readings0,
                }
            )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for driver in drivers:
            await driver.stop()
    per_cpu = [w["polls"] * args.registers / w["cpu"] for w in windows if w["cpu"]]
    mid = sorted(windows, key=lambda w: w["polls"] * args.registers / (w["cpu"] or 1e-9))[
        len(windows) // 2
    ]
    wall, cpu = mid["wall"], mid["cpu"]
    return {
        "benchmark": "modbus_poll",
        "devices": len(ports),
        "registers_per_device": args.registers,
        "rate_hz": args.rate,
        "deadband": "1% per register",
        "churn_per_100ms": args.churn,
        "windows": len(windows),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "cpu_user_s": round(mid["user"], 3),
        "cpu_system_s": round(mid["system"], 3),
        "cpu_percent_one_core": round(100 * cpu / wall, 1),
        "cpu_us_per_poll": round(1e6 * cpu / mid["polls"], 1) if mid["polls"] else None,
        "polls_per_s": round(mid["polls"] / wall, 1),
        "expected_polls_per_s": len(ports) * args.rate,
        "values_per_s": round(mid["polls"] * args.registers / wall),
        "values_per_cpu_s": round(statistics.median(per_cpu)) if per_cpu else None,
        "values_per_cpu_s_windows": [round(v) for v in per_cpu],
        "target_values_per_cpu_s": 300_000,
        "reading_events_per_s": round(mid["readings"] / wall, 1),
        "overruns": sum(int(w["overruns"]) for w in windows),
        "overruns_per_window": [int(w["overruns"]) for w in windows],
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "box": args.box,
        "python": sys.version.split()[0],
        "pymodbus": pymodbus.__version__,
        "thingsboard_gateway": "not measured (--peer measures it)",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--registers", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=5.0, help="per window")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3, help="measured windows (median)")
    parser.add_argument(
        "--churn", type=float, default=0.1, help="spare registers changed per 100 ms (fraction)"
    )
    parser.add_argument(
        "--box", default="shared", help="said in the JSON: 'shared' when other work runs on it"
    )
    parser.add_argument(
        "--peer",
        action="store_true",
        help="also measure ThingsBoard IoT Gateway 3.8.5 on the same load (bench/.peer-venv)",
    )
    parser.add_argument("--peer-warmup", type=float, default=10.0, help="its start-up, seconds")
    args = parser.parse_args()
    proc, ports = start_simulators(args.devices, args.churn)
    try:
        result = asyncio.run(measure(args, ports))
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()
    if args.peer:
        result |= side_by_side(args, result)
    print(json.dumps(result))
    return 0


def side_by_side(args: argparse.Namespace, ours: dict[str, object]) -> dict[str, object]:
    """The peer's figures on the same load, and our values per CPU-second over its."""
    from bench.modbus_peer import measure_peer  # noqa: PLC0415 - only with --peer

    with tempfile.TemporaryDirectory(prefix="modbus-peer-") as tmp:
        peer = asyncio.run(measure_peer(args, Path(tmp)))
    busy, idle = peer["busy"], peer["idle"]
    mine = ours["values_per_cpu_s"]
    assert isinstance(mine, int)
    out: dict[str, object] = {"thingsboard_gateway": "3.8.5 (pymodbus 3.9.2)", "peer": peer}
    if busy.get("values_per_cpu_s"):
        out["ratio_to_peer"] = round(mine / busy["values_per_cpu_s"], 2)
        working = busy["cpu_s"] - idle["cpu_s"] * busy["wall_s"] / idle["wall_s"]
        if working > 0:
            served = busy["polls_per_s"] * busy["wall_s"] * args.registers
            out["ratio_to_peer_idle_removed"] = round(mine / (served / working), 2)
    return out


if __name__ == "__main__":
    logs_to_stderr()
    raise SystemExit(main())
