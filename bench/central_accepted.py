"""Scan -> good-read latency at ``confirm = "accepted"`` through the real edge-central.

As ``bench.confirm_latency``'s ``accepted`` run (pty scanner, real gateway, background load of
``--load`` scans/s on other devices), but the verdict comes from ``central`` after its
PostgreSQL commit (private server, fsync on), not from the in-memory reference consumer.
Prints one JSON object.

    .venv/bin/python -m bench.central_accepted [--scans 300] [--load 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from bench import logs_to_stderr, private_broker
from bench.confirm_latency import background, percentile
from central.config import load_central_settings
from central.service import Central
from simulators.postgres import PostgresServer
from simulators.scanner import ScannerSimulator
from tests.support import running_gateway, scanner_device, write_config

TARGET_P99_MS = 20


async def main(
    scans: int, load: float, dead_member: bool = False, session_expiry: int = 3600
) -> dict[str, Any]:
    logs_to_stderr()
    server = PostgresServer(durable=True)
    server.start()
    try:
        with private_broker() as (root, broker):
            path = root / "central.toml"
            path.write_text(
                f'[central]\ninstance = "bench"\n[mqtt]\nhost = "{broker.host}"\n'
                f"port = {broker.port}\nsession_expiry = {session_expiry}\n"
                f'[database]\ndsn = "{server.dsn}"\n'
                '[logging]\nlevel = "warning"\nformat = "json"\n'
            )
            if dead_member:  # a member whose session stays in the group, with nobody behind it
                dead_path = root / "dead.toml"
                dead_path.write_text(path.read_text().replace('"bench"', '"bench-dead"'))
                dead = Central(load_central_settings(dead_path))
                stop_dead = asyncio.Event()
                dead_task = asyncio.create_task(dead.run(stop_dead))
                async with asyncio.timeout(30):
                    await dead.connected.wait()
                stop_dead.set()
                await dead_task
            central = Central(load_central_settings(path))
            stop_central = asyncio.Event()
            central_task = asyncio.create_task(central.run(stop_central))
            async with asyncio.timeout(30):
                await central.connected.wait()
            async with ScannerSimulator(root / "scanner") as sim:
                config = write_config(
                    root / "gateway.toml",
                    mqtt_port=broker.port,
                    state_dir=root / "state",
                    devices=[
                        scanner_device(
                            "dock-1", sim.link, confirm="accepted", feedback="custom",
                            feedback_good="G",
                        )
                    ],
                )  # fmt: skip
                async with running_gateway(config) as gw:
                    await sim.wait_opened(timeout=20)
                    await gw.publisher.connected.wait()
                    stop = asyncio.Event()
                    bg = asyncio.create_task(background(gw, load, stop))
                    await asyncio.sleep(0.5)
                    samples = []
                    timeouts = 0
                    t0 = time.monotonic()
                    for i in range(scans):
                        before = len(sim.feedback_bytes())
                        sent_at = time.monotonic()
                        await sim.type_code(f"LAT{i:06d}", aim="")
                        try:
                            await sim.wait_feedback(lambda b, n=before: len(b) > n, timeout=10)
                            samples.append((sim.feedback[-1][0] - sent_at) * 1000)
                        except TimeoutError:  # censored at 10 s, counted
                            timeouts += 1
                            samples.append(10_000.0)
                        await asyncio.sleep(0.005)
                    elapsed = time.monotonic() - t0
                    stop.set()
                    background_sent = await bg
            stop_central.set()
            await central_task
    finally:
        server.cleanup()
    samples.sort()
    return {
        "bench": "central_accepted",
        "dead_member": dead_member,
        "session_expiry_s": session_expiry,
        "scans": scans,
        "background_per_s": round(background_sent / (elapsed + 0.5)),
        "ledger_stored": central.totals["stored"],
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(percentile(samples, 0.99), 3),
        "p999_ms": round(percentile(samples, 0.999), 3),
        "max_ms": round(samples[-1], 3),
        "no_feedback_within_10_s": timeouts,
        "target_p99_ms": TARGET_P99_MS,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scans", type=int, default=300)
    parser.add_argument("--load", type=float, default=500.0)
    parser.add_argument("--dead-member", action="store_true", help="one group member dead")
    parser.add_argument("--session-expiry", type=int, default=3600, help="of every member, s")
    args = parser.parse_args()
    result = main(args.scans, args.load, args.dead_member, args.session_expiry)
    print(json.dumps(asyncio.run(result)))
