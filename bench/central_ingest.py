"""Events/s from the broker to committed ledger rows, PUBACK after commit, one and two instances.

The events wait in the instances' persistent sessions first (published while they were
offline), so the figure is the central side alone: broker -> edge-central -> PostgreSQL commit
-> PUBACK. Private Mosquitto, private PostgreSQL with fsync on, 20 devices, scan events.

    .venv/bin/python -m bench.central_ingest [--events 30000]
"""

# ruff: noqa: ASYNC110 - polling counters is the simplest honest probe in a bench

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from bench import logs_to_stderr, private_broker
from central.config import CentralSettings, load_central_settings
from central.service import Central
from gateway.mqtt_link import MqttLink
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker
from simulators.postgres import PostgresServer

TARGET_PER_INSTANCE = 20_000


def box_cpu() -> tuple[int, int]:
    """Busy and total jiffies of every core since boot (``/proc/stat``), to tell how much of the
    box a run used: the instances, PostgreSQL and Mosquitto share its cores."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def event(n: int, run: str) -> tuple[str, bytes]:
    device = f"d{n % 20}"
    body = {
        "specversion": "1.0",
        "id": f"{run}-{n}",
        "source": f"/bench/gw/{device}",
        "type": "warehouse.barcode.scanned.v1",
        "time": "2026-11-30T10:00:00.000001Z",
        "seq": n // 20 + 1,
        "datacontenttype": "application/json",
        "data": {"code": f"{n:013d}", "symbology": "]E0"},
    }
    return f"edge/bench/gw/events/{device}", json.dumps(body).encode()


async def publish_all(broker: MosquittoBroker, count: int, run: str) -> None:
    acked: list[int] = []
    link = MqttLink(
        MqttSection(host=broker.host, port=broker.port), "bench-pub", on_ack=acked.append
    )
    await link.connect()
    try:
        for n in range(count):
            while n - len(acked) >= link.send_quota:
                await asyncio.sleep(0.001)
            link.send(*event(n, run))
        while len(acked) < count:
            await asyncio.sleep(0.005)
    finally:
        await link.close()


def config(
    root: Path, broker: MosquittoBroker, dsn: str, name: str, group: str, receive_maximum: int
) -> Path:
    path = root / f"{name}.toml"
    path.write_text(
        f'[central]\ninstance = "{name}"\ngroup = "{group}"\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f"receive_maximum = {receive_maximum}\n"
        f'[database]\ndsn = "{dsn}"\n[replay]\nenabled = false\n[logging]\nlevel = "warning"\n'
        'format = "json"\n'
    )
    return path


async def backlog_waiting(settings: list[CentralSettings], dsn: str) -> asyncpg.Connection:
    """Each instance's persistent session created (connected once, then gone), an empty
    ledger; returns a connection to it. Events published next wait in those sessions."""
    for s in settings:
        central = Central(s)
        stop = asyncio.Event()
        task = asyncio.create_task(central.run(stop))
        while not central.connected.is_set():
            await asyncio.sleep(0.01)
        stop.set()
        await task
    conn = await asyncpg.connect(dsn)
    await conn.execute("TRUNCATE events, seq_ranges, devices")
    return conn


async def run(
    root: Path, broker: MosquittoBroker, dsn: str, instances: int, count: int, window: int
) -> dict[str, Any]:
    settings = [
        load_central_settings(
            config(root, broker, dsn, f"c{instances}-{n}", f"g{instances}-{window}", window)
        )
        for n in range(instances)
    ]
    conn = await backlog_waiting(settings, dsn)
    run_id = uuid.uuid4().hex[:8]
    await publish_all(broker, count, run_id)
    centrals = [Central(s) for s in settings]
    stop = asyncio.Event()
    start, cpu, box = time.perf_counter(), time.process_time(), box_cpu()
    tasks = [asyncio.create_task(c.run(stop)) for c in centrals]
    first: tuple[float, int] | None = None  # when the first batch committed, and its size
    async with asyncio.timeout(120):
        while (stored := sum(c.totals["stored"] for c in centrals)) < count:
            if first is None and stored:
                first = (time.perf_counter(), stored)
            await asyncio.sleep(0.005)
    end = time.perf_counter()
    elapsed, cpu = end - start, time.process_time() - cpu
    busy, total = (now - then for now, then in zip(box_cpu(), box, strict=True))
    steady_since, stored_then = first or (start, 0)
    stop.set()
    await asyncio.gather(*tasks)
    held = await conn.fetchval("SELECT count(*) FROM events")
    await conn.close()
    batches = sum(c.totals["batches"] for c in centrals)
    return {
        "instances": instances,
        "events": count,
        "held": held,
        "seconds": round(elapsed, 2),
        "events_per_s": round(count / elapsed),
        "events_per_s_after_first_commit": round(
            (count - stored_then) / max(1e-9, end - steady_since)
        ),
        "startup_to_first_commit_s": round(steady_since - start, 3),
        "cpu_us_per_event": round(cpu / count * 1e6, 1),
        "mean_batch": round(count / max(1, batches), 1),
        # of the box's cores, how many were busy on average (everything on it, the other
        # programs included): near os.cpu_count(), the box, not the instance, set the rate
        "box_cores_busy": round(busy / max(1, total) * (os.cpu_count() or 1), 2),
    }


async def run_processes(
    root: Path, broker: MosquittoBroker, dsn: str, instances: int, count: int, window: int
) -> dict[str, Any]:
    """As :func:`run`, each instance an ``edge-central run`` process of its own (its own core).

    The rate is read from the ledger (``count(*)`` every 20 ms) from its first row on, so the
    processes' start-up (imports, connect) is not in it; CPU is the children's, as
    ``os.times`` counts it once they exited.
    """
    paths = [
        config(root, broker, dsn, f"p{instances}-{n}", f"gp{instances}-{window}", window)
        for n in range(instances)
    ]
    conn = await backlog_waiting([load_central_settings(path) for path in paths], dsn)
    await publish_all(broker, count, uuid.uuid4().hex[:8])
    children_cpu = sum(os.times()[2:4])
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "central", "run", "--config", str(path)
        )
        for path in paths
    ]
    first: float | None = None
    box = box_cpu()
    async with asyncio.timeout(120):
        while (held := await conn.fetchval("SELECT count(*) FROM events")) < count:
            if first is None and held:
                first, held_then, box = time.perf_counter(), held, box_cpu()
            await asyncio.sleep(0.02)
    end = time.perf_counter()
    busy, total = (now - then for now, then in zip(box_cpu(), box, strict=True))
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        await proc.wait()
    await conn.close()
    cpu = sum(os.times()[2:4]) - children_cpu
    first = first or end
    return {
        "instances": instances,
        "events": count,
        "held": held,
        "events_per_s_after_first_commit": round((count - held_then) / max(1e-9, end - first)),
        "cpu_us_per_event": round(cpu / count * 1e6, 1),
        "box_cores_busy": round(busy / max(1, total) * (os.cpu_count() or 1), 2),
    }


async def main(count: int, window: int) -> dict[str, Any]:
    logs_to_stderr()
    server = PostgresServer(durable=True)
    server.start()
    try:
        with private_broker() as (root, broker):
            one = await run(root, broker, server.dsn, 1, count, window)
            two = await run(root, broker, server.dsn, 2, count, window)
            apart = await run_processes(root, broker, server.dsn, 2, count, window)
    finally:
        server.cleanup()
    return {
        "bench": "central_ingest",
        "note": "both instances in one process, 2-core box shared with other work;"
        " events_per_s counts from the instances' start (connect, pool, schema check),"
        " events_per_s_after_first_commit from the first commit on (the ingest rate itself);"
        " cpu_us_per_event: this process's CPU (the instances) per event, without PostgreSQL"
        " and Mosquitto: at 20,000 events/s one instance may spend 50 us of one core",
        "receive_maximum": window,
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "one_instance": one,
        "two_instances_one_process": two,
        "two_instances_two_processes": apart,
        "target_events_per_s_per_instance": TARGET_PER_INSTANCE,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=30000)
    parser.add_argument("--receive-maximum", type=int, default=1000, help="[mqtt] of central")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.events, args.receive_maximum))))
