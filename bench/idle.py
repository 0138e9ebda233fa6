"""Idle footprint of the real daemon: RSS, CPU% and startup -> READY=1 (issue 8).

A gateway box spends most of its life waiting for the next scan, so this is what it costs
there: ``edge-gateway run`` as a child process (the same command systemd runs, via
``tests.support.GatewayProcess``) against a private Mosquitto, with three devices really
connected and nothing happening on them:

- ``dock-1``: a barcode-serial scanner on a pty (``simulators.scanner``), nobody scanning;
- ``conveyor-1``: Modbus TCP, polled once a second, against a still conveyor simulator
  (``noise = 0``: values do not change, so no readings beyond the first and the heartbeat);
- ``portal``: an LLRP reader (``simulators.llrp_reader``) inventorying an empty portal,
  so only keepalives.

The simulators run in this process; only the daemon's own process is measured. Startup is
timed from ``Popen`` to the ``READY=1`` datagram on our ``$NOTIFY_SOCKET`` (median of
``--starts`` starts; the first one also creates the buffer). The last start is then left to
settle for ``--warmup`` s and observed for ``--seconds`` s: RSS is ``VmRSS`` sampled once a
second (start, peak, end), CPU% is the daemon's utime + stime over the window (all threads,
``/proc/PID/stat``) divided by the wall time. Each start ends with SIGTERM and must exit 0.

Prints one JSON object; the daemon's logs go to its log file, ours to stderr.

    .venv/bin/python -m bench.idle [--seconds 60] [--starts 3] [--warmup 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import logs_to_stderr, private_broker
from simulators.broker import MosquittoBroker
from simulators.conveyor import ConveyorSimulator
from simulators.conveyor_model import ConveyorModel
from simulators.llrp_reader import LlrpReaderSimulator
from simulators.scanner import ScannerSimulator
from tests.support import (
    CONVEYOR_POINTS,
    GatewayProcess,
    scanner_device,
    wait_until,
    write_config,
)

TARGETS = {"rss_mb": 45.0, "cpu_percent": 1.0, "startup_to_ready_s": 1.5}
"""Issue 16 lowered the RSS target from issue 8's 60 MB."""
MODBUS_INTERVAL_S = 1.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Devices:
    """The three simulated devices the daemon talks to."""

    scanner: ScannerSimulator
    conveyor: ConveyorSimulator
    reader: LlrpReaderSimulator

    def connected(self) -> bool:
        """Each device sees the daemon: port open, Modbus requests served, inventory running."""
        return self.scanner.is_open and self.conveyor.requests > 0 and self.reader.active


@contextlib.asynccontextmanager
async def simulators(root: Path) -> AsyncIterator[Devices]:
    """Start the three simulators in this event loop, and stop them on the way out."""
    async with (
        ScannerSimulator(root / "scanner") as scanner,
        ConveyorSimulator(model=ConveyorModel(noise=0.0), tcp_port=0) as conveyor,
        LlrpReaderSimulator() as reader,
    ):
        yield Devices(scanner, conveyor, reader)


def device_entries(devices: Devices) -> list[dict[str, Any]]:
    """Config entries: the Modbus one last, so that CONVEYOR_POINTS attach to it."""
    return [
        scanner_device("dock-1", devices.scanner.link),
        {"id": "portal", "driver": "rfid-llrp", "host": "127.0.0.1", "port": devices.reader.port},
        {
            "id": "conveyor-1",
            "driver": "modbus",
            "host": "127.0.0.1",
            "port": devices.conveyor.port,
            "interval": MODBUS_INTERVAL_S,
        },
    ]


def gateway_config(root: Path, broker: MosquittoBroker, devices: Devices) -> Path:
    """The technician's TOML for the three devices."""
    path = write_config(
        root / "gateway.toml",
        mqtt_port=broker.port,
        state_dir=root / "state",
        devices=device_entries(devices),
    )
    path.write_text(path.read_text() + CONVEYOR_POINTS)
    return path


def notify_socket(path: Path) -> socket.socket:
    """What systemd listens on: an AF_UNIX datagram socket, non-blocking for the event loop."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock


async def wait_ready(sock: socket.socket, timeout: float) -> None:
    """Until a datagram carries READY=1 (STATUS=... may ride along in the same one)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        while b"READY=1" not in (await loop.sock_recv(sock, 4096)).split(b"\n"):
            pass


async def start(daemon: GatewayProcess, devices: Devices, notify_path: Path) -> float:
    """Launch the daemon; seconds from Popen to READY=1. Returns once every device is
    connected, so that each start is a whole one (and each stop has something to close)."""
    with notify_socket(notify_path) as sock:
        started = time.monotonic()
        daemon.start(env={"NOTIFY_SOCKET": str(notify_path)})
        await wait_ready(sock, timeout=30)
        ready_s = time.monotonic() - started
    await wait_until(devices.connected, timeout=30)
    return ready_s


