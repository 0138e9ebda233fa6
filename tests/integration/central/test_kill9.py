"""kill -9 of edge-central between receipt and commit loses nothing: the broker redelivers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import asyncpg
import pytest

from simulators.broker import MosquittoBroker
from tests.support import wait_until

from .conftest import CentralProcess, write_central_config
from .helpers import raw, scan_event, topic_of

pytestmark = pytest.mark.slow


async def _waiting_on_lock(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database() AND query LIKE '%INSERT INTO events%'"
        )
    )


async def test_kill9_before_commit_then_restart_loses_nothing(
    tmp_path: Path, broker: MosquittoBroker, pg_dsn: str
) -> None:
    """Events received but not committed (the ledger is locked) are not PUBACKed; after kill -9
    and a restart with the same client id, the broker redelivers them and each lands once."""
    config = write_central_config(
        tmp_path / "central.toml", broker=broker, dsn=pg_dsn, replay={"enabled": False}
    )
    central = CentralProcess(config, tmp_path / "central.log")
    central.start()
    admin = await asyncpg.connect(pg_dsn)
    bodies = [scan_event(n) for n in range(1, 301)]
    try:
        await wait_until(lambda: central.logged("mqtt_connected"), timeout=30)
        async with aiomqtt.Client(
            broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as client:
            for body in bodies[:100]:
                await client.publish(topic_of(body), raw(body), qos=1)
            await wait_until(lambda: central.logged("central_started"), timeout=10)
            async with asyncio.timeout(20):
                while await admin.fetchval("SELECT count(*) FROM events") < 100:
                    await asyncio.sleep(0.05)
            # Hold the ledger: the next batch is received and waits for its INSERT.
            lock = admin.transaction()
            await lock.start()
            await admin.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            for body in bodies[100:]:
                await client.publish(topic_of(body), raw(body), qos=1)
            async with asyncio.timeout(20):
                while await _count_waiting(pg_dsn) == 0:
                    await asyncio.sleep(0.05)
            central.kill9()
            await lock.rollback()
        assert await admin.fetchval("SELECT count(*) FROM events") == 100
        central.start()
        async with asyncio.timeout(30):
            while await admin.fetchval("SELECT count(*) FROM events") < 300:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert await admin.fetchval("SELECT count(*) FROM events") == 300
        ids = {r["id"] for r in await admin.fetch("SELECT id FROM events")}
        assert ids == {b["id"] for b in bodies}
        ranges = await admin.fetch("SELECT first_seq, last_seq FROM seq_ranges")
        assert [tuple(r) for r in ranges] == [(1, 300)]
    finally:
        await admin.close()
        central.terminate()


async def _count_waiting(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await _waiting_on_lock(conn)
    finally:
        await conn.close()
