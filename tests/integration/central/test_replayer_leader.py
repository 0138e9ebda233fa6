"""The replayer's leader loop across a database outage, on a real PostgreSQL.

The database is closed to new connections (``ALLOW_CONNECTIONS false``) and the replayer's
connection terminated: while it cannot reconnect it is not the leader and says so (``leader``
and its gauge), it keeps trying instead of dying (an exception out of ``run`` would end the
whole instance's task group), and once the database is back it takes the lock again before
acting as leader. On stop it closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc

import asyncpg
import pytest

from central.config import CentralSettings
from central.replayer import Replayer
from central.schema import migrate
from tests.support import wait_until

from .conftest import running_central


async def publish_nothing(_topic: str, _body: bytes) -> bool:
    return False


async def others(observer: asyncpg.Connection) -> int:
    """Backends on this database other than the observer's."""
    return int(
        await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    )


async def test_leader_through_a_database_outage(
    pg_dsn: str, recwarn: pytest.WarningsRecorder
) -> None:
    settings = CentralSettings.model_validate(
        {"central": {"instance": "a"}, "database": {"dsn": pg_dsn}, "replay": {"interval": 0.05}}
    )
    observer = await asyncpg.connect(pg_dsn)
    await migrate(observer)
    database = await observer.fetchval("SELECT current_database()")
    # A database cannot be closed from a connection to itself.
    admin = await asyncpg.connect(pg_dsn.rsplit("/", 1)[0] + "/postgres")
    replayer = Replayer(settings, publish_nothing)
    task = asyncio.create_task(replayer.run())
    try:
        await wait_until(lambda: replayer.leader, timeout=10)
        assert replayer.metrics.leader._value.get() == 1

        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await observer.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        await wait_until(lambda: not replayer.leader, timeout=10)
        await asyncio.sleep(0.5)  # several failed reconnects, one interval apart
        assert not task.done(), task
        assert not replayer.leader
        assert replayer.metrics.leader._value.get() == 0

        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await wait_until(lambda: replayer.leader, timeout=10)
        held = await observer.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid::bigint * 4294967296 + objid::bigint = $1",
            settings.replay.lock_key,
        )
        assert held == 1, "leader again without holding the lock"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    try:
        async with asyncio.timeout(5):  # its connection closed, not left to the collector
            while await others(observer):
                await asyncio.sleep(0.05)
    finally:
        await observer.close()
        await admin.close()
    del task
    gc.collect()
    # Closed by the replayer, not terminated by asyncpg's finalizer with a ResourceWarning.
    assert not [w for w in recwarn if "unclosed connection" in str(w.message)]


async def test_an_instance_exports_its_replayer_s_leadership(central_settings) -> None:
    """The leader flag an operator watches is the instance's own metric (the one its
    ``/metrics`` serves), not a gauge of a registry nobody serves."""
    settings = central_settings(replay={"enabled": True})
    async with running_central(settings) as central:
        assert central.replayer is not None
        await wait_until(lambda: central.replayer.leader, timeout=10)
        await wait_until(lambda: central.metrics.leader._value.get() == 1, timeout=5)
