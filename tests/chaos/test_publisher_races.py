"""Races the chaos runs found, pinned down deterministically so they replay in one second."""

from __future__ import annotations

import asyncio
from pathlib import Path

from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.scanner import ScannerSimulator
from tests.support import running_gateway, scanner_device, write_config


async def test_events_claimed_as_the_session_drops_are_sent_after_reconnect(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector
) -> None:
    """A claim that committed just as the connection died: its events go out after reconnect.

    The window between the claim's commit (in aiosqlite's thread) and the pump resuming is
    widened by a wrapper so the cancellation lands in it every time; the network-fault chaos
    run hits the same window by chance (events left in state 1 with the gateway connected).
    """
    async with ScannerSimulator(tmp_path / "scan") as sim:
        cfg = write_config(
            tmp_path / "gateway.toml",
            mqtt_port=broker.port,
            state_dir=tmp_path / "state",
            devices=[scanner_device("dock", sim.link)],
        )
        async with running_gateway(cfg) as gw:
            async with asyncio.timeout(10):
                await gw.publisher.connected.wait()
            await sim.wait_opened(timeout=10)
            real_claim = gw.buffer.claim
            claimed = asyncio.Event()

            async def claim_then_linger(limit: int, live_after: int | None = None) -> list:
                rows = await real_claim(limit, live_after)
                if rows:
                    claimed.set()
                    await asyncio.sleep(2.0)  # the commit is done; the pump has not resumed
                return rows

            gw.buffer.claim = claim_then_linger  # type: ignore[method-assign]
            await sim.type_code("CLAIMED-AS-LINK-DIES", aim="")
            async with asyncio.timeout(10):
                await claimed.wait()
            await asyncio.to_thread(broker.stop)
            gw.buffer.claim = real_claim  # type: ignore[method-assign]
            await asyncio.to_thread(broker.start)
            delivered = await central.wait_for(1, timeout=5)
            stats = await gw.buffer.stats()
    assert delivered, f"stuck: {stats.by_state}"
