"""A fleet into the ledger: 100 simulated gateways x 50 events/s into two edge-central instances.

Each simulated gateway is its own MQTT connection (the gateway's ``MqttLink``: QoS 1, its own
client id and topic root ``edge/fleet/gwNNN``) publishing scan events with per-device seqs at a
steady rate, and at the end the retained checkpoint a gateway publishes, so that
``edge-central parity`` can judge the ledger against it. The two instances are ``edge-central
run`` processes in one share group (as systemd runs them), on a private Mosquitto and a private
PostgreSQL with fsync on. Everything runs on this box: publishers, broker, database and both
instances share its cores.

Figures: events published (PUBACKed by the broker) and held by the ledger, whether the ledger is
complete (every device's seqs 1..N, and ``edge-central parity`` exit 0), how long after the last
publish it was, the lag from an event's ``time`` (set when published) to its ledger row's
``received`` (insert time in the batch's transaction) as p50/p99/max over the steady part of the
run (after ``--warmup``), the share each instance took and their CPU time.

    .venv/bin/python -m bench.central_fleet [--gateways 100] [--rate 50] [--seconds 60]
"""

# ruff: noqa: ASYNC110 - polling counters and files is the simplest honest probe in a bench

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from bench import logs_to_stderr, private_broker
from gateway.mqtt_link import MqttLink
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker
from simulators.postgres import PostgresServer

TICK_S = 0.02
"""Each gateway publishes once per tick on average (50/s): a steady flow, not bursts."""


class SimulatedGateway:
    """One MQTT connection publishing one device's scans with consecutive seqs."""

    def __init__(self, n: int, broker: MosquittoBroker) -> None:
        self.name = f"gw{n:03d}"
        self.root = f"edge/fleet/{self.name}"
        self.acked: set[int] = set()
        self.mids: dict[int, int] = {}
        self.seq = 0
        self.link = MqttLink(
            MqttSection(host=broker.host, port=broker.port, publish_timeout=30),
            f"fleet-{self.name}",
            on_ack=self._ack,
        )

    def _ack(self, mid: int) -> None:
        seq = self.mids.pop(mid, None)
        if seq is not None:
            self.acked.add(seq)

    def publish(self) -> bool:
        """One event, if the broker's window has room (else it waits for the next tick)."""
        if len(self.mids) >= self.link.send_quota:
            return False
        self.seq += 1
        now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        body = {
            "specversion": "1.0",
            "id": f"{self.name}-{self.seq}",
            "source": f"/fleet/{self.name}/d0",
            "type": "warehouse.barcode.scanned.v1",
            "time": now,
            "seq": self.seq,
            "datacontenttype": "application/json",
            "data": {"code": f"{self.seq:013d}", "symbology": "]E0"},
        }
        mid = self.link.send(f"{self.root}/events/d0", json.dumps(body).encode())
        self.mids[mid] = self.seq
        return True

    async def checkpoint(self) -> None:
        """The retained checkpoint a gateway publishes: what it stored and what was sent."""
        sent = max(self.acked, default=0)
        body = {"devices": {"d0": {"last_seq": self.seq, "last_sent_seq": sent}}}
        await self.link.publish(f"{self.root}/checkpoint", json.dumps(body).encode(), retain=True)


