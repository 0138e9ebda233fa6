"""Conveyor simulator -> modbus driver -> gateway -> real Mosquitto -> central, through an outage."""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from pathlib import Path

import jsonschema

from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.conveyor import ConveyorSimulator
from simulators.conveyor_model import ConveyorModel
from tests.support import CONVEYOR_POINTS, running_gateway, write_config

SOURCE = "/site-test/gw-test/conveyor-a"
ALARM = "warehouse.conveyor.alarm.v1"
READING = "warehouse.conveyor.reading.v1"


def schema_for(event_type: str) -> dict:
    text = resources.files("gateway").joinpath(f"schemas/{event_type}.json").read_text()
    return json.loads(text)


def config(tmp_path: Path, broker: MosquittoBroker, sim: ConveyorSimulator) -> Path:
    """A technician's config: the device and its points as TOML tables."""
    path = write_config(
        tmp_path / "gateway.toml", mqtt_port=broker.port, state_dir=tmp_path / "state", devices=[]
    )
    device = f"""
[[devices]]
id = "conveyor-a"
driver = "modbus"
host = "127.0.0.1"
port = {sim.port}
interval = 0.05
heartbeat = 30.0
timeout = 0.5
"""
    device += CONVEYOR_POINTS
    path.write_text(path.read_text() + device)
    return path


async def test_jam_raised_and_cleared_during_outage_arrive_once_in_order(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector
) -> None:
    """Jam raised and cleared while the broker is down: exactly two alarms arrive, in order."""
    model = ConveyorModel(noise=0.0)
    async with ConveyorSimulator(model=model, tcp_port=0) as sim:
        gateway = running_gateway(config(tmp_path, broker, sim))
        async with gateway as gw:
            async with asyncio.timeout(10):
                await gw.publisher.connected.wait()
                while gw.device_states.get("conveyor-a", {}).get("state") != "up":
                    await asyncio.sleep(0.02)
            assert await central.wait_for(1, timeout=10), "a first reading before the outage"
            broker.stop()
            model.set_fault("jam", True)
            async with asyncio.timeout(5):
                while gw.drivers["conveyor-a"].health().counters.get("alarms", 0) < 1:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            model.set_fault("jam", False)
            async with asyncio.timeout(5):
                while gw.drivers["conveyor-a"].health().counters.get("alarms", 0) < 2:
                    await asyncio.sleep(0.02)
            stats = await gw.buffer.stats()
            assert stats.unsent >= 2, "both alarms wait in the buffer during the outage"
            stored = stats.devices["conveyor-a"].last_seq
            broker.start()
            assert await central.wait_for(stored, timeout=20), f"got {central.unique_count()}"
    alarms = [m for m in central.messages if m["type"] == ALARM]
    assert [(a["data"]["alarm"], a["data"]["state"]) for a in alarms] == [
        ("jam", "raised"),
        ("jam", "cleared"),
    ]
    assert alarms[0]["seq"] < alarms[1]["seq"]
    assert alarms[0]["data"]["value"] is True and alarms[1]["data"]["value"] is False
    track = central.sources[SOURCE]
    assert track.missing() == [], "nothing dropped: the buffer was far from its cap"
    readings = [m for m in central.messages if m["type"] == READING]
    assert readings and readings[0]["data"]["points"]["belt_speed"]["unit"] == "m/s"
    for message in central.messages:
        jsonschema.validate(
            message, schema_for(message["type"]), format_checker=jsonschema.FormatChecker()
        )
