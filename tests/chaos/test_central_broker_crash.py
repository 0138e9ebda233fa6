"""Broker crashes during traffic: Mosquitto loses what it acknowledged since its last save, the
central ledger sees the gaps against the checkpoint and heals them by replay: 0 lost."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import asyncpg
import pytest

from central.config import load_central_settings
from simulators.broker import MosquittoBroker
from simulators.scanner import ScannerSimulator
from tests.integration.central.conftest import running_central, write_central_config
from tests.integration.central.helpers import gateway_config
from tests.support import device_figures, running_gateway

from .conftest import knob

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


async def test_broker_sigkill_gaps_heal_by_replay(
    tmp_path: Path, broker: MosquittoBroker, pg_dsn: str, chaos_rng: random.Random
) -> None:
    """SIGKILL the broker ``EDGE_CHAOS_BROKER_KILLS`` times (default 3) while a real gateway
    publishes scans; in the end every seq the gateway stored is in the ledger exactly once."""
    kills = knob("EDGE_CHAOS_BROKER_KILLS", 3)
    settings = load_central_settings(
        write_central_config(tmp_path / "central.toml", broker=broker, dsn=pg_dsn)
    )
    conn = await asyncpg.connect(pg_dsn)
    try:
        async with ScannerSimulator(tmp_path / "scanner0") as scanner:
            config = gateway_config(tmp_path, broker, scanner, confirm="stored")
            async with running_central(settings), running_gateway(config) as gw:
                await scanner.wait_opened(timeout=10)
                typed = 0
                for _ in range(kills):
                    for _ in range(chaos_rng.randint(20, 60)):
                        await scanner.type_code(f"C-{typed}", aim="")
                        typed += 1
                    await asyncio.sleep(chaos_rng.uniform(0.0, 0.3))
                    broker.kill()
                    await asyncio.sleep(chaos_rng.uniform(0.1, 0.5))
                    await asyncio.to_thread(broker.start)
                for _ in range(20):
                    await scanner.type_code(f"C-{typed}", aim="")
                    typed += 1
                started = time.monotonic()
                async with asyncio.timeout(90):
                    while (await device_figures(gw, "dock-1")).last_seq < typed:
                        await asyncio.sleep(0.05)
                    while await conn.fetchval("SELECT count(*) FROM events") < typed:
                        await asyncio.sleep(0.1)
                healed_s = time.monotonic() - started
                replays = await conn.fetchval("SELECT count(*) FROM replays")
        print({"typed": typed, "kills": kills, "healed_s": round(healed_s, 1), "replays": replays})
        rows = await conn.fetch("SELECT seq FROM events ORDER BY seq")
        assert [r["seq"] for r in rows] == list(range(1, typed + 1))
    finally:
        await conn.close()
