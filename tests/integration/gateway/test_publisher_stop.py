"""The publisher's graceful stop, in process, against a real Mosquitto through the fault proxy
(issue 19, mutation run of gateway/publisher.py).

A stop lets the publishes in flight get their PUBACK (bounded by ``publish_timeout``), records
them as sent, then says offline; with nothing in flight it does not wait at all; when the
PUBACKs never come it gives up after ``publish_timeout`` and leaves those events unsent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest

from buffer.store import Buffer
from gateway.publisher import Publisher
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker
from tests.chaos.faultproxy import FaultProxy
from tests.integration.gateway.test_publisher import TOPICS, event
from tests.support import running_publisher


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[Buffer]:
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**8)
    yield buf
    await buf.close()


async def retained_status(broker: MosquittoBroker) -> dict[str, object] | None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(TOPICS.status, qos=1)
        try:
            async with asyncio.timeout(1.0):
                async for message in client.messages:
                    return json.loads(bytes(message.payload))  # type: ignore[no-any-return]
        except TimeoutError:
            return None
    return None


async def until_in_flight(buffer: Buffer, count: int) -> None:
    async with asyncio.timeout(10):
        while (await buffer.stats()).by_state.get("in_flight", 0) < count:
            await asyncio.sleep(0.02)


@asynccontextmanager
async def behind_proxy(
    buffer: Buffer, broker: MosquittoBroker, client_id: str, publish_timeout: float
) -> AsyncIterator[tuple[Publisher, FaultProxy, list[str]]]:
    """A publisher connected through a fault proxy, the ids it told delivered; stopped (and
    its run awaited) on the way out, with the proxy still there."""
    delivered: list[str] = []
    async with FaultProxy(broker.host, broker.port) as proxy:
        mqtt = MqttSection(
            host=proxy.host, port=proxy.port, publish_timeout=publish_timeout, keepalive=60
        )
        try:
            async with running_publisher(
                mqtt,
                buffer,
                TOPICS,
                client_id=client_id,
                on_delivered=lambda batch: delivered.extend(e.id for e in batch),
                stop_within=30,
            ) as pub:
                yield pub, proxy, delivered
        finally:
            proxy.heal()


async def test_stop_waits_for_outstanding_pubacks_and_records_them_sent(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """PUBACKs arrive 1 s late: events in flight when stop is asked end sent and delivered,
    and the retained status then says offline."""
    async with behind_proxy(buffer, broker, "gw-stop-late", 15.0) as (pub, proxy, delivered):
        proxy.delay_replies(1.0)
        for n in range(5):
            await buffer.append(event("dock-1", n))
        await until_in_flight(buffer, 5)
    stats = await buffer.stats()
    assert stats.unsent == 0, stats.by_state
    assert stats.devices["dock-1"].last_sent_seq == 5
    assert sorted(delivered) == [f"dock-1-{n:06d}" for n in range(5)]
    assert pub.store_errors == 0 and pub.reconnects == 0
    status = await retained_status(broker)
    assert status is not None and status["state"] == "offline"


async def test_stop_with_nothing_in_flight_does_not_wait(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """Nothing in flight: the stop publishes offline and returns at once, not after
    ``publish_timeout`` (20 s here)."""
    mqtt = MqttSection(host=broker.host, port=broker.port, publish_timeout=20.0)
    pub = Publisher(mqtt, buffer, TOPICS, client_id="gw-stop-idle", on_delivered=lambda _b: None)
    task = asyncio.create_task(pub.run())
    try:
        async with asyncio.timeout(10):
            await pub.connected.wait()
        await buffer.append(event("dock-1", 0))
        async with asyncio.timeout(10):
            while (await buffer.stats()).unsent:
                await asyncio.sleep(0.02)
    finally:
        pub.stop()
        started = time.monotonic()
        async with asyncio.timeout(30):
            await task
    took = time.monotonic() - started
    assert took < 10, f"stop took {took:.1f} s with nothing in flight"
    status = await retained_status(broker)
    assert status is not None and status["state"] == "offline"


async def test_stop_gives_up_on_pubacks_that_never_come(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """The link is blackholed with events in flight: the stop waits ``publish_timeout`` for
    their PUBACKs, then gives up quietly (no store error), and the events stay unsent."""
    async with FaultProxy(broker.host, broker.port) as proxy:
        mqtt = MqttSection(host=proxy.host, port=proxy.port, publish_timeout=2.0, keepalive=60)
        pub = Publisher(
            mqtt, buffer, TOPICS, client_id="gw-stop-hole", on_delivered=lambda _b: None
        )
        task = asyncio.create_task(pub.run())
        try:
            async with asyncio.timeout(10):
                await pub.connected.wait()
            proxy.blackhole()
            for n in range(3):
                await buffer.append(event("dock-1", n))
            await until_in_flight(buffer, 3)
        finally:
            pub.stop()
            started = time.monotonic()
            # Up to publish_timeout for the PUBACKs, then the offline publish's own timeout.
            async with asyncio.timeout(20):
                await task
            took = time.monotonic() - started
            proxy.heal()
    assert took >= 1.5, f"gave up after {took:.1f} s, before publish_timeout"
    assert pub.store_errors == 0
    stats = await buffer.stats()
    assert stats.by_state.get("pending") == 3, stats.by_state
    assert stats.devices["dock-1"].last_sent_seq == 0


async def test_pubacks_later_than_publish_timeout_still_count_during_the_stop(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """PUBACKs come 6 s late, ``publish_timeout`` is 4 s: the stop waits 4 s for them, then
    publishes offline and waits up to 4 s more for that PUBACK. The events' PUBACKs arrive
    meanwhile (at 6 s), so they are recorded sent, not sent again after the restart."""
    async with behind_proxy(buffer, broker, "gw-stop-later", 4.0) as (pub, proxy, delivered):
        proxy.delay_replies(6.0)
        for n in range(3):
            await buffer.append(event("dock-1", n))
        await until_in_flight(buffer, 3)
    assert sorted(delivered) == [f"dock-1-{n:06d}" for n in range(3)]
    stats = await buffer.stats()
    assert stats.unsent == 0, stats.by_state
    assert pub.store_errors == 0
