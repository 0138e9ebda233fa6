"""The MQTT session's start, with the broker's replies held back by a proxy (issue 14, item 1b)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from buffer.store import Buffer, NewEvent
from gateway import publisher
from gateway.publisher import Publisher
from gateway.settings import MqttSection
from gateway.topics import Topics
from simulators.broker import MosquittoBroker
from tests.chaos.faultproxy import FaultProxy
from tests.support import retained, running_publisher

TOPICS = Topics("edge/site-test/gw-test")
DELAY = 0.6


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[Buffer]:
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**9)
    yield buf
    await buf.close()


def body(state: str) -> dict[str, object]:
    return {"state": state, "since": time.time(), "detail": state}


@pytest.mark.parametrize("flip_after", [0.0, 0.5, 1.5, 2.5])
async def test_a_device_change_during_session_setup_is_what_stays_retained(
    buffer: Buffer, broker: MosquittoBroker, flip_after: float
) -> None:
    """A device going up while CONNACK, PUBACKs and SUBACKs are late: `up` ends retained.

    Each reply comes ``DELAY`` s late, so setting up the session (birth, the device's status,
    two subscriptions) takes several ``DELAY``s; the device changes state at a point inside it.
    """
    async with FaultProxy(broker.host, broker.port) as proxy:
        proxy.delay_replies(DELAY)
        mqtt = MqttSection(host=proxy.host, port=proxy.port, reconnect_min=0.05, publish_timeout=5)
        async with running_publisher(
            mqtt,
            buffer,
            TOPICS,
            client_id="gw-setup",
            subscriptions=(TOPICS.confirm, TOPICS.cmd_replay),
            before_run=lambda pub: pub.device_status("dock-1", body("down")),
            connect=False,  # the setup is waited into below
            stop_within=15,
        ) as pub:
            async with asyncio.timeout(10):
                while pub._link is None:  # CONNACK received: the session is being set up
                    await asyncio.sleep(0.005)
            await asyncio.sleep(flip_after * DELAY)
            assert not pub.connected.is_set(), "the change must land during the setup"
            pub.device_status("dock-1", body("up"))
            async with asyncio.timeout(10):
                await pub.connected.wait()
            await asyncio.sleep(3 * DELAY)  # any publish still owed has reached the broker
            assert (await retained(broker, TOPICS.device_status("dock-1")))["state"] == "up"


async def test_statuses_overtaking_each_other_end_with_the_current_one(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """Rapid flips while connected and PUBACKs are late: the last state is the retained one."""
    async with FaultProxy(broker.host, broker.port) as proxy:
        mqtt = MqttSection(host=proxy.host, port=proxy.port, publish_timeout=5)
        async with running_publisher(
            mqtt, buffer, TOPICS, client_id="gw-flips", stop_within=15
        ) as pub:
            try:
                proxy.delay_replies(0.2)
                for n in range(7):
                    pub.device_status("dock-1", body("up" if n % 2 else "down"))
                    await asyncio.sleep(0.03)
                await asyncio.sleep(1.5)
                assert (await retained(broker, TOPICS.device_status("dock-1")))["state"] == "down"
            finally:
                proxy.heal()


async def test_puback_timeout_fires_on_time(buffer: Buffer, broker: MosquittoBroker) -> None:
    """An unanswered publish ends the session ``publish_timeout`` after it was written, not later.

    The event is written 0.1 s after the session starts: a watcher ticking once a second would
    notice it only at the second tick, ~0.9 s late.
    """
    timeout = 1.0
    async with FaultProxy(broker.host, broker.port) as proxy:
        mqtt = MqttSection(
            host=proxy.host, port=proxy.port, publish_timeout=timeout, reconnect_min=5
        )
        async with running_publisher(
            mqtt, buffer, TOPICS, client_id="gw-late", stop_within=15
        ) as pub:
            try:
                await asyncio.sleep(0.1)
                proxy.blackhole()
                render = b'{"seq":%d}'.__mod__
                await buffer.append(NewEvent("e1", "dock-1", "t", "x", False, render))
                async with asyncio.timeout(5):
                    while not pub._in_flight:
                        await asyncio.sleep(0.001)
                _, written = next(iter(pub._in_flight.values()))
                async with asyncio.timeout(5):
                    while pub.connected.is_set():
                        await asyncio.sleep(0.005)
                late = time.monotonic() - written - timeout
                assert -0.05 < late < 0.3, f"fired {late:+.2f} s from publish_timeout"
            finally:
                proxy.heal()


async def test_puback_timeout_below_the_watchers_tick_fires_on_time(
    buffer: Buffer, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``publish_timeout`` (0.3 s) shorter than the PUBACK watcher's idle sleep (5 s here): the
    publish entering the empty window wakes the watcher, so the session ends about 0.3 s after
    the write, not when the watcher's sleep runs out."""
    monkeypatch.setattr(publisher, "ACK_CHECK_INTERVAL", 5.0)
    render = b'{"seq":%d}'.__mod__
    await buffer.append(NewEvent("e1", "dock-1", "t", "x", False, render))
    async with FaultProxy(broker.host, broker.port) as proxy:
        mqtt = MqttSection(
            host=proxy.host, port=proxy.port, publish_timeout=0.3, reconnect_min=5, reconnect_max=5
        )
        times: list[tuple[bool, float]] = []
        ended = asyncio.Event()

        def on_link(up: bool, _since: str) -> None:
            times.append((up, time.monotonic()))
            if up:
                proxy.blackhole()  # set up, and the pending event not written yet
            else:
                ended.set()

        async with running_publisher(
            mqtt,
            buffer,
            TOPICS,
            client_id="gw-short",
            on_link=on_link,
            connect=False,  # its session's end is waited for instead
            stop_within=15,
        ) as pub:
            try:
                with capture_logs() as logs:
                    async with asyncio.timeout(15):
                        await ended.wait()
            finally:
                proxy.heal()
    errors = [e["error"] for e in logs if e["event"] == "mqtt_disconnected"]
    assert errors and errors[0].startswith("no PUBACK for "), errors
    (up, since), (down, until) = times[:2]
    assert up and not down
    assert until - since < 2.5, f"the session lasted {until - since:.2f} s"
    assert pub.reconnects >= 1 and (await buffer.stats()).unsent == 1


async def test_offline_says_when_the_gateway_went_offline(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """A clean stop's offline carries the stop time; the will (a lost link) carries no stale time."""
    async with FaultProxy(broker.host, broker.port) as proxy:
        mqtt = MqttSection(host=proxy.host, port=proxy.port, reconnect_min=5, reconnect_max=5)
        pub = Publisher(mqtt, buffer, TOPICS, client_id="gw-offline", on_delivered=lambda _b: None)
        task = asyncio.create_task(pub.run())
        async with asyncio.timeout(10):
            await pub.connected.wait()
        proxy.cut()  # the broker sees the connection die and publishes the will
        async with asyncio.timeout(10):
            while (await retained(broker, TOPICS.status))["state"] != "offline":
                await asyncio.sleep(0.05)
        assert (await retained(broker, TOPICS.status))["since"] is None
        async with asyncio.timeout(15):
            while not pub.connected.is_set():
                await asyncio.sleep(0.05)
        online = await retained(broker, TOPICS.status)
        assert online["state"] == "online"
        await asyncio.sleep(1.2)
        pub.stop()
        async with asyncio.timeout(15):
            await task
    offline = await retained(broker, TOPICS.status)
    assert offline["state"] == "offline"
    assert isinstance(offline["since"], str) and offline["since"] > str(online["since"])
