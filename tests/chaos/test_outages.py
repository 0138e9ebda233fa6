"""Broker restarts and network faults (through our fault proxy) while workers keep scanning."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.scanner import ScannerSimulator
from tests.chaos.conftest import ChaosReport, Stopwatch, knob
from tests.chaos.faultproxy import FaultProxy
from tests.chaos.workload import (
    FEEDBACK,
    Burst,
    Worker,
    check_parity,
    describe_lost,
    wait_delivered,
)
from tests.support import running_gateway, scanner_device, write_config

RESTARTS = knob("EDGE_CHAOS_RESTARTS", 50)
NET_FAULTS = knob("EDGE_CHAOS_NET_FAULTS", 20)
FAULT_KINDS = ("cut", "blackhole", "drip", "half_open")


@contextlib.asynccontextmanager
async def scanning(tmp_path: Path, mqtt_port: int, **mqtt: object) -> AsyncIterator[dict]:
    """A gateway with a stored-level worker, a delivered-level worker and a burst scanner."""
    async with (
        ScannerSimulator(tmp_path / "scan-s") as sim_s,
        ScannerSimulator(tmp_path / "scan-d") as sim_d,
        ScannerSimulator(tmp_path / "scan-b") as sim_b,
    ):
        cfg = write_config(
            tmp_path / "gateway.toml",
            mqtt_port=mqtt_port,
            state_dir=tmp_path / "state",
            mqtt=dict(mqtt),
            devices=[
                scanner_device("dock-s", sim_s.link, **FEEDBACK),
                scanner_device("dock-d", sim_d.link, confirm="delivered", **FEEDBACK),
                scanner_device("dock-b", sim_b.link, **FEEDBACK),
            ],
        )
        workers = [Worker(sim_s, "S", pause=0.01), Worker(sim_d, "D", patience=1.0, pause=0.01)]
        burst = Burst(sim_b, "B", size=10, every=0.1)
        stop = asyncio.Event()
        async with running_gateway(cfg) as gw:
            async with asyncio.timeout(10):
                await gw.publisher.connected.wait()
            tasks = [asyncio.create_task(w.run(stop)) for w in [*workers, burst]]
            state = {"gw": gw, "workers": workers, "burst": burst, "stop": stop, "tasks": tasks}
            try:
                yield state
            finally:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)


async def test_broker_restarts_lose_nothing(
    tmp_path: Path,
    broker: MosquittoBroker,
    central: CentralCollector,
    chaos_rng: random.Random,
    chaos_report: ChaosReport,
    stopwatch: Stopwatch,
) -> None:
    """EDGE_CHAOS_RESTARTS broker restarts at seeded moments: 0 lost, no new-id duplicates."""
    db = tmp_path / "state" / "buffer.db"
    async with scanning(tmp_path, broker.port) as run:
        for _ in range(RESTARTS):
            await asyncio.sleep(chaos_rng.uniform(0.2, 1.2))
            await asyncio.to_thread(broker.stop)
            await asyncio.sleep(chaos_rng.uniform(0.1, 1.0))
            await asyncio.to_thread(broker.start)
        await asyncio.sleep(1.0)
        run["stop"].set()
        await asyncio.gather(*run["tasks"])
        delivered = await wait_delivered(central, db, timeout=60)
        reconnects = run["gw"].publisher.reconnects
    parity = check_parity(db, central, run["workers"])
    chaos_report.add(
        parity.row(
            "broker restarts",
            faults=RESTARTS,
            seconds=stopwatch.elapsed,
            note=f"{reconnects} reconnects, {parity.acked} beeped,"
            f" central took {central.left_over} from a dropped queue",
        )
    )
    assert delivered, ("central never caught up with the buffer", describe_lost(db, parity))
    assert reconnects >= RESTARTS
    assert parity.clean, parity


async def test_network_faults_through_proxy_lose_nothing(
    tmp_path: Path,
    broker: MosquittoBroker,
    central: CentralCollector,
    chaos_rng: random.Random,
    chaos_report: ChaosReport,
    stopwatch: Stopwatch,
) -> None:
    """EDGE_CHAOS_NET_FAULTS faults (cut, blackhole without RST, slow drip, half-open) between
    gateway and broker: the gateway notices each, reconnects, and loses or re-ids nothing."""
    db = tmp_path / "state" / "buffer.db"
    kinds = [FAULT_KINDS[i % len(FAULT_KINDS)] for i in range(NET_FAULTS)]
    chaos_rng.shuffle(kinds)
    async with FaultProxy(broker.host, broker.port, drip_bytes=8, drip_interval=0.05) as proxy:  # noqa: SIM117
        async with scanning(
            tmp_path, proxy.port, keepalive=5, publish_timeout=2.0, reconnect_max=1.0
        ) as run:
            gw = run["gw"]
            noticed: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
            for kind in kinds:
                await asyncio.sleep(chaos_rng.uniform(0.3, 1.0))
                before = gw.publisher.reconnects
                getattr(proxy, kind)()
                # A blackhole outlasts publish_timeout (2 s), so the gateway must notice it.
                hold = (3.0, 5.0) if kind == "blackhole" else (0.5, 3.0)
                await asyncio.sleep(chaos_rng.uniform(*hold))
                proxy.heal()
                progress = central.unique_count() + 5
                async with asyncio.timeout(20):  # delivering again, whatever it took
                    while central.unique_count() < progress:
                        await asyncio.sleep(0.05)
                noticed[kind] += gw.publisher.reconnects > before
                if kind != "drip":
                    # Cut and half-open kill the session for good, and a blackhole longer than
                    # publish_timeout must be noticed: only a reconnect brings delivery back.
                    assert gw.publisher.reconnects > before, kind
            await asyncio.sleep(1.0)
            run["stop"].set()
            await asyncio.gather(*run["tasks"])
            delivered = await wait_delivered(central, db, timeout=60)
            reconnects = gw.publisher.reconnects
    parity = check_parity(db, central, run["workers"])
    chaos_report.add(
        parity.row(
            "network faults via proxy",
            faults=len(kinds),
            seconds=stopwatch.elapsed,
            note=f"{reconnects} reconnects; faults that forced one: {noticed}",
        )
    )
    assert delivered, ("central never caught up with the buffer", describe_lost(db, parity))
    assert parity.clean, parity
