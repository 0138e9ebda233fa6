"""A group member that died for good keeps receiving its share in its session (Mosquitto, as
EMQX and VerneMQ: eclipse-mosquitto/mosquitto#2662); the survivor heals that by replay."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from central.config import load_central_settings
from simulators.broker import MosquittoBroker
from simulators.scanner import ScannerSimulator
from tests.support import running_gateway

from .conftest import running_central, write_central_config
from .helpers import gateway_config

pytestmark = pytest.mark.slow


async def test_share_stuck_in_a_dead_members_session_is_replayed(
    tmp_path: Path, broker: MosquittoBroker, pg_dsn: str
) -> None:
    """Half the events go to the dead member's session; the leader asks the real gateway for
    them again until the ledger holds every one, exactly once."""
    dead, alive = (
        load_central_settings(
            write_central_config(tmp_path / f"{n}.toml", broker=broker, dsn=pg_dsn, instance=n)
        )
        for n in ("central-dead", "central-alive")
    )
    async with running_central(dead):
        pass  # its persistent session stays in the group, with nobody behind it
    conn = await asyncpg.connect(pg_dsn)
    try:
        async with ScannerSimulator(tmp_path / "scanner0") as scanner:
            config = gateway_config(tmp_path, broker, scanner, confirm="delivered")
            async with running_central(alive), running_gateway(config) as gw:
                await scanner.wait_opened(timeout=10)
                async with asyncio.timeout(10):
                    await gw.publisher.connected.wait()
                for n in range(20):
                    await scanner.type_code(f"CODE-{n}", aim="")
                started = time.monotonic()
                async with asyncio.timeout(60):
                    while await conn.fetchval("SELECT count(*) FROM events") < 20:
                        await asyncio.sleep(0.1)
                healed_s = time.monotonic() - started
                replays = await conn.fetchval("SELECT count(*) FROM replays")
        print({"healed_s": round(healed_s, 1), "replay_requests": replays})
        assert replays >= 1, "the dead member's share was healed by replay"
        rows = await conn.fetch("SELECT seq FROM events ORDER BY seq")
        assert [r["seq"] for r in rows] == list(range(1, 21))
    finally:
        await conn.close()
