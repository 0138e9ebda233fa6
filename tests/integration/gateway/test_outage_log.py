"""A publisher whose broker is away for a while logs the outage once, and once when it ends."""

from __future__ import annotations

import asyncio
from pathlib import Path

from structlog.testing import capture_logs

from buffer.store import Buffer
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker
from tests.chaos.faultproxy import FaultProxy
from tests.integration.gateway.test_publisher import TOPICS
from tests.support import running_publisher


async def test_many_failed_attempts_make_two_lines(tmp_path: Path) -> None:
    """No broker for 1.5 s at a reconnect every ~50 ms (about 30 attempts): one
    ``mqtt_disconnected`` line, then one ``mqtt_connected`` that counts the attempts."""
    broker = MosquittoBroker(tmp_path / "broker")  # its port is chosen, nothing listens yet
    buffer = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**9)
    mqtt = MqttSection(host=broker.host, port=broker.port, reconnect_min=0.02, reconnect_max=0.05)
    with capture_logs() as logs:
        try:
            async with running_publisher(
                mqtt,
                buffer,
                TOPICS,
                client_id="gw-outage",
                connect=False,  # not before the broker starts, below
                stop_within=15,
            ) as publisher:
                await asyncio.sleep(1.5)
                attempts = publisher.reconnects
                broker.start()
                async with asyncio.timeout(10):
                    await publisher.connected.wait()
        finally:
            await buffer.close()
            broker.stop()
    events = [e["event"] for e in logs if str(e["event"]).startswith("mqtt_")]
    assert attempts >= 10, f"only {attempts} attempts: the test did not exercise repetition"
    assert events == ["mqtt_disconnected", "mqtt_connected"], events
    connected = next(e for e in logs if e["event"] == "mqtt_connected")
    assert connected["attempts"] >= attempts


async def test_a_session_the_broker_drops_is_logged_with_its_reason(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A connection reset under a running session: the journal's ``mqtt_disconnected`` line
    says why (``connection lost``), the reason a technician reads and that tells one outage
    from the next (refused, TLS, timeout)."""
    buffer = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**9)
    async with FaultProxy(broker.host, broker.port) as proxy:
        mqtt = MqttSection(host=proxy.host, port=proxy.port, keepalive=60, reconnect_min=0.05)
        with capture_logs() as logs:
            try:
                async with running_publisher(
                    mqtt, buffer, TOPICS, client_id="gw-outage-why", stop_within=15
                ) as publisher:
                    proxy.cut()
                    async with asyncio.timeout(10):
                        while publisher.reconnects == 0:
                            await asyncio.sleep(0.01)
            finally:
                await buffer.close()
    lines = [e for e in logs if e["event"] == "mqtt_disconnected"]
    assert [e["error"] for e in lines] == ["connection lost"], lines
