"""kill -9 of the real daemon at random moments while workers scan and the publisher drains."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.scanner import ScannerSimulator
from tests.chaos.conftest import ChaosReport, Stopwatch, knob
from tests.chaos.workload import (
    FEEDBACK,
    Burst,
    Worker,
    check_parity,
    describe_lost,
    wait_delivered,
)
from tests.support import GatewayProcess, scanner_device, write_config

KILLS = knob("EDGE_CHAOS_KILLS", 100)


async def test_kill9_at_random_moments_loses_nothing_acknowledged(
    tmp_path: Path,
    broker: MosquittoBroker,
    central: CentralCollector,
    chaos_rng: random.Random,
    chaos_report: ChaosReport,
    stopwatch: Stopwatch,
) -> None:
    """EDGE_CHAOS_KILLS SIGKILLs (seeded moments, some mid-startup): every beeped or stored event
    reaches central, per-device seq has no gap, and any duplicate carries its original id."""
    async with (
        ScannerSimulator(tmp_path / "scan-a") as sim_a,
        ScannerSimulator(tmp_path / "scan-b") as sim_b,
        ScannerSimulator(tmp_path / "scan-c") as sim_c,
    ):
        cfg = write_config(
            tmp_path / "gateway.toml",
            mqtt_port=broker.port,
            state_dir=tmp_path / "state",
            devices=[
                scanner_device("dock-a", sim_a.link, **FEEDBACK),
                scanner_device("dock-b", sim_b.link, **FEEDBACK),
                scanner_device("dock-c", sim_c.link, **FEEDBACK),
            ],
        )
        db = tmp_path / "state" / "buffer.db"
        daemon = GatewayProcess(cfg, tmp_path / "gateway.log")
        workers = [Worker(sim_a, "A"), Worker(sim_b, "B")]
        burst = Burst(sim_c, "C", size=25, every=0.05)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(w.run(stop)) for w in [*workers, burst]]
        kills_during_startup = 0
        try:
            for _ in range(KILLS):
                daemon.start()
                # A quarter of the kills land while the daemon starts (buffer opening, port not
                # yet open), the rest while it scans and publishes.
                early = chaos_rng.random() < 0.25
                delay = chaos_rng.uniform(0.02, 0.4) if early else chaos_rng.uniform(0.4, 2.0)
                await asyncio.sleep(delay)
                if not sim_a.is_open:
                    kills_during_startup += 1
                daemon.kill9()
            daemon.start()
            await asyncio.sleep(1.0)
            stop.set()
            async with asyncio.timeout(10):
                await asyncio.gather(*tasks)
            delivered = await wait_delivered(central, db, timeout=60)
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if daemon.process is not None and daemon.process.poll() is None:
                assert daemon.terminate() == 0
    parity = check_parity(db, central, workers)
    typed = sum(len(w.typed) for w in workers) + burst.typed
    chaos_report.add(
        parity.row(
            "kill -9 during scan+publish",
            faults=KILLS,
            seconds=stopwatch.elapsed,
            note=f"{parity.acked} beeped of {typed} typed; {kills_during_startup} kills pre-open",
        )
    )
    print(json.dumps({"lost": parity.lost[:20], "gaps": parity.gaps}))
    assert delivered, ("central never caught up with the buffer", describe_lost(db, parity))
    assert parity.acked > 0 and parity.at_risk >= parity.acked
    assert parity.lost == []
    assert all(not gaps for gaps in parity.gaps.values()), parity.gaps
    assert parity.conflicting == 0, "a redelivered seq always carries its original id"
    assert parity.new_id_duplicates == 0
    assert parity.integrity == "ok"
    assert parity.counts == [], "the kept counts (status, checkpoint) match a full count"
