"""Feedback decided by the device's policy, through the real pipeline on a real buffer file:
refusals at the cap (issue 13, defect 7)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from buffer.store import Buffer
from drivers.base import DeviceConfig, DeviceEvent, Outcome
from gateway.confirmations import Confirmations
from gateway.pipeline import Pipeline

SCAN = "warehouse.barcode.scanned.v1"
ARRIVED = "warehouse.rfid.tag.arrived.v1"
DEPARTED = "warehouse.rfid.tag.departed.v1"
READING = "warehouse.conveyor.reading.v1"
ALARM = "warehouse.conveyor.alarm.v1"


class Rig:
    """Buffer file, confirmations and pipeline as the daemon wires them; feedback recorded."""

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self.given: list[tuple[str, Outcome]] = []
        self.confirmations = Confirmations(lambda d, o: self.given.append((d, o)))
        self.pipeline = Pipeline(buffer, self.confirmations, site="s", gateway_id="g")

    def emit(self, device: str, driver: str, confirm: str = "stored"):
        config = DeviceConfig(id=device, driver=driver, confirm=confirm, confirm_timeout=60)
        return self.pipeline.emitter(config)

    def stored_ids(self) -> int:
        with sqlite3.connect(self.buffer.path) as conn:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    buffer = await Buffer.open(tmp_path / "buffer.db", max_bytes=2**20)
    rig = Rig(buffer)
    yield rig
    rig.confirmations.close()
    await buffer.close()


async def test_refusals_at_the_cap_follow_each_kind(rig: Rig) -> None:
    """Buffer full: a scan, an arrival and an alarm are refused with bad feedback; a reading
    and a departure are refused without any (the stack light is not a telemetry monitor)."""
    scanner = rig.emit("dock-1", "barcode-serial")
    portal = rig.emit("portal", "rfid-llrp")
    conveyor = rig.emit("conveyor", "modbus")
    rig.buffer.max_bytes = 1
    readings = [DeviceEvent(READING, {"points": {"i": n}}, droppable=True) for n in range(5)]
    assert [await conveyor(r) for r in readings] == [None] * 5
    assert await portal(DeviceEvent(DEPARTED, {"epc": "e1"})) is None
    assert rig.given == [], "no feedback for refused telemetry or departures"
    assert await scanner(DeviceEvent(SCAN, {"code": "A"})) is None
    assert await portal(DeviceEvent(ARRIVED, {"epc": "e2"})) is None
    assert await conveyor(DeviceEvent(ALARM, {"alarm": "jam"})) is None
    assert rig.given == [
        ("dock-1", Outcome.BAD),
        ("portal", Outcome.BAD),
        ("conveyor", Outcome.BAD),
    ]
    assert rig.pipeline.refused == 9


async def test_stored_telemetry_is_not_tracked(rig: Rig) -> None:
    """At ``delivered`` a reading or a departure is never waited on: no timer, no feedback."""
    await rig.emit("conveyor", "modbus", "delivered")(DeviceEvent(READING, {}, droppable=True))
    await rig.emit("portal", "rfid-llrp", "delivered")(DeviceEvent(DEPARTED, {"epc": "e"}))
    assert rig.confirmations.waiting == 0 and rig.given == []
    await rig.emit("portal", "rfid-llrp", "delivered")(DeviceEvent(ARRIVED, {"epc": "e"}))
    assert rig.confirmations.waiting == 1