def central_config(root: Path, broker: MosquittoBroker, dsn: str, name: str) -> Path:
    path = root / f"{name}.toml"
    path.write_text(
        f'[central]\ninstance = "{name}"\ngroup = "fleet"\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n'
        f'[database]\ndsn = "{dsn}"\n[parity]\nthreshold = 0\n'
        '[logging]\nlevel = "info"\nformat = "json"\n'
    )
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root_pid: int) -> float:
    """CPU of a process and its live children (the postmaster and its backends)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(proc.name) == root_pid or int(fields[1]) == root_pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def postmaster_pid(server: PostgresServer) -> int:
    return int((server.datadir / "postmaster.pid").read_text().split()[0])


def stopped_totals(log: Path) -> dict[str, Any]:
    """The ``central_stopped`` line an instance logs on SIGTERM: its counters."""
    for line in reversed(log.read_text().splitlines()):
        if '"central_stopped"' in line:
            return json.loads(line)
    return {}


async def publish(gateways: list[SimulatedGateway], seconds: float) -> int:
    """Every gateway once per tick, on a fixed schedule; returns how many ticks were late."""
    late = 0
    started = time.monotonic()
    tick = 0
    while (now := time.monotonic()) - started < seconds:
        for gateway in gateways:
            gateway.publish()
        tick += 1
        wake = started + tick * TICK_S
        if wake < now:
            late += 1
        await asyncio.sleep(max(0.0, wake - time.monotonic()))
    return late


async def run(
    args: argparse.Namespace, root: Path, broker: MosquittoBroker, server: PostgresServer
) -> Any:  # noqa: ANN401
    dsn = server.dsn
    names = ("fleet-a", "fleet-b")
    configs = [central_config(root, broker, dsn, name) for name in names]
    logs = [root / f"{name}.log" for name in names]
    centrals = []
    for config, log in zip(configs, logs, strict=True):
        with log.open("ab") as out:
            centrals.append(
                subprocess.Popen(  # noqa: ASYNC220 - started once, before the timed part
                    [sys.executable, "-m", "central", "run", "--config", str(config)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        async with asyncio.timeout(60):
            while not all('"mqtt_connected"' in log.read_text() for log in logs):
                await asyncio.sleep(0.1)
        gateways = [SimulatedGateway(n, broker) for n in range(args.gateways)]
        for gateway in gateways:
            await gateway.link.connect()
        cpu0 = [cpu_seconds(c.pid) for c in centrals]
        assert broker.process is not None
        others0 = (
            time.process_time(),
            cpu_seconds(broker.process.pid),
            tree_cpu_seconds(postmaster_pid(server)),
        )
        rate = 1 / TICK_S
        ticks = int(args.seconds * rate)
        started = time.time()
        late = await publish(gateways, args.seconds)
        published_at = time.monotonic()
        async with asyncio.timeout(60):
            while any(g.mids for g in gateways):
                await asyncio.sleep(0.05)
        published = sum(len(g.acked) for g in gateways)
        conn = await asyncpg.connect(dsn)
        try:
            complete_after = None
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if await conn.fetchval("SELECT count(*) FROM events") >= published:
                    complete_after = time.monotonic() - published_at
                    break
                await asyncio.sleep(0.1)
            cpu = [cpu_seconds(c.pid) - c0 for c, c0 in zip(centrals, cpu0, strict=True)]
            others = (
                time.process_time() - others0[0],
                cpu_seconds(broker.process.pid) - others0[1],
                tree_cpu_seconds(postmaster_pid(server)) - others0[2],
            )
            wall = time.monotonic() - published_at + args.seconds
            for gateway in gateways:
                await gateway.checkpoint()
                await gateway.link.close()
            held = await conn.fetchval("SELECT count(*) FROM events")
            ranges = await conn.fetch("SELECT source, first_seq, last_seq FROM seq_ranges")
            steady = started + args.warmup
            lag = await conn.fetchrow(
                "SELECT percentile_cont(ARRAY[0.5, 0.99, 0.999]) WITHIN GROUP (ORDER BY lag) AS p,"
                " max(lag) AS worst, count(*) AS n FROM ("
                "  SELECT extract(epoch FROM received - time)::float8 * 1000 AS lag FROM events"
                "  WHERE time >= to_timestamp($1)) l",
                steady,
            )
            replays = await conn.fetchval("SELECT count(*) FROM replays")
        finally:
            await conn.close()
        await asyncio.sleep(1.5)  # the leader records the checkpoints (interval 1 s)
        parity = subprocess.run(  # noqa: ASYNC221 - after the timed part
            [sys.executable, "-m", "central", "parity", "--json", "--config", str(configs[0])],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        for central in centrals:
            central.terminate()
        for central in centrals:
            central.wait(30)
    expected = {f"/fleet/{g.name}/d0": len(g.acked) for g in gateways}
    complete = len(ranges) == len(expected) and all(
        r["first_seq"] == 1 and r["last_seq"] == expected.get(r["source"]) for r in ranges
    )
    report = json.loads(parity.stdout) if parity.stdout else {}
    p50, p99, p999 = lag["p"] or (None, None, None)
    return {
        "gateways": args.gateways,
        "events_per_s_per_gateway": rate,
        "seconds": args.seconds,
        "offered_events": args.gateways * ticks,
        "published": published,
        "late_ticks": late,
        "held": held,
        "ledger_complete": complete,
        "parity_exit": parity.returncode,
        "devices_in_parity": sum(1 for d in report.get("devices", []) if d["in_parity"]),
        "complete_after_last_publish_s": None
        if complete_after is None
        else round(complete_after, 2),
        "lag_ms": {
            "p50": round(p50, 1) if p50 is not None else None,
            "p99": round(p99, 1) if p99 is not None else None,
            "p999": round(p999, 1) if p999 is not None else None,
            "max": round(lag["worst"], 1) if lag["worst"] is not None else None,
            "events": lag["n"],
            "after_warmup_s": args.warmup,
        },
        "instances": {
            name: {"stored": stopped_totals(log).get("stored"), "cpu_s": round(c, 1)}
            for name, log, c in zip(names, logs, cpu, strict=True)
        },
        "replay_requests": replays,
        "cpu_s": {
            "wall_s": round(wall, 1),
            "publishers": round(others[0], 1),
            "mosquitto": round(others[1], 1),
            "postgresql": round(others[2], 1),
            "instances": round(sum(cpu), 1),
        },
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    logs_to_stderr()
    server = PostgresServer(durable=True)
    server.start()
    try:
        with private_broker() as (root, broker):
            figures = await run(args, root, broker, server)
    finally:
        server.cleanup()
    return {
        "bench": "central_fleet",
        "note": "publishers, Mosquitto, PostgreSQL (fsync on) and both instances on this box",
        **figures,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--gateways", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="events/s per gateway")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parsed = parser.parse_args()
    TICK_S = 1 / parsed.rate
    print(json.dumps(asyncio.run(main(parsed))))
