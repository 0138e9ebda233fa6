"""Found by the third review of issue 13 (fixed; the text says what went wrong before): ``publish_oneshot`` (the ``edge-gateway replay`` CLI's sender) keeps ``window``
(10) publishes awaiting PUBACK whatever the broker's Receive Maximum: on a broker window of 2
gmqtt has one packet id, the second send raises OverflowError -> LinkError("no free MQTT packet
id") and the replay fails as if the broker were unreachable. The daemon's own sharing of a small
window (commit 022cad9) does not cover this path."""

from __future__ import annotations

import asyncio
from pathlib import Path

from buffer.store import Buffer
from gateway.publisher import Publisher, publish_oneshot
from gateway.settings import MqttSection
from tests.integration.gateway.test_publisher import TOPICS, event
from tests.integration.gateway.test_small_broker_window import small_window_broker
from tests.support import cli, write_config


async def test_oneshot_replay_on_a_broker_window_of_two(tmp_path: Path) -> None:
    broker = small_window_broker(tmp_path, 2)
    try:
        mqtt = MqttSection(host=broker.host, port=broker.port, publish_timeout=3.0)

        async def messages():  # type: ignore[no-untyped-def]
            for i in range(20):
                yield ("edge/site-test/gw-test/events/a", f'{{"n": {i}}}'.encode())

        taken = await publish_oneshot(mqtt, client_id="gw-r3-replay", messages=messages())
        assert taken == 20
    finally:
        broker.stop()


async def test_cli_replay_exits_1_on_a_broker_window_of_two(tmp_path: Path) -> None:

    broker = small_window_broker(tmp_path, 2)
    try:
        state = tmp_path / "state"
        cfg = write_config(tmp_path / "gw.toml", mqtt_port=broker.port, state_dir=state, devices=[])
        buf = await Buffer.open(state / "buffer.db", max_bytes=10**9)
        await asyncio.gather(*(buf.append(event("a", i)) for i in range(20)))
        # Delivered by the daemon's publisher first (the CLI replays sent events only).

        pub = Publisher(
            MqttSection(host=broker.host, port=broker.port),
            buf,
            TOPICS,
            client_id="gw-r3-d",
            on_delivered=lambda b: None,
        )
        task = asyncio.create_task(pub.run())
        async with asyncio.timeout(20):
            while (await buf.unsent_count()) > 0:
                await asyncio.sleep(0.05)
        pub.stop()
        await task
        await buf.close()
        done = await asyncio.to_thread(
            cli, "replay", "--config", str(cfg), "--device", "a", "--from-seq", "1"
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "re-published 20 events" in done.stdout, done.stdout + done.stderr
    finally:
        broker.stop()
