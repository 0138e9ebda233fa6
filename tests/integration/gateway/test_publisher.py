"""The publisher against a real Mosquitto and a real SQLite buffer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from structlog.testing import capture_logs

from buffer.store import Buffer, NewEvent
from drivers.backoff import Backoff
from gateway import publisher as publisher_module
from gateway.events import render_event
from gateway.publisher import LIVE_FIRST_BACKLOG, Publisher
from gateway.settings import MqttSection
from gateway.topics import Topics
from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from tests.chaos.faultproxy import FaultProxy
from tests.support import running_publisher, wait_until

TOPICS = Topics("edge/site-test/gw-test")


def event(device: str, n: int) -> NewEvent:
    event_id = f"{device}-{n:06d}"

    def render(seq: int) -> bytes:
        return render_event(
            event_id=event_id,
            source=f"/site-test/gw-test/{device}",
            type_="warehouse.barcode.scanned.v1",
            time_="2026-11-24T00:00:00.000000Z",
            seq=seq,
            data={"code": str(n)},
        )

    return NewEvent(event_id, device, "t", "warehouse.barcode.scanned.v1", False, render)


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[Buffer]:
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**9)
    yield buf
    await buf.close()


@pytest.fixture
async def publisher(buffer: Buffer, broker: MosquittoBroker) -> AsyncIterator[Publisher]:
    mqtt = MqttSection(host=broker.host, port=broker.port, reconnect_min=0.05, reconnect_max=0.3)
    delivered: list[str] = []
    async with running_publisher(
        mqtt,
        buffer,
        TOPICS,
        client_id="gw-test",
        on_delivered=lambda b: delivered.extend(e.id for e in b),
        before_run=lambda pub: setattr(pub, "delivered_ids", delivered),
        connect=False,
        stop_within=15,
    ) as pub:
        yield pub


async def test_events_arrive_once_in_seq_order_and_are_marked_sent(
    buffer: Buffer, publisher: Publisher, central: CentralCollector
) -> None:
    """300 events from two devices: each arrives, per device in seq order, then state is sent."""
    await asyncio.gather(*(buffer.append(event("a" if i % 2 else "b", i)) for i in range(300)))
    assert await central.wait_for(300, timeout=20)
    for source, track in central.sources.items():
        order = [m["seq"] for m in central.messages if m["source"] == source]
        assert order == sorted(order), f"{source} out of order"
        assert track.missing() == [] and track.duplicates == 0
    async with asyncio.timeout(10):
        while (await buffer.stats()).by_state["sent"] < 300:
            await asyncio.sleep(0.05)
    assert len(publisher.delivered_ids) == 300  # type: ignore[attr-defined]
    assert not any(m.get("historical") for m in central.messages)


async def test_broker_outage_backlog_drains_and_live_events_overtake(
    buffer: Buffer, publisher: Publisher, central: CentralCollector, broker: MosquittoBroker
) -> None:
    """A large backlog drains after the outage and live events overtake it, flagged right.

    Required, not merely allowed: the live-first order is the guarantee that a worker scanning
    after an outage is not held behind minutes of backlog (issue 19: only one unit test guarded
    it). 10,000 backlog events take far longer to drain than the first live event takes to commit.
    """
    async with asyncio.timeout(10):
        await publisher.connected.wait()
    broker.stop()
    backlog = 10_000
    await asyncio.gather(*(buffer.append(event("a", i)) for i in range(backlog)))
    assert (await buffer.stats()).unsent == backlog
    broker.start()
    async with asyncio.timeout(10):
        await publisher.connected.wait()
    for i in range(backlog, backlog + 20):
        await buffer.append(event("a", i))
    ok = await central.wait_for(backlog + 20, timeout=30)
    assert ok, (central.unique_count(), (await buffer.stats()).by_state)
    track = central.sources["/site-test/gw-test/a"]
    assert track.missing() == []
    assert track.conflicting == 0
    order = [m["seq"] for m in central.messages]
    historical = [m["seq"] for m in central.messages if m.get("historical")]
    assert all(seq <= backlog for seq in historical), "only backlog events may be historical"
    first_live = min(i for i, seq in enumerate(order) if seq > backlog)
    last_backlog = max(i for i, seq in enumerate(order) if seq <= backlog)
    assert first_live < last_backlog, "live events must overtake a large backlog"
    assert historical, "backlog sent after live events must say historical"
    assert min(historical) > order[first_live - 1] if first_live else True


async def test_retained_status_online_then_offline_on_stop(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """Birth is a retained online; a clean stop leaves a retained offline."""
    mqtt = MqttSection(host=broker.host, port=broker.port)
    pub = Publisher(mqtt, buffer, TOPICS, client_id="gw-status", on_delivered=lambda _b: None)
    task = asyncio.create_task(pub.run())
    async with asyncio.timeout(10):
        await pub.connected.wait()
    assert (await retained(broker, TOPICS.status))["state"] == "online"
    pub.stop()
    async with asyncio.timeout(10):
        await task
    assert (await retained(broker, TOPICS.status))["state"] == "offline"


async def retained(broker: MosquittoBroker, topic: str) -> dict:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                return json.loads(bytes(message.payload))  # type: ignore[arg-type]
    raise AssertionError("no retained message")


def test_backoff_has_jitter_and_a_cap() -> None:
    """Delays grow to the cap and are spread, so gateways do not reconnect in lockstep."""
    backoff = Backoff(0.5, 8.0)
    first = [backoff.next() for _ in range(50)]
    assert all(0.5 <= d <= 8.0 for d in first)
    assert len({round(d, 3) for d in first}) > 40


async def test_a_backlog_drained_without_live_events_is_not_historical(
    buffer: Buffer, broker: MosquittoBroker, central: CentralCollector
) -> None:
    """A backlog larger than ``LIVE_FIRST_BACKLOG`` drains live-first, but with no live event
    arriving nothing overtakes it: every event goes out in seq order, none flagged historical."""
    backlog = LIVE_FIRST_BACKLOG + 500
    await asyncio.gather(*(buffer.append(event("a", i)) for i in range(backlog)))
    mqtt = MqttSection(host=broker.host, port=broker.port)
    async with running_publisher(
        mqtt, buffer, TOPICS, client_id="gw-drain", connect=False, stop_within=30
    ) as pub:
        assert await central.wait_for(backlog, timeout=60), central.unique_count()
        await wait_until(lambda: not pub.draining, timeout=5)  # the drain is over, and said so
    assert not [m["seq"] for m in central.messages if m.get("historical")]
    assert [m["seq"] for m in central.messages] == list(range(1, backlog + 1))


async def test_a_backlog_of_exactly_live_first_backlog_is_no_drain(
    buffer: Buffer, broker: MosquittoBroker, central: CentralCollector
) -> None:
    """A drain (live first, ``draining`` in the checkpoint) is for a backlog larger than
    ``LIVE_FIRST_BACKLOG``; one of exactly that many goes out as usual."""
    await asyncio.gather(*(buffer.append(event("a", i)) for i in range(LIVE_FIRST_BACKLOG)))
    mqtt = MqttSection(host=broker.host, port=broker.port)
    with capture_logs() as logs:
        async with running_publisher(
            mqtt, buffer, TOPICS, client_id="gw-no-drain", connect=False, stop_within=30
        ):
            assert await central.wait_for(LIVE_FIRST_BACKLOG, timeout=60)
    assert not [line for line in logs if line["event"] == "backlog_drain_started"]


async def test_a_small_backlog_goes_out_before_live_events(
    buffer: Buffer, broker: MosquittoBroker, central: CentralCollector
) -> None:
    """A backlog of at most ``LIVE_FIRST_BACKLOG`` keeps strict seq order: events scanned while
    it drains (2 in flight at a time, PUBACKs 0.1 s late) wait behind it, none overtakes."""
    await asyncio.gather(*(buffer.append(event("a", i)) for i in range(30)))
    async with FaultProxy(broker.host, broker.port) as proxy:
        proxy.delay_replies(0.1)
        mqtt = MqttSection(host=proxy.host, port=proxy.port, max_inflight=2, keepalive=60)
        async with running_publisher(
            mqtt, buffer, TOPICS, client_id="gw-small", connect=False, stop_within=30
        ) as pub:
            await wait_until(lambda: bool(pub._in_flight), timeout=10)  # the drain has begun
            for i in range(30, 35):
                await buffer.append(event("a", i))
            assert await central.wait_for(35, timeout=30), central.unique_count()
    assert [m["seq"] for m in central.messages] == list(range(1, 36))
    assert not any(m.get("historical") for m in central.messages)


async def test_a_drain_ends_with_its_backlog_while_live_events_keep_coming(
    buffer: Buffer, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain is over once the backlog is sent, whatever live events still wait: with one
    scanned every 20 ms and PUBACKs 0.5 s late, some live event is always in flight, yet
    ``draining`` goes false (and ``backlog_drain_finished`` is logged) while they keep coming.
    ``LIVE_FIRST_BACKLOG`` is lowered to 10 so that an 11-event backlog is a drain."""
    monkeypatch.setattr(publisher_module, "LIVE_FIRST_BACKLOG", 10)
    for i in range(11):
        await buffer.append(event("a", i))
    async with FaultProxy(broker.host, broker.port) as proxy:
        proxy.delay_replies(0.5)
        mqtt = MqttSection(host=proxy.host, port=proxy.port, keepalive=60)
        with capture_logs() as logs:
            async with running_publisher(
                mqtt, buffer, TOPICS, client_id="gw-drain-end", connect=False, stop_within=30
            ) as pub:
                await wait_until(lambda: pub.draining, timeout=10)
                n = 11
                async with asyncio.timeout(4):
                    while pub.draining:
                        await buffer.append(event("a", n))
                        n += 1
                        await asyncio.sleep(0.02)
                ended_after = n - 11
                for _ in range(10):  # and live events still come after the drain's end
                    await buffer.append(event("a", n))
                    n += 1
                    await asyncio.sleep(0.02)
    assert ended_after > 0, "the backlog cannot be sent before a live event was scanned"
    assert [e["event"] for e in logs if str(e["event"]).startswith("backlog_drain")] == [
        "backlog_drain_started",
        "backlog_drain_finished",
    ]
