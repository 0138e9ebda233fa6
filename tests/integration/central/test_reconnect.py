"""edge-central's MQTT sessions through broker outages, in process (the kill -9 tests run it as
a child process, which mutation testing cannot see): it connects again, backing off from
``reconnect_min`` doubling to ``reconnect_max``, starting again from ``reconnect_min`` after each
session, and ingests what comes after.

Written for survivors of a mutation run of central/service.py (docs/testing.md).
"""

from __future__ import annotations

from typing import Any

import aiomqtt
import asyncpg
from structlog.testing import capture_logs

from tests.support import wait_until

from .conftest import running_central, started_central
from .helpers import raw, scan_event, topic_of


def retries(logs: list[dict[str, Any]], event: str) -> list[float]:
    """The ``retry_s`` of each ``event`` line logged: one per failed attempt, in order."""
    return [line["retry_s"] for line in logs if line["event"] == event]


async def test_central_connects_again_after_each_outage_and_ingests(
    broker, central_settings
) -> None:
    settings = central_settings(
        replay={"enabled": False}, mqtt={"reconnect_min": 0.05, "reconnect_max": 0.2}
    )
    async with running_central(settings) as central:
        for outage in range(2):
            with capture_logs() as logs:
                broker.stop()
                await wait_until(lambda: not central.connected.is_set(), timeout=10)
                await wait_until(lambda: len(retries(logs, "mqtt_unavailable")) >= 4, timeout=10)
                broker.start()
                await wait_until(central.connected.is_set, timeout=10)
            delays = retries(logs, "mqtt_unavailable")
            assert delays[:4] == [0.1, 0.2, 0.2, 0.2], (outage, delays)
            body = scan_event(outage + 1)
            async with aiomqtt.Client(
                broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
            ) as client:
                await client.publish(topic_of(body), raw(body), qos=1)
            stored = outage + 1
            await wait_until(lambda: central.totals["stored"] == stored, timeout=10)  # noqa: B023


async def test_central_started_before_its_broker_connects_once_it_is_up(
    broker, central_settings
) -> None:
    """The broker is not up yet when the instance starts: it keeps trying, backing off from
    ``reconnect_min``, and connects once the broker is there."""
    settings = central_settings(
        replay={"enabled": False}, mqtt={"reconnect_min": 0.05, "reconnect_max": 0.2}
    )
    broker.stop()
    with capture_logs() as logs:
        async with started_central(settings) as (central, task):
            await wait_until(lambda: len(retries(logs, "mqtt_unavailable")) >= 3, timeout=10)
            assert not task.done()
            broker.start()
            await wait_until(central.connected.is_set, timeout=10)
    delays = retries(logs, "mqtt_unavailable")
    assert delays[:3] == [0.05, 0.1, 0.2], delays


async def test_central_started_before_its_database_opens_once_it_accepts(
    broker, central_settings, pg_dsn
) -> None:
    """The database refuses connections when the instance starts (closed for a restore, say):
    it retries, backing off from 0.1 s doubling to ``[database] retry_max``, and starts once
    it may connect, migrating then."""
    settings = central_settings(
        replay={"enabled": False}, database={"retry_max": 0.3, "pool_size": 3}
    )
    probe = await asyncpg.connect(pg_dsn)
    database = await probe.fetchval("SELECT current_database()")
    await probe.close()
    # A database cannot be closed from a connection to itself.
    admin = await asyncpg.connect(pg_dsn.rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        with capture_logs() as logs:
            async with started_central(settings) as (central, task):
                await wait_until(
                    lambda: len(retries(logs, "database_unavailable")) >= 4, timeout=10
                )
                assert not task.done()
                await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
                await wait_until(central.connected.is_set, timeout=10)
                # ``[database] pool_size`` connections at most, one kept open when idle.
                assert central.pool is not None
                assert (central.pool.get_min_size(), central.pool.get_max_size()) == (1, 3)
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()
    delays = retries(logs, "database_unavailable")
    assert delays[:4] == [0.1, 0.2, 0.3, 0.3], delays
    connection = await asyncpg.connect(pg_dsn)
    try:
        assert await connection.fetchval("SELECT count(*) FROM schema_version") >= 1
    finally:
        await connection.close()
