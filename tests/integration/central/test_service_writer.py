"""edge-central's writer and confirms on real parts (Mosquitto, PostgreSQL), in process.

Written for the survivors of a mutation run (docs/testing.md): the PUBACK held until the batch
commits, the retries of a batch that failed, ``[ingest] batch_max``, ``[confirm] batch_max``
and ``[confirm] enabled`` were not pinned by the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import aiomqtt
import asyncpg
import pytest

from central.rules import AcceptAll
from central.service import Central
from central.validate import Event
from tests.support import wait_until

from .conftest import running_central
from .helpers import raw, scan_event, topic_of


class GatedRule:
    """Accepts everything, once ``gate`` is open; the first ``failures`` calls raise."""

    def __init__(self, failures: int = 0, error: type[Exception] = RuntimeError) -> None:
        self.gate = asyncio.Event()
        self.failures = failures
        self.error = error
        self.calls = 0
        self.waiting = asyncio.Event()

    async def verdicts(self, conn: Any, events: Sequence[Event]) -> list[str | None]:
        self.calls += 1
        self.waiting.set()
        await self.gate.wait()
        if self.calls <= self.failures:
            raise self.error("the item master is down")
        return await AcceptAll().verdicts(conn, events)


async def _count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events"))
    finally:
        await conn.close()


async def _publish(broker, bodies: list[dict]) -> None:
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        for body in bodies:
            await client.publish(topic_of(body), raw(body), qos=1)


async def _queued(broker, settings, bodies: list[dict]) -> None:
    """The session exists and holds ``bodies``: they arrive at once when it comes back."""
    async with running_central(settings):
        pass
    await _publish(broker, bodies)


@pytest.mark.parametrize("error", [RuntimeError, OSError])
async def test_no_puback_before_the_commit_and_none_for_a_failed_batch(
    broker, central_settings, pg_dsn, error
) -> None:
    """While the batch's transaction waits (and then fails twice: a bug, or the database
    away), every message of it stays unacknowledged and uncommitted; the third attempt commits
    them and they are acknowledged."""
    settings = central_settings(replay={"enabled": False})
    rule = GatedRule(failures=2, error=error)
    bodies = [scan_event(n) for n in range(1, 6)]
    async with running_central(settings, rule=rule) as central:
        await _publish(broker, bodies)
        async with asyncio.timeout(20):
            await rule.waiting.wait()
        link = central._link
        assert link is not None
        await wait_until(lambda: link.unacknowledged == len(central._queue) > 0, timeout=20)
        assert await _count(pg_dsn) == 0
        assert central.totals["stored"] == 0
        queued = len(central._queue)
        rule.gate.set()  # the first attempts fail now; the third commits
        await wait_until(lambda: central.totals["stored"] == len(bodies), timeout=30)
        await wait_until(lambda: link.unacknowledged == 0, timeout=20)
        assert central.totals["retries"] == 2
        assert central.metrics.batch_failures._value.get() == 2
        assert rule.calls >= 3
        assert queued >= 1
        assert central._queue == []
    assert await _count(pg_dsn) == len(bodies)


async def test_batches_are_at_most_batch_max(broker, central_settings, pg_dsn) -> None:
    """``[ingest] batch_max = 1``: a backlog arriving at once still commits one message per
    batch."""
    settings = central_settings(replay={"enabled": False}, ingest={"batch_max": 1})
    bodies = [scan_event(n) for n in range(1, 21)]
    await _queued(broker, settings, bodies)
    async with running_central(settings) as central:
        await wait_until(lambda: central.totals["stored"] == len(bodies), timeout=30)
        assert central.totals["batches"] == len(bodies)
        # each commit's duration is observed: 20 of them, none near a minute
        histogram = central.metrics.commit_seconds
        assert 0 < histogram._sum.get() < 60 * len(bodies)
    assert await _count(pg_dsn) == len(bodies)


async def test_confirms_are_chunked_and_counted(broker, central_settings) -> None:
    """``[confirm] batch_max = 2``: no confirm message carries more than two verdicts; every
    event gets exactly one, and the totals and /metrics count them."""
    settings = central_settings(replay={"enabled": False}, confirm={"batch_max": 2})
    bodies = [scan_event(n) for n in range(1, 12)]
    await _queued(broker, settings, bodies)
    messages: list[list[dict]] = []
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe("edge/s1/gw1/confirm", qos=1)

        async def listen() -> None:
            async for message in client.messages:
                messages.append(json.loads(message.payload))  # noqa: PERF401 - as they come

        listener = asyncio.create_task(listen())
        try:
            async with running_central(settings) as central:
                await wait_until(lambda: central.totals["stored"] == len(bodies), timeout=30)
                await wait_until(lambda: sum(map(len, messages)) >= len(bodies), timeout=30)
                await wait_until(lambda: not central._confirming, timeout=30)
                assert central.totals["confirms"] == len(bodies)
                assert central.metrics.confirms._value.get() == len(bodies)
                assert central.totals["batches"] < len(bodies)  # some batch held several
        finally:
            listener.cancel()
    assert all(1 <= len(m) <= 2 for m in messages), [len(m) for m in messages]
    assert sorted(v["id"] for m in messages for v in m) == sorted(b["id"] for b in bodies)
    assert any(len(m) == 2 for m in messages)


async def test_no_confirms_when_disabled(broker, central_settings) -> None:
    """``[confirm] enabled = false``: events commit, nothing is published on confirm."""
    settings = central_settings(replay={"enabled": False}, confirm={"enabled": False})
    bodies = [scan_event(n) for n in range(1, 4)]
    topics: list[str] = []
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe("edge/+/+/confirm", qos=1)
        await client.subscribe("marker", qos=1)

        async def listen() -> None:
            async for message in client.messages:
                topics.append(str(message.topic))  # noqa: PERF401 - as they come

        listener = asyncio.create_task(listen())
        try:
            async with running_central(settings) as central:
                await _publish(broker, bodies)
                await wait_until(lambda: central.totals["stored"] == len(bodies), timeout=30)
                await wait_until(lambda: not central._confirming, timeout=30)
                # sent after every confirm task ended: confirms, had any gone out, come first
                await client.publish("marker", b"end", qos=1)
                await wait_until(lambda: "marker" in topics, timeout=20)
                assert central.totals["confirms"] == 0
        finally:
            listener.cancel()
    assert topics == ["marker"]


async def test_publish_goes_through_the_link_while_connected(broker, central_settings) -> None:
    """The replayer's publish: True once the broker has it, False with no link."""
    settings = central_settings(replay={"enabled": False})
    central = Central(settings)
    assert await central._publish("edge/s1/gw1/cmd/replay", b"{}") is False
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe("edge/s1/gw1/cmd/replay", qos=1)
        async with running_central(settings) as running:
            assert await running._publish("edge/s1/gw1/cmd/replay", b'{"x": 1}') is True
            async with asyncio.timeout(20):
                async for message in client.messages:
                    assert message.payload == b'{"x": 1}'
                    break


async def test_the_pool_hands_a_connection_back_without_a_reset_round_trip(central_settings):
    """The writer's pool skips asyncpg's reset query (a round trip per batch on the accepted
    path), and still rolls back a transaction left open."""
    pool = await Central(central_settings()).open_database()
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET application_name = 'kept'")
            pid = conn.get_server_pid()
            left_open = conn.transaction()
            await left_open.start()
            await conn.execute("CREATE TEMP TABLE t_left_open (x int)")
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == pid, "the same connection, for the check below"
            assert await conn.fetchval("SHOW application_name") == "kept", "no RESET ALL sent"
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.t_left_open')") is None
    finally:
        await pool.close()
