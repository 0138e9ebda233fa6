"""Two edge-central processes in one group; kill -9 one at seeded moments while a real gateway
publishes; restart it sometimes, leave it dead other times (its share then waits in its session
and the survivor heals it by replay). End: every event once in the ledger, and every event the
gateway holds as confirmed is a committed, accepted row."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from pathlib import Path

import asyncpg
import pytest

from buffer.event_ids import id_text
from buffer.schema import STATE_CONFIRMED
from simulators.broker import MosquittoBroker
from simulators.scanner import ScannerSimulator
from tests.integration.central.conftest import CentralProcess, write_central_config
from tests.integration.central.helpers import gateway_config
from tests.support import running_gateway, wait_until

from .conftest import knob

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


async def test_kill9_one_of_two_instances_loses_nothing(
    tmp_path: Path, broker: MosquittoBroker, pg_dsn: str, chaos_rng: random.Random
) -> None:
    """``EDGE_CHAOS_CENTRAL_KILLS`` (default 6) kills of one member, restarted half the time."""
    kills = knob("EDGE_CHAOS_CENTRAL_KILLS", 6)
    centrals = [
        CentralProcess(
            write_central_config(
                tmp_path / f"{name}.toml",
                broker=broker,
                dsn=pg_dsn,
                instance=name,
                replay={"replay_after": 1, "interval": 0.2, "min_gap": 1},
            ),
            tmp_path / f"{name}.log",
        )
        for name in ("central-a", "central-b")
    ]
    for central in centrals:
        central.start()
    conn = await asyncpg.connect(pg_dsn)
    db = tmp_path / "state" / "buffer.db"
    try:
        for central in centrals:
            await wait_until(lambda c=central: c.logged("mqtt_connected"), timeout=30)
        async with ScannerSimulator(tmp_path / "scanner0") as scanner:
            config = gateway_config(tmp_path, broker, scanner, confirm="accepted")
            async with running_gateway(config):
                await scanner.wait_opened(timeout=10)
                typed = 0
                victim = centrals[1]
                for n in range(kills):
                    for _ in range(chaos_rng.randint(10, 40)):
                        await scanner.type_code(f"K-{typed}", aim="")
                        typed += 1
                    await asyncio.sleep(chaos_rng.uniform(0.0, 0.2))
                    if victim.process is not None and victim.process.poll() is None:
                        victim.kill9()
                    if chaos_rng.random() < 0.5 or n == kills - 1:
                        victim.start()  # the same client id: its session comes back
                for _ in range(20):
                    await scanner.type_code(f"K-{typed}", aim="")
                    typed += 1
                started = time.monotonic()
                async with asyncio.timeout(120):
                    while await conn.fetchval("SELECT count(*) FROM events") < typed:
                        await asyncio.sleep(0.1)
                    while True:  # every buffered event confirmed (re-confirms included)
                        with sqlite3.connect(db) as sq:
                            states = [s for (s,) in sq.execute("SELECT state FROM events")]
                        if len(states) == typed and set(states) == {STATE_CONFIRMED}:
                            break
                        await asyncio.sleep(0.2)
                healed_s = time.monotonic() - started
        rows = await conn.fetch("SELECT seq, id, status FROM events ORDER BY seq")
        assert [r["seq"] for r in rows] == list(range(1, typed + 1))
        with sqlite3.connect(db) as sq:
            confirmed = {
                id_text(i)
                for (i,) in sq.execute("SELECT id FROM events WHERE state = ?", (STATE_CONFIRMED,))
            }
        accepted = {r["id"] for r in rows if r["status"] == "accepted"}
        assert confirmed <= accepted
        replays = await conn.fetchval("SELECT count(*) FROM replays")
        print({"typed": typed, "kills": kills, "healed_s": round(healed_s, 1), "replays": replays})
    finally:
        await conn.close()
        for central in centrals:
            if central.process is not None and central.process.poll() is None:
                central.terminate()
