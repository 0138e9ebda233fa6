"""Gaps heal through replay from a real gateway; `edge-central parity` reports and exits."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg

from central.config import load_central_settings
from simulators.broker import MosquittoBroker
from simulators.scanner import ScannerSimulator
from tests.support import ROOT, device_figures, running_gateway

from .conftest import running_central, write_central_config
from .helpers import gateway_config


def parity(config: Path) -> tuple[int, dict]:
    done = subprocess.run(
        [sys.executable, "-m", "central", "parity", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    return done.returncode, json.loads(done.stdout) if done.stdout else {}


async def test_events_published_before_central_existed_are_replayed(
    tmp_path: Path, broker: MosquittoBroker, pg_dsn: str
) -> None:
    """No session yet -> the first scans never reach central; the checkpoint shows the gap, the
    leader asks for it on cmd/replay, the gateway re-publishes, parity is restored."""
    config = write_central_config(
        tmp_path / "central.toml", broker=broker, dsn=pg_dsn, parity={"threshold": 0}
    )
    settings = load_central_settings(config)
    conn = await asyncpg.connect(pg_dsn)
    try:
        async with ScannerSimulator(tmp_path / "scanner0") as scanner:
            gw_config = gateway_config(tmp_path, broker, scanner, confirm="delivered")
            async with running_gateway(gw_config) as gw:
                await scanner.wait_opened(timeout=10)
                async with asyncio.timeout(10):
                    await gw.publisher.connected.wait()
                for n in range(5):
                    await scanner.type_code(f"EARLY-{n}", aim="")
                async with asyncio.timeout(10):  # delivered to the broker: nobody subscribed
                    while (await device_figures(gw, "dock-1")).last_sent_seq < 5:
                        await asyncio.sleep(0.05)
                async with running_central(settings) as central:
                    for n in range(5):
                        await scanner.type_code(f"LATE-{n}", aim="")
                    async with asyncio.timeout(10):
                        while await conn.fetchval("SELECT count(*) FROM events") < 5:
                            await asyncio.sleep(0.05)
                    code, report = parity(config)
                    assert report["devices"][0]["missing"] == [[1, 5]], (code, report)
                    async with asyncio.timeout(30):
                        while await conn.fetchval("SELECT count(*) FROM events") < 10:
                            await asyncio.sleep(0.05)
                    assert central.replayer is not None
                    assert central.replayer.requests >= 1
                    async with asyncio.timeout(10):
                        while (
                            await conn.fetchval(
                                "SELECT count(*) FROM replays WHERE answered IS NOT NULL"
                            )
                            < 1
                        ):
                            await asyncio.sleep(0.05)
                    await asyncio.sleep(1.0)  # a leader round clears out_since
                    code, report = parity(config)
        rows = await conn.fetch(
            "SELECT seq, data->>'code' AS code, historical FROM events ORDER BY seq"
        )
        assert [r["seq"] for r in rows] == list(range(1, 11))
        assert [r["code"] for r in rows[:5]] == [f"EARLY-{n}" for n in range(5)]
        assert code == 0, report
        (device,) = report["devices"]
        assert device["in_parity"] and device["missing"] == [] and device["held"] == 10
    finally:
        await conn.close()
