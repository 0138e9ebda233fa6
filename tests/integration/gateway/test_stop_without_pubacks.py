"""A graceful stop while the broker holds back PUBACKs (issue 19).

A plausible bug, counting in-flight events as sent on SIGTERM, passed the whole suite: no test
stopped the daemon while PUBACKs were outstanding and then looked at the buffer's states. Here
the real daemon publishes through a fault proxy that blackholes the link; the daemon is stopped
with SIGTERM; every event it had in flight must still be unsent in the file, and reach central
after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from buffer.schema import STATE_SENT
from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.scanner import ScannerSimulator
from tests.chaos.faultproxy import FaultProxy
from tests.chaos.workload import FEEDBACK, GOOD
from tests.support import GatewayProcess, scanner_device, wait_until, write_config


def states(db: Path) -> dict[int, int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return dict(conn.execute("SELECT seq, state FROM events"))


def _daemon_behind(
    proxy: FaultProxy, sim: ScannerSimulator, tmp_path: Path, *, publish_timeout: float
) -> tuple[GatewayProcess, Path]:
    """``edge-gateway run`` (not started) with one scanner, reaching the broker through
    ``proxy``; and its buffer file, read directly to see each event's state."""
    cfg = write_config(
        tmp_path / "gateway.toml",
        mqtt_port=proxy.port,
        state_dir=tmp_path / "state",
        mqtt={"publish_timeout": publish_timeout, "keepalive": 30},
        devices=[scanner_device("dock", sim.link, **FEEDBACK)],
    )
    return GatewayProcess(cfg, tmp_path / "gateway.log"), tmp_path / "state" / "buffer.db"


async def test_sigterm_with_pubacks_held_back_leaves_in_flight_events_unsent(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector
) -> None:
    async with (
        FaultProxy(broker.host, broker.port) as proxy,
        ScannerSimulator(tmp_path / "scan") as sim,
    ):
        daemon, db = _daemon_behind(proxy, sim, tmp_path, publish_timeout=3.0)
        daemon.start()
        try:
            await sim.wait_opened(timeout=15)
            await sim.type_code("FIRST", aim="")
            assert await central.wait_for(1, timeout=15), "the link works before the fault"
            # Central having it is not the gateway having its PUBACK: that may still be on its
            # way through the proxy, and the blackhole would hold it back too.
            await wait_until(lambda: states(db).get(1, 0) >= STATE_SENT, timeout=10)
            proxy.blackhole()
            for n in range(5):
                before = len(sim.feedback_bytes())
                await sim.type_code(f"HELD{n}", aim="")
                got = await sim.wait_feedback(lambda b, k=before: len(b) > k, timeout=5)
                assert got[before:].startswith(GOOD), "stored, so good at the stored level"
        finally:
            code = await asyncio.to_thread(daemon.terminate, 30)
        assert code == 0
        held = states(db)
        assert held[1] >= STATE_SENT, "the first event had its PUBACK"
        assert all(held[seq] < STATE_SENT for seq in range(2, 7)), held
        assert central.unique_count() == 1
        proxy.heal()
        daemon.start()
        try:
            assert await central.wait_for(6, timeout=20), central.unique_count()
            await wait_until(lambda: all(s >= STATE_SENT for s in states(db).values()), timeout=10)
        finally:
            assert await asyncio.to_thread(daemon.terminate, 30) == 0
    assert sorted({int(m["seq"]) for m in central.messages}) == [1, 2, 3, 4, 5, 6]


async def test_a_link_lost_with_pubacks_outstanding_releases_them_unsent(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector
) -> None:
    """The link goes silent with publishes in flight: once the daemon gives up on their PUBACKs
    (publish_timeout) the buffer holds them as unsent, not sent (neither on write nor on the
    disconnect), and they are delivered after the link heals."""
    async with (
        FaultProxy(broker.host, broker.port) as proxy,
        ScannerSimulator(tmp_path / "scan") as sim,
    ):
        daemon, db = _daemon_behind(proxy, sim, tmp_path, publish_timeout=1.5)
        daemon.start()
        try:
            await sim.wait_opened(timeout=15)
            proxy.blackhole()
            for n in range(4):
                await sim.type_code(f"HELD{n}", aim="")
            await wait_until(lambda: len(states(db)) == 4, timeout=10)

            def gave_up() -> bool:
                return any(e.get("event") == "mqtt_disconnected" for e in daemon.log_lines())

            await wait_until(gave_up, timeout=15)
            assert all(state < STATE_SENT for state in states(db).values()), states(db)
            proxy.heal()
            assert await central.wait_for(4, timeout=20), central.unique_count()
            await wait_until(lambda: all(s >= STATE_SENT for s in states(db).values()), timeout=10)
        finally:
            assert await asyncio.to_thread(daemon.terminate, 30) == 0
