"""Found by the third review of issue 13 (fixed; the text says what went wrong before): the retain fallback (RetainUnsupportedError -> Publisher._retain = False) is never
undone. A broker that once refused our retained will (0x9A) and is then fixed (retain enabled,
restarted) gets statuses as plain messages for the rest of the daemon's life: the retained
device status on the broker is not the device's state although the session is usable."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiomqtt

from buffer.store import Buffer
from gateway.publisher import Publisher
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker
from tests.integration.gateway.test_publisher import TOPICS
from tests.support import running_publisher


async def retained_or_none(broker: MosquittoBroker, topic: str) -> dict[str, object] | None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(2):
                async for message in client.messages:
                    return dict(json.loads(bytes(message.payload)))  # type: ignore[arg-type]
        except TimeoutError:
            return None
    return None


async def test_retain_fallback_is_undone_when_the_broker_retains_again(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "b")
    plain = broker.config_path.read_text()
    broker.config_path.write_text(plain + "retain_available false\n")
    broker.start()
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**9)
    mqtt = MqttSection(host=broker.host, port=broker.port, reconnect_min=0.05, reconnect_max=0.3)

    def down(pub: Publisher) -> None:
        pub.device_status("dock-1", {"state": "down", "since": time.time(), "detail": ""})

    try:
        async with running_publisher(
            mqtt, buf, TOPICS, client_id="gw-r3-retain", before_run=down, stop_within=15
        ) as pub:
            # The broker is fixed: retained messages available again, restarted on the same port.
            broker.stop()
            broker.config_path.write_text(plain)
            broker.start()
            async with asyncio.timeout(15):
                while pub.reconnects == 0 or not pub.connected.is_set():
                    await asyncio.sleep(0.05)
            pub.device_status("dock-1", {"state": "up", "since": time.time(), "detail": ""})
            await asyncio.sleep(0.5)
            got = await retained_or_none(broker, TOPICS.device_status("dock-1"))
            assert got is not None and got["state"] == "up", (
                f"session usable on a broker that retains, device is up, retained status is {got}"
            )
    finally:
        await buf.close()
        broker.stop()
