"""gateway/mqtt_link.py against a real Mosquitto: one PUBACK callback per mid, bounded waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiomqtt
import pytest

from gateway.mqtt_link import LinkError, MqttLink
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker, free_port
from tests.support import wait_until


def section(port: int, **overrides: float) -> MqttSection:
    return MqttSection(host="127.0.0.1", port=port, **overrides)


@pytest.fixture
async def subscriber(broker: MosquittoBroker) -> AsyncIterator[list[bytes]]:
    """Payloads received on ``link/#``, in arrival order."""
    received: list[bytes] = []
    ready = asyncio.Event()

    async def listen() -> None:
        async with aiomqtt.Client(broker.host, broker.port, identifier="link-test-sub") as client:
            await client.subscribe("link/#", qos=1)
            ready.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                received.append(message.payload)

    task = asyncio.create_task(listen())
    async with asyncio.timeout(10):
        await ready.wait()
    yield received
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_every_send_gets_exactly_one_ack_for_its_own_mid(
    broker: MosquittoBroker, subscriber: list[bytes]
) -> None:
    """2000 sends in one burst: each mid acked once, every message arrives, in order."""
    acked: list[int] = []
    link = MqttLink(section(broker.port), "link-test", on_ack=acked.append)
    await link.connect()
    try:
        sent = [link.send(f"link/{n % 3}", f"m{n}".encode()) for n in range(2000)]
        await wait_until(lambda: len(acked) >= 2000, timeout=10)
    finally:
        await link.close()
    assert len(set(sent)) == 2000
    assert sorted(acked) == sorted(sent)
    await wait_until(lambda: len(subscriber) >= 2000, timeout=10)
    assert subscriber == [f"m{n}".encode() for n in range(2000)]


async def test_publish_returns_after_puback_and_fails_once_the_broker_is_gone(
    broker: MosquittoBroker, subscriber: list[bytes]
) -> None:
    link = MqttLink(section(broker.port, publish_timeout=2.0), "link-test")
    await link.connect()
    try:
        await link.publish("link/status", b"online", retain=True)
        await wait_until(lambda: b"online" in subscriber, timeout=5)
        broker.stop()
        async with asyncio.timeout(5):
            await link.lost.wait()
        with pytest.raises(LinkError):
            await link.publish("link/status", b"again")
        with pytest.raises(LinkError):
            link.send("link/x", b"x")
    finally:
        await link.close()


async def test_connecting_to_nothing_is_a_prompt_link_error() -> None:
    link = MqttLink(section(free_port()), "link-test")
    async with asyncio.timeout(5):
        with pytest.raises(LinkError):
            await link.connect()


async def test_a_server_that_never_sends_connack_times_out() -> None:
    """A blackholed broker accepts TCP and says nothing; gmqtt alone would wait forever."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        link = MqttLink(section(port, publish_timeout=0.5), "link-test")
        async with asyncio.timeout(5):
            with pytest.raises(LinkError, match="CONNACK"):
                await link.connect()
        assert accepted, "the connection was made; only the CONNACK was missing"
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_finished_link_reports_no_late_acks(broker: MosquittoBroker) -> None:
    """gmqtt may still parse PUBACKs buffered before a connection died; the next link numbers
    its messages from 1 again, so a late ack handed on would mark the wrong event sent."""
    acked: list[int] = []
    link = MqttLink(section(broker.port), "link-test", on_ack=acked.append)
    await link.connect()
    broker.stop()  # nothing gets acknowledged from here on
    mid = link.send("link/x", b"unacked")
    await link.close()
    link._store.remove_message_by_mid(mid)  # what gmqtt does on a PUBACK it parses late
    assert acked == []
