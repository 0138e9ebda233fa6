"""Confirms that arrive while the real daemon stops (SIGTERM) or reloads (SIGHUP): none is lost.

Central confirms every event it receives, as fast as it can, while a scanner in batch mode keeps
the gateway busy; the daemon is reloaded with changed broker settings (the MQTT session is
rebuilt) and stopped gracefully several times. A confirm is acknowledged to the broker only once
its verdict is committed, and the session is persistent, so every event central confirmed must
end ``confirmed`` in the buffer, and no event gets feedback twice.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.scanner import ScannerSimulator
from tests.chaos.conftest import ChaosReport, ChaosRow, Stopwatch
from tests.chaos.workload import BAD, FEEDBACK, GOOD, PENDING, Burst, source
from tests.support import GatewayProcess, scanner_device, write_config

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

STOPS = 3


@pytest.fixture
async def confirming_central(broker: MosquittoBroker) -> AsyncIterator[CentralCollector]:
    collector = CentralCollector(
        broker.host, broker.port, client_id=f"central-confirm-{broker.port}", confirm=True
    )
    task = asyncio.create_task(collector.run())
    async with asyncio.timeout(10):
        await collector.connected.wait()
    yield collector
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def states(db: Path) -> dict[int, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.execute("PRAGMA busy_timeout=5000")
        return dict(conn.execute("SELECT state, count(*) FROM events GROUP BY state"))


def ids_in_state(db: Path, state: int) -> set[str]:
    from buffer.event_ids import id_text  # noqa: PLC0415

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.execute("PRAGMA busy_timeout=5000")
        return {
            id_text(i) for (i,) in conn.execute("SELECT id FROM events WHERE state = ?", (state,))
        }


def explain_stuck(db: Path, central: CentralCollector, daemon: GatewayProcess) -> str:
    """Why some events did not end confirmed: their rows, what central saw, the gateway's log."""
    from buffer.event_ids import id_text  # noqa: PLC0415

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        stuck = [
            (seq, state, id_text(i))
            for seq, state, i in conn.execute(
                "SELECT seq, state, id FROM events WHERE state != 3 ORDER BY seq LIMIT 20"
            )
        ]
    track = central.sources[source("dock-c")]
    seen = [(seq, state, track.ids.get(i)) for seq, state, i in stuck]
    interesting = {"mqtt_connected", "mqtt_disconnected", "config_reloaded", "stopping", "stopped"}
    log = [
        {k: v for k, v in line.items() if k in ("event", "timestamp", "count", "reason")}
        for line in daemon.log_lines()
        if line.get("event") in interesting
        or "confirm" in str(line.get("event"))
        or "inbound" in str(line.get("event"))
    ]
    return (
        f"not confirmed after 30 s: states {states(db)}; first stuck (seq, state, seq central "
        f"got or None): {seen}; central confirms sent {dict(central.confirms_sent)}; "
        f"gateway log: {log[-40:]}"
    )


async def test_confirms_during_stop_and_reload_are_never_lost(
    tmp_path: Path,
    broker: MosquittoBroker,
    confirming_central: CentralCollector,
    chaos_report: ChaosReport,
    stopwatch: Stopwatch,
) -> None:
    """STOPS graceful stops and as many SIGHUP reloads (keepalive changed: a new MQTT session)
    while events flow and central confirms them: every event ends confirmed, central's every
    confirmed id is confirmed in the buffer, feedback at most once per event, never bad."""
    db = tmp_path / "state" / "buffer.db"
    async with ScannerSimulator(tmp_path / "scan") as sim:

        def configure(keepalive: int) -> None:
            write_config(
                tmp_path / "gateway.toml",
                mqtt_port=broker.port,
                state_dir=tmp_path / "state",
                mqtt={"keepalive": keepalive},
                devices=[
                    scanner_device(
                        "dock-c", sim.link, confirm="accepted", confirm_timeout=2.0, **FEEDBACK
                    )
                ],
            )

        configure(30)
        daemon = GatewayProcess(tmp_path / "gateway.toml", tmp_path / "gateway.log")
        burst = Burst(sim, "C", size=10, every=0.05)
        stop = asyncio.Event()
        worker = asyncio.create_task(burst.run(stop))
        try:
            for round_ in range(STOPS):
                daemon.start()
                await sim.wait_opened(timeout=20)
                await asyncio.sleep(1.0)
                configure(31 + round_ % 2)
                assert daemon.process is not None
                daemon.process.send_signal(signal.SIGHUP)  # confirms keep coming meanwhile
                await asyncio.sleep(1.0)
                assert await asyncio.to_thread(daemon.terminate, 30) == 0
            daemon.start()
            await sim.wait_opened(timeout=20)
            stop.set()
            await worker
            # Every stored event reaches central, which confirms it: all must end confirmed.
            try:
                async with asyncio.timeout(30):
                    while set(await asyncio.to_thread(states, db)) != {3}:
                        await asyncio.sleep(0.25)
            except TimeoutError:
                pytest.fail(explain_stuck(db, confirming_central, daemon))
        finally:
            stop.set()
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.terminate()
        confirmed = await asyncio.to_thread(ids_in_state, db, 3)
        received = set(confirming_central.sources[source("dock-c")].ids)
        assert received <= confirmed, "every event central confirmed ends confirmed"
        fed = sim.feedback_bytes()
        assert BAD not in fed
        assert fed.count(GOOD) + fed.count(PENDING) <= len(confirmed), "feedback once at most"
        lines = daemon.log_lines()
        held = sum(1 for line in lines if line.get("event") == "inbound_held_for_next_session")
        reloads = sum(1 for line in lines if line.get("event") == "config_reloaded")
        assert reloads == STOPS
        chaos_report.add(
            ChaosRow(
                "confirms during stop and reload",
                faults=2 * STOPS,
                at_risk=len(confirmed),
                lost=0,
                new_id_duplicates=0,
                seconds=stopwatch.elapsed,
                note=f"{held} stops received confirms after the stop began",
            )
        )
