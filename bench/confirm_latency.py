"""Scan -> good feedback latency at each confirmation level, under background load.

A pty scanner types one code at a time and waits for the good-read bytes on the pty; meanwhile
a background emitter stores ~``--load`` scans/s on other devices of the same gateway, which go
through the same buffer and publisher. The reference central consumer (``simulators.central``,
confirms batched per loop turn) confirms every event at every level, as a central system does,
from a process of its own as in production: in the gateway's event loop its aiomqtt client
(~70 µs per message) was measured as part of the gateway's latency (stored p50 3.5 -> 1.7 ms,
p99 11.2 -> 4.9 ms when moved out, docs/performance.md). The JSON says how many confirms the
gateway applied. Prints one JSON object.

    .venv/bin/python -m bench.confirm_latency [--scans 300] [--load 500]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from bench import logs_to_stderr, private_broker
from drivers.base import DeviceConfig, DeviceEvent, EventFeedback
from gateway.daemon import Gateway
from gateway.feedback_policy import FeedbackPolicy
from simulators.broker import MosquittoBroker
from simulators.scanner import ScannerSimulator
from tests.support import running_gateway, scanner_device, write_config


def percentile(ordered: list[float], q: float) -> float:
    """Nearest rank: the ceil(q * N)-th smallest of N sorted samples, so no interpolation
    invents a latency nobody saw (with N = 2000, p99.9 is the 1998th: two scans were slower)."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def background(gw: Gateway, rate: float, stop: asyncio.Event) -> int:
    """Emit ``rate`` scans/s on four other devices through the real pipeline."""
    devices = [DeviceConfig(id=f"bg-{n}", driver="bench", confirm="stored") for n in range(4)]
    kinds = {"warehouse.barcode.scanned.v1": EventFeedback.CONFIRM}
    emitters = [gw.pipeline.emitter(d, FeedbackPolicy(d.id, "stored", 3.0, kinds)) for d in devices]
    sent, t0 = 0, time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - t0) * rate)
        batch = [
            emitters[i % 4](DeviceEvent("warehouse.barcode.scanned.v1", {"code": f"BG{i:08d}"}))
            for i in range(sent, due)
        ]
        sent = due
        if batch:
            await asyncio.gather(*batch)
        await asyncio.sleep(0.01)
    return sent


@contextlib.contextmanager
def central_process(broker: MosquittoBroker, client_id: str) -> Iterator[None]:
    """The reference central consumer, confirming every event, in a process of its own."""
    args = ["--host", broker.host, "--port", str(broker.port), "--client-id", client_id]
    central = subprocess.Popen(
        [sys.executable, "-m", "simulators.central", *args, "--group", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        central.terminate()
        central.wait()


async def confirms_flowing(gw: Gateway, timeout: float = 20.0) -> None:
    """Emit probes until central's first confirm is applied: its process is subscribed."""
    device = DeviceConfig(id="probe", driver="bench", confirm="stored")
    kinds = {"warehouse.barcode.scanned.v1": EventFeedback.CONFIRM}
    emit = gw.pipeline.emitter(device, FeedbackPolicy(device.id, "stored", 3.0, kinds))
    deadline = time.monotonic() + timeout
    while not gw.buffer.transitions["confirmed"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no confirm from the central process within {timeout} s")
        await emit(DeviceEvent("warehouse.barcode.scanned.v1", {"code": "PROBE"}))
        await asyncio.sleep(0.1)


async def latency(
    root: Path, broker: MosquittoBroker, scans: int, confirm: str, load: float
) -> dict[str, Any]:
    """Scan typed on a pty -> good feedback bytes back on the pty, through the real daemon,
    with ``load`` scans/s on other devices meanwhile (0 for none)."""
    async with ScannerSimulator(root / f"scanner-{confirm}") as sim:
        config = write_config(
            root / f"{confirm}.toml",
            mqtt_port=broker.port,
            state_dir=root / f"state-{confirm}",
            devices=[
                scanner_device(
                    "dock-1", sim.link, confirm=confirm, feedback="custom", feedback_good="G"
                )
            ],
        )
        with central_process(broker, f"bench-{confirm}"):
            async with running_gateway(config) as gw:
                await sim.wait_opened(timeout=20)
                await gw.publisher.connected.wait()
                await confirms_flowing(gw)
                stop = asyncio.Event()
                bg = asyncio.create_task(background(gw, load, stop))
                await asyncio.sleep(0.5)
                samples = []
                t0 = time.monotonic()
                for i in range(scans):
                    before = len(sim.feedback_bytes())
                    sent_at = time.monotonic()
                    await sim.type_code(f"LAT{i:06d}", aim="")
                    await sim.wait_feedback(lambda b, n=before: len(b) > n, timeout=5)
                    samples.append((sim.feedback[-1][0] - sent_at) * 1000)
                    await asyncio.sleep(0.005)
                elapsed = time.monotonic() - t0
                stop.set()
                background_sent = await bg
                confirmed = gw.buffer.transitions["confirmed"]
    samples.sort()
    return {
        "confirm": confirm,
        "scans": scans,
        "background_per_s": round(background_sent / (elapsed + 0.5)),
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(percentile(samples, 0.99), 3),
        "p999_ms": round(percentile(samples, 0.999), 3),
        "max_ms": round(samples[-1], 3),
        "confirmed_by_central": confirmed,
    }


async def run_levels(levels: Iterable[str], scans: int, load: float) -> dict[str, dict[str, Any]]:
    """``latency`` at each confirmation level in turn, against one private broker."""
    with private_broker() as (root, broker):
        return {level: await latency(root, broker, scans, level, load) for level in levels}


async def main(scans: int, load: float) -> None:
    # Logs to stderr: stdout carries the one JSON object.
    logs_to_stderr()
    result = await run_levels(("stored", "delivered", "accepted"), scans, load)
    result["targets_p99_ms"] = {"stored": 5, "delivered": 10, "accepted": 25}
    print(json.dumps(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scans", type=int, default=300)
    parser.add_argument("--load", type=float, default=500.0)
    args = parser.parse_args()
    asyncio.run(main(args.scans, args.load))
