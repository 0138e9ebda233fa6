"""Re-confirmation reaches a real gateway whatever the number of unconfirmed events.

The leader confirms again the ledger's verdicts for events a gateway's checkpoint shows still
unconfirmed (a confirm lost when an instance died between commit and publish). It sent up to
1,000 of them in one message, but the gateway takes at most 500 verdicts in at most 64 KiB
(issue 18, finding 4): a larger list was refused whole, round after round, and the events
stayed unconfirmed for good.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from buffer.schema import STATE_CONFIRMED
from central.config import CentralSettings
from gateway.commands import MAX_CONFIRMS
from simulators.broker import MosquittoBroker
from simulators.scanner import ScannerSimulator
from tests.support import running_gateway, wait_until

from .conftest import running_central
from .helpers import gateway_config

SCANS = MAX_CONFIRMS + 100


def states(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [int(s) for (s,) in conn.execute("SELECT state FROM events ORDER BY seq")]


async def test_more_unconfirmed_events_than_one_confirm_holds_are_all_reconfirmed(
    tmp_path: Path,
    broker: MosquittoBroker,
    scanner: ScannerSimulator,
    central_settings: Callable[..., CentralSettings],
    pg_dsn: str,
) -> None:
    """600 scans reach the ledger while central sends no confirms (as if it died after each
    commit); a central that confirms then re-confirms all 600 from the checkpoint."""
    config = gateway_config(tmp_path, broker, scanner, confirm="accepted")
    db = tmp_path / "state" / "buffer.db"
    silent = central_settings(confirm={"enabled": False}, replay={"enabled": False})
    conn = await asyncpg.connect(pg_dsn)
    try:
        async with running_gateway(config) as gw:
            await scanner.wait_opened(timeout=10)
            async with asyncio.timeout(10):
                await gw.publisher.connected.wait()
            async with running_central(silent):
                await scanner.write_raw("".join(f"R{i:05d}\r" for i in range(SCANS)).encode())
                async with asyncio.timeout(60):
                    while await conn.fetchval("SELECT count(*) FROM events") < SCANS:
                        await asyncio.sleep(0.1)
            assert states(db).count(STATE_CONFIRMED) == 0
            counters: Any = gw.inbound.counters
            async with running_central(central_settings()) as central:
                await wait_until(
                    lambda: states(db).count(STATE_CONFIRMED) == SCANS,
                    timeout=60,
                )
                assert central.replayer is not None and central.replayer.reconfirmed >= SCANS
            assert counters["confirm_invalid"] == 0, dict(counters)
    finally:
        await conn.close()