async def stop(daemon: GatewayProcess) -> int:
    """SIGTERM and its exit code, waited for in a thread: the simulators must keep answering
    while the daemon says goodbye to them."""
    return await asyncio.to_thread(daemon.terminate)


def pid_of(daemon: GatewayProcess) -> int:
    """The daemon's pid (it is the Python process itself: no wrapper in between)."""
    assert daemon.process is not None
    return daemon.process.pid


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory line of /proc/PID/status in MiB: VmRSS, or its RssAnon / RssFile parts."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {field} for pid {pid}: not running?")


def cpu_s(pid: int) -> float:
    """utime + stime of the whole process (every thread), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def observe(pid: int, devices: Devices, seconds: float) -> dict[str, Any]:
    """RSS once a second and CPU over ``seconds`` of idling, plus proof the devices stayed on."""
    requests0, connections0 = devices.conveyor.requests, devices.reader.connections
    rss = [memory_mb(pid)]
    cpu0, wall0 = cpu_s(pid), time.monotonic()
    while (remaining := wall0 + seconds - time.monotonic()) > 0:
        await asyncio.sleep(min(1.0, remaining))
        rss.append(memory_mb(pid))
    cpu, wall = cpu_s(pid) - cpu0, time.monotonic() - wall0
    return {
        "window_s": round(wall, 1),
        "rss_mb": {"start": rss[0], "peak": max(rss), "end": rss[-1]},
        # Where the end figure lives: the heap, or mapped files (the interpreter, .so files).
        "rss_end_anon_mb": memory_mb(pid, "RssAnon"),
        "rss_end_file_mb": memory_mb(pid, "RssFile"),
        "cpu_s": round(cpu, 2),
        "cpu_percent": round(100 * cpu / wall, 2),
        "still_connected": devices.connected(),
        "modbus_requests": devices.conveyor.requests - requests0,
        "llrp_reconnects": devices.reader.connections - connections0,
    }


def device_report(daemon: GatewayProcess, devices: Devices) -> list[dict[str, Any]]:
    """Each device with the daemon's view of it (device_up / device_down in its log)."""
    events = Counter(
        (line.get("event"), line.get("device"))
        for line in daemon.log_lines()
        if line.get("event") in {"device_up", "device_down"}
    )
    return [
        {
            "id": entry["id"],
            "driver": entry["driver"],
            "up_events": events["device_up", entry["id"]],
            "down_events": events["device_down", entry["id"]],
        }
        for entry in device_entries(devices)
    ]


async def measure(root: Path, broker: MosquittoBroker, args: argparse.Namespace) -> dict[str, Any]:
    """``--starts`` starts timed to READY=1; the last one is watched idling, then stopped."""
    async with simulators(root) as devices:
        daemon = GatewayProcess(gateway_config(root, broker, devices), root / "gateway.log")
        startups: list[float] = []
        exit_codes: list[int] = []
        try:
            for n in range(args.starts):
                startups.append(await start(daemon, devices, root / f"notify-{n}.sock"))
                if n < args.starts - 1:
                    exit_codes.append(await stop(daemon))
            await asyncio.sleep(args.warmup)
            idle = await observe(pid_of(daemon), devices, args.seconds)
        finally:  # never leave a daemon behind, whatever failed
            if daemon.process is not None and daemon.process.poll() is None:
                exit_codes.append(await stop(daemon))
        return {
            "startup_to_ready_s": round(statistics.median(startups), 3),
            "startups_s": [round(s, 3) for s in startups],
            **idle,
            "exit_codes": exit_codes,
            "devices": device_report(daemon, devices),
        }


def verdict(result: dict[str, Any]) -> bool:
    """Every target met, and the daemon behaved: devices stayed up, each stop exited 0."""
    return (
        result["rss_mb"]["peak"] <= TARGETS["rss_mb"]
        and result["cpu_percent"] <= TARGETS["cpu_percent"]
        and result["startup_to_ready_s"] <= TARGETS["startup_to_ready_s"]
        and result["still_connected"]
        and not any(result["exit_codes"])
    )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    """One private broker for the whole run, gone afterwards."""
    with private_broker() as (root, broker):
        result = await measure(root, broker, args)
    return {"benchmark": "idle", **result, "targets": TARGETS, "target_met": verdict(result)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="observation window")
    parser.add_argument("--starts", type=int, default=3, help="starts timed to READY=1")
    parser.add_argument("--warmup", type=float, default=2.0, help="settling time after start")
    # Logs to stderr: stdout carries the one JSON object.
    logs_to_stderr()
    # The conveyor simulator's pymodbus dumps frames each time the daemon hangs up on it.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
