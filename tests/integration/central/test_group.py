"""Several instances in one share group, leader takeover, PostgreSQL restarts under traffic."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import asyncpg
import pytest

from central.config import load_central_settings
from simulators.broker import MosquittoBroker
from simulators.postgres import PostgresServer
from tests.support import wait_until

from .conftest import running_central, write_central_config
from .helpers import raw, scan_event, topic_of

pytestmark = pytest.mark.slow


async def _count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()


async def test_two_instances_split_the_stream_and_one_leads(
    tmp_path: Path, broker: MosquittoBroker, pg_dsn: str
) -> None:
    """Both instances take a share; the ledger holds each event once; exactly one leads replay,
    and the other takes over within seconds when the leader stops."""
    settings = [
        load_central_settings(
            write_central_config(tmp_path / f"{n}.toml", broker=broker, dsn=pg_dsn, instance=n)
        )
        for n in ("central-a", "central-b")
    ]
    bodies = [scan_event(n, device=f"d{n % 3}") for n in range(1, 1501)]
    async with running_central(settings[0]) as a:
        async with running_central(settings[1]) as b:
            async with aiomqtt.Client(
                broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
            ) as client:
                for body in bodies:
                    await client.publish(topic_of(body), raw(body), qos=1)
            await wait_until(lambda: a.totals["stored"] + b.totals["stored"] >= 1500, timeout=30)
            assert a.totals["stored"] > 0
            assert b.totals["stored"] > 0
            assert a.replayer is not None
            assert b.replayer is not None
            await wait_until(lambda: a.replayer.leader or b.replayer.leader, timeout=5)
            assert a.replayer.leader != b.replayer.leader
            a_leads = a.replayer.leader
        if a_leads:  # b stopped: nothing to take over
            assert a.replayer.leader
        else:
            await wait_until(lambda: a.replayer.leader, timeout=5)
    assert await _count(pg_dsn) == 1500


async def test_postgres_restart_and_kill9_pause_ingest_and_lose_nothing(
    tmp_path: Path, broker: MosquittoBroker, private_postgres: PostgresServer
) -> None:
    """``pg_ctl restart -m fast`` and SIGKILL of the postmaster during traffic: no PUBACK
    without a commit, ingest resumes by itself, every event lands once."""
    dsn = private_postgres.dsn
    config = write_central_config(
        tmp_path / "c.toml", broker=broker, dsn=dsn, replay={"enabled": False}
    )
    settings = load_central_settings(config)
    bodies = [scan_event(n) for n in range(1, 901)]

    async def kill_and_start() -> None:
        await asyncio.to_thread(private_postgres.kill)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(private_postgres.start)

    async with running_central(settings) as central:
        async with aiomqtt.Client(
            broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as client:
            # The outages run while publishing goes on, so batches meet them (publishing
            # paused during an outage met one only by chance once ingest got faster).
            outage: asyncio.Future[None] | None = None
            for n, body in enumerate(bodies):
                await client.publish(topic_of(body), raw(body), qos=1)
                if n == 300:
                    outage = asyncio.ensure_future(asyncio.to_thread(private_postgres.restart))
                elif n == 600:
                    assert outage is not None
                    await outage
                    outage = asyncio.ensure_future(kill_and_start())
                if outage is not None and not outage.done():
                    await asyncio.sleep(0.002)  # spread the traffic over the outage
            assert outage is not None
            await outage
        # A kill -9 during COMMIT can leave a batch committed while the writer saw an error:
        # its retry then finds every row already there and counts them as duplicates, not
        # stored (the likely cause of a stall here once in ~25 runs, while the ledger was
        # whole). What landed is checked in the database below, exactly.
        landed = ("stored", "duplicates")
        try:
            await wait_until(lambda: sum(central.totals[k] for k in landed) >= 900, timeout=60)
        except TimeoutError:
            log = private_postgres.logfile.read_text(errors="replace")[-1500:]
            pytest.fail(
                f"ingest stalled: totals {dict(central.totals)}, queued {len(central._queue)},"
                f" mqtt connected {central.connected.is_set()}; postgres log tail: {log}"
            )
        assert central.totals["retries"] >= 1, "the outages hit a batch"
        assert central.totals["conflicts"] == central.totals["quarantined"] == 0, central.totals
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM events") == 900
        ranges = await conn.fetch("SELECT first_seq, last_seq FROM seq_ranges")
        assert [tuple(r) for r in ranges] == [(1, 900)]
    finally:
        await conn.close()
