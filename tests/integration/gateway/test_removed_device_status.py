"""A device taken out of the config while the gateway was stopped is reported removed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.topics import Topics
from simulators.broker import MosquittoBroker
from simulators.scanner import ScannerSimulator
from tests.support import retained, running_gateway, scanner_device, wait_until, write_config

TOPICS = Topics("edge/site-test/gw-test")


async def test_a_device_removed_while_stopped_is_down_removed_not_left_up(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A reload says "down, removed from the config"; a restart on a config without the device
    must too, or its last retained `up` stays at the broker for good and central monitoring
    sees a healthy device that no longer exists. A second restart does not say it again."""
    state = tmp_path / "state"
    topic = TOPICS.device_status("dock-b")
    async with ScannerSimulator(tmp_path / "a") as a, ScannerSimulator(tmp_path / "b") as b:
        both = [scanner_device("dock-a", a.link), scanner_device("dock-b", b.link)]
        config = write_config(
            tmp_path / "gw.toml", mqtt_port=broker.port, state_dir=state, devices=both
        )
        async with running_gateway(config) as gw:
            await wait_until(
                lambda: gw.device_states.get("dock-b", {}).get("state") == "up", timeout=10
            )
            await wait_until(gw.publisher.connected.is_set, timeout=10)
        assert (await retained(broker, topic))["state"] == "up"

        config = write_config(
            tmp_path / "gw.toml", mqtt_port=broker.port, state_dir=state, devices=both[:1]
        )
        async with running_gateway(config) as gw:
            await wait_until(gw.publisher.connected.is_set, timeout=10)
            await wait_until(lambda: "dock-b" in gw.device_states, timeout=10)
            removed = gw.device_states["dock-b"]
            for _ in range(50):
                if (await retained(broker, topic)) == removed:
                    break
                await asyncio.sleep(0.1)
        assert removed["state"] == "down"
        assert removed["detail"] == "removed from the config"
        assert await retained(broker, topic) == removed

        async with running_gateway(config) as gw:
            await wait_until(gw.publisher.connected.is_set, timeout=10)
            again = gw.device_states["dock-b"]
        assert again == removed, "the same removal, with the time it happened"
        assert await retained(broker, topic) == removed
