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


def stack_light_config(tmp_path: Path, broker: MosquittoBroker, sim: ConveyorSimulator) -> Path:
    """A conveyor whose motor current changes on every poll, with a stack light for feedback:
    green (coil 0) for good, a red pulse (coil 2) for bad."""
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
feedback_good = {{ table = "coil", address = 0, value = 1 }}
feedback_bad = {{ table = "coil", address = 2, value = 1, pulse = 0.02, reset = 0 }}

[[devices.points]]
name = "motor_current"
table = "input"
address = 1
type = "int16"
scale = 0.01
unit = "A"

[[devices.points]]
name = "jam"
table = "discrete"
address = 1
type = "bool"
role = "alarm"
"""
    path.write_text(path.read_text() + device)
    return path


def red_pulses(sim: ConveyorSimulator) -> int:
    return sum(
        1 for table, address, values in sim.writes if (table, address, values) == ("coil", 2, [1])
    )


async def test_full_buffer_refuses_readings_silently_and_alarms_loudly(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """At the buffer cap, a refused conveyor reading gives no bad pulse on the stack light (it
    used to pulse red on every changed reading), while a refused alarm gets the bad pulse and a
    stored alarm the good light, as the device's feedback policy says (issue 13, defect 7)."""
    model = ConveyorModel(noise=1.0)
    async with (
        ConveyorSimulator(model=model, tcp_port=0) as sim,
        running_gateway(stack_light_config(tmp_path, broker, sim)) as gw,
    ):
        async with asyncio.timeout(10):
            while gw.pipeline.stored["conveyor-a", READING] < 3:
                await asyncio.sleep(0.02)
        assert red_pulses(sim) == 0
        gw.buffer.max_bytes = 1  # full: nothing more fits, and readings are all that could go
        refused = gw.pipeline.refused
        async with asyncio.timeout(10):
            while gw.pipeline.refused < refused + 20:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # a red pulse started by the last refusal would land now
        assert red_pulses(sim) == 0, "refused telemetry is counted, not announced"
        assert gw.pipeline.stored["conveyor-a", ALARM] == 0
        model.set_fault("jam", True)
        async with asyncio.timeout(5):
            while red_pulses(sim) == 0:
                await asyncio.sleep(0.02)
        assert gw.pipeline.stored["conveyor-a", ALARM] == 0, "the alarm was refused"
        green = sum(1 for w in sim.writes if w == ("coil", 0, [1]))
        gw.buffer.max_bytes = 2**30  # room again, the jam still on: the refused raise is retried
        async with asyncio.timeout(5):
            while gw.pipeline.stored["conveyor-a", ALARM] < 1:
                await asyncio.sleep(0.02)
            while sum(1 for w in sim.writes if w == ("coil", 0, [1])) == green:
                await asyncio.sleep(0.02)
        assert red_pulses(sim) == 1, "one refused alarm, one red pulse"
