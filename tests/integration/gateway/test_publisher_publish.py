"""``Publisher.publish``, ``publish_checkpoint`` and ``publish_soon`` (the paths of replays,
the checkpoint and command answers) against a real Mosquitto, through the fault proxy where the
broker must be slow (issue 19, mutation run of gateway/publisher.py).

They publish on a session only once it is set up (online status sent, subscriptions made), not
between the CONNACK and then; a replayed event or an answer is not retained; an answer that
cannot be sent is dropped without an error.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from buffer.store import Buffer
from gateway.publisher import NotConnectedError, Publisher
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker, free_port
from tests.chaos.faultproxy import FaultProxy
from tests.integration.gateway.test_publisher import TOPICS
from tests.support import running_publisher

REPLAYED = TOPICS.events("dock-1")


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[Buffer]:
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**8)
    yield buf
    await buf.close()


async def first_message(client: aiomqtt.Client, timeout: float) -> aiomqtt.Message | None:
    try:
        async with asyncio.timeout(timeout):
            async for message in client.messages:
                return message
    except TimeoutError:
        return None
    return None


async def test_publish_waits_for_the_session_to_be_set_up(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """The broker's replies come 3 s late. Central sees the online status as soon as the broker
    has it, while the session still waits for its PUBACK: a replay publish or a checkpoint
    asked for then is refused (not connected), not sent ahead of the session's setup."""
    async with (
        FaultProxy(broker.host, broker.port) as proxy,
        aiomqtt.Client(broker.host, broker.port, identifier="central-setup") as central,
    ):
        await central.subscribe(TOPICS.status, qos=1)
        await central.subscribe(TOPICS.checkpoint, qos=1)
        await central.subscribe(REPLAYED, qos=1)
        mqtt = MqttSection(host=proxy.host, port=proxy.port, publish_timeout=20.0, keepalive=60)
        pub = Publisher(mqtt, buffer, TOPICS, client_id="gw-setup", on_delivered=lambda _b: None)
        with pytest.raises(NotConnectedError, match=r"^not connected to the broker$"):
            await pub.publish(REPLAYED, b"too early")
        proxy.delay_replies(3.0)
        task = asyncio.create_task(pub.run())
        try:
            message = await first_message(central, timeout=15)
            assert message is not None and message.topic.matches(TOPICS.status)
            assert json.loads(bytes(message.payload))["state"] == "online"  # type: ignore[arg-type]
            assert not pub.connected.is_set(), "the online status' PUBACK is 3 s away"
            with pytest.raises(NotConnectedError, match=r"^not connected to the broker$"):
                await pub.publish(REPLAYED, b"during setup")
            assert not await pub.publish_checkpoint({"n": "during setup"})
            async with asyncio.timeout(15):
                await pub.connected.wait()
            proxy.heal()
            assert await pub.publish(REPLAYED, b"on the session") is None
            assert await pub.publish_checkpoint({"n": "on the session"})
            got = []
            while (message := await first_message(central, timeout=2)) is not None:
                got.append((str(message.topic), bytes(message.payload)))  # type: ignore[arg-type]
            assert got == [
                (REPLAYED, b"on the session"),
                (TOPICS.checkpoint, json.dumps({"n": "on the session"}).encode()),
            ]
        finally:
            proxy.heal()
            pub.stop()
            async with asyncio.timeout(30):
                await task


async def test_replays_and_answers_are_not_retained(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """A replayed event (``publish``) and a command answer (``publish_soon``) reach who listens
    and are not kept by the broker: a consumer subscribing later must not get them again."""
    mqtt = MqttSection(host=broker.host, port=broker.port)
    async with running_publisher(
        mqtt,
        buffer,
        TOPICS,
        client_id="gw-unretained",
        connect=False,  # waited for below, once central listens
        stop_within=30,
    ) as pub:
        async with aiomqtt.Client(broker.host, broker.port, identifier="central-now") as central:
            await central.subscribe(REPLAYED, qos=1)
            await central.subscribe(TOPICS.cmd_result, qos=1)
            async with asyncio.timeout(10):
                await pub.connected.wait()
            assert await pub.publish(REPLAYED, b"replayed") is None
            pub.publish_soon(TOPICS.cmd_result, b"answer")
            got = set()
            async with asyncio.timeout(10):
                async for message in central.messages:
                    got.add((str(message.topic), bytes(message.payload)))  # type: ignore[arg-type]
                    if len(got) == 2:
                        break
            assert got == {(REPLAYED, b"replayed"), (TOPICS.cmd_result, b"answer")}
        async with aiomqtt.Client(broker.host, broker.port, identifier="central-later") as later:
            await later.subscribe(REPLAYED, qos=1)
            await later.subscribe(TOPICS.cmd_result, qos=1)
            assert await first_message(later, timeout=1.0) is None, "nothing retained"


async def test_an_answer_that_cannot_be_sent_is_dropped_quietly(buffer: Buffer) -> None:
    """No session: the answer is dropped, and nothing reaches the event loop's error handler
    (no "Task exception was never retrieved", no failing callback) to be logged as a fault."""
    mqtt = MqttSection(host="127.0.0.1", port=free_port())
    pub = Publisher(mqtt, buffer, TOPICS, client_id="gw-dropped", on_delivered=lambda _b: None)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        for _ in range(3):
            pub.publish_soon(TOPICS.cmd_result, b"answer")
        for _ in range(20):
            await asyncio.sleep(0)
        gc.collect()
        await asyncio.sleep(0.05)
    finally:
        loop.set_exception_handler(None)
    assert errors == []


async def test_a_checkpoint_without_its_puback_is_not_reported_sent(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """The link goes silent: the checkpoint's publish gets no PUBACK within ``publish_timeout``
    and ``publish_checkpoint`` says it was not sent (housekeeping then tries again)."""
    async with FaultProxy(broker.host, broker.port) as proxy:
        mqtt = MqttSection(host=proxy.host, port=proxy.port, publish_timeout=1.5, keepalive=60)
        async with running_publisher(
            mqtt, buffer, TOPICS, client_id="gw-cp-hole", stop_within=30
        ) as pub:
            try:
                proxy.blackhole()
                async with asyncio.timeout(15):
                    assert not await pub.publish_checkpoint({"n": 1})
            finally:
                proxy.heal()
