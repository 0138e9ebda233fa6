"""A real gateway -> private Mosquitto -> edge-central -> private PostgreSQL, confirms back."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg

from buffer.schema import STATE_CONFIRMED, STATE_REJECTED
from simulators.broker import MosquittoBroker
from simulators.scanner import ScannerSimulator
from tests.support import running_gateway, scanner_device, wait_until, write_config

from .conftest import running_central

GOOD, BAD = b"G\r", b"B\r"
FEEDBACK = {"feedback": "custom", "feedback_good": "G\r", "feedback_bad": "B\r"}


def states(db: Path) -> dict[int, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT seq, state FROM events"))


async def test_gateway_events_confirmed_through_the_ledger(
    tmp_path: Path, broker: MosquittoBroker, scanner: ScannerSimulator, central_settings, pg_dsn
) -> None:
    """Every scan once in the ledger; accepted/rejected (SKU table) reach the gateway's buffer.

    The good-read beep comes only after central committed, and the buffer rows end confirmed or
    rejected as the ledger says.
    """
    conn = await asyncpg.connect(pg_dsn)
    settings = central_settings(confirm={"rule": "sku"}, replay={"enabled": False})
    config = write_config(
        tmp_path / "gateway.toml",
        mqtt_port=broker.port,
        state_dir=tmp_path / "state",
        devices=[scanner_device("dock-1", scanner.link, confirm="accepted", **FEEDBACK)],
        gateway={"id": "gw-1", "site": "dc-1"},
    )
    db = tmp_path / "state" / "buffer.db"
    try:
        async with running_central(settings), running_gateway(config) as gw:
            await conn.execute("INSERT INTO known_skus VALUES ('SKU-1'), ('SKU-2')")
            await scanner.wait_opened(timeout=10)
            async with asyncio.timeout(10):
                await gw.publisher.connected.wait()
            codes = ["SKU-1", "SKU-2", "NOT-A-SKU"] + ["SKU-1"] * 17
            for code in codes:
                await scanner.type_code(code, aim="")
            await wait_until(lambda: len(states(db)) == 20, timeout=20)
            await wait_until(
                lambda: set(states(db).values()) <= {STATE_CONFIRMED, STATE_REJECTED}, timeout=20
            )
            # The verdicts' feedback follows their commit in the buffer, over the serial line.
            await scanner.wait_feedback(lambda b: GOOD in b and BAD in b, timeout=10)
        rows = await conn.fetch(
            "SELECT seq, status, data->>'code' AS code FROM events ORDER BY seq"
        )
        assert [r["seq"] for r in rows] == list(range(1, 21))
        assert [r["code"] for r in rows] == codes
        assert states(db) == {
            r["seq"]: STATE_REJECTED if r["status"] == "rejected" else STATE_CONFIRMED for r in rows
        }
        assert states(db)[3] == STATE_REJECTED
        source = await conn.fetchval("SELECT DISTINCT source FROM events")
        assert source == "/dc-1/gw-1/dock-1"
    finally:
        await conn.close()
