"""The modbus driver against the pymodbus conveyor simulator, over TCP and RTU (pty cable)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from drivers.base import DeviceEvent, Outcome, StoredEvent
from drivers.modbus.config import ModbusConfig
from drivers.modbus.decode import encode_raw
from drivers.modbus.driver import ALARM_TYPE, READING_TYPE, ModbusDriver
from simulators.conveyor import ConveyorSimulator
from simulators.conveyor_model import ConveyorModel
from tests import support

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

TIMEOUT = 5.0
SPEED = {"name": "belt_speed", "table": "input", "address": 0, "scale": 0.001, "unit": "m/s"}
SPEED_F = {"name": "belt_speed_f", "table": "input", "address": 4, "type": "float32"}
CARTONS = {
    "name": "cartons",
    "table": "input",
    "address": 6,
    "type": "uint32",
    "order": "CDAB",
    "role": "counter",
}
CARTONS16 = {"name": "cartons16", "table": "input", "address": 8, "role": "counter"}
JAM = {"name": "jam", "table": "discrete", "address": 1, "type": "bool", "role": "alarm"}
ESTOP = {"name": "estop", "table": "input", "address": 9, "type": "bit", "bit": 2, "role": "alarm"}


@dataclass
class Harness:
    """A driver wired to a recording emit and status callback, and its simulator."""

    sim: ConveyorSimulator
    events: list[DeviceEvent] = field(default_factory=list)
    emitted_at: list[float] = field(default_factory=list)
    """``time.monotonic()`` of each of ``events``."""
    statuses: list[tuple[bool, str]] = field(default_factory=list)
    driver: ModbusDriver | None = None
    task: asyncio.Task[None] | None = None

    async def emit(self, event: DeviceEvent) -> StoredEvent:
        self.events.append(event)
        self.emitted_at.append(time.monotonic())
        seq = len(self.events)
        return StoredEvent(
            f"ev-{seq}", "conveyor-1", seq, "2026-11-24T00:00:00.000000Z", event.type
        )

    def status(self, up: bool, detail: str) -> None:
        self.statuses.append((up, detail))

    @property
    def readings(self) -> list[dict[str, Any]]:
        return [dict(e.data) for e in self.events if e.type == READING_TYPE]

    @property
    def reading_times(self) -> list[float]:
        return [
            t for e, t in zip(self.events, self.emitted_at, strict=True) if e.type == READING_TYPE
        ]

    @property
    def alarms(self) -> list[dict[str, Any]]:
        return [dict(e.data) for e in self.events if e.type == ALARM_TYPE]

    def latest(self, name: str) -> Any:
        for reading in reversed(self.readings):
            if name in reading["points"]:
                return reading["points"][name]["value"]
        return None

    @property
    def transitions(self) -> list[bool]:
        """Status reports where up/down changed (what the supervisor would log)."""
        out: list[bool] = []
        for up, _ in self.statuses:
            if not out or out[-1] != up:
                out.append(up)
        return out

    def counter(self, name: str) -> int:
        assert self.driver is not None
        return self.driver.health().counters.get(name, 0)


wait_until = functools.partial(support.wait_until, timeout=TIMEOUT)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    points: list[dict[str, Any]],
    *,
    rtu: bool = False,
    model: ConveyorModel | None = None,
    **config: Any,
) -> AsyncIterator[Harness]:
    """Simulator + driver task; on exit run() must still be running, then both stop."""
    model = model or ConveyorModel(noise=0.0)
    if rtu:
        sim = ConveyorSimulator(model=model, rtu_link=tmp_path / "ttyConveyor")
    else:
        sim = ConveyorSimulator(model=model, tcp_port=0)
    await sim.start()
    where = (
        {"serial_port": str(sim.link), "baudrate": 115200}
        if rtu
        else {"host": "127.0.0.1", "port": sim.port}
    )
    settings = {
        "interval": 0.02,
        "timeout": 0.3,
        "retries": 0,
        "reconnect_min": 0.02,
        "reconnect_max": 0.1,
        **where,
        **config,
    }
    cfg = ModbusConfig.model_validate(
        {"id": "conveyor-1", "driver": "modbus", "points": points, **settings}
    )
    harness = Harness(sim)
    harness.driver = ModbusDriver(cfg, emit=harness.emit, report_status=harness.status)
    harness.task = asyncio.create_task(harness.driver.run())
    try:
        yield harness
        assert not harness.task.done(), "run() returned or raised"
    finally:
        harness.task.cancel()
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(harness.task, return_exceptions=True)
        await harness.driver.stop()
        await sim.close()
    assert harness.task.cancelled()


@pytest.mark.parametrize("rtu", [False, True], ids=["tcp", "rtu"])
async def test_polls_conveyor_values(tmp_path, rtu):
    """Belt speed (scaled uint16 and float32), the CDAB carton counter and status bits arrive."""
    model = ConveyorModel(noise=0.0)
    model.speed = model.setpoint  # at speed from the start: a flat line
    model.cartons = 70000
    model.frozen = True
    model.set_fault("estop", False)
    async with running(
        tmp_path, [SPEED, SPEED_F, CARTONS, CARTONS16, JAM, ESTOP], rtu=rtu, model=model
    ) as h:
        await wait_until(lambda: h.readings)
        first = h.readings[0]
        assert first["reason"] == "change" and first["group"] == "default"
        assert first["points"]["belt_speed"] == {"value": pytest.approx(1.5), "unit": "m/s"}
        assert first["points"]["belt_speed_f"]["value"] == pytest.approx(1.5)
        assert first["points"]["cartons"] == {"value": 70000, "delta": 0}
        assert first["points"]["cartons16"]["value"] == 70000 - 65536
        assert set(first["points"]) == {"belt_speed", "belt_speed_f", "cartons", "cartons16"}
        assert h.transitions == [True]
        assert h.alarms == []
        await asyncio.sleep(0.2)
        assert len(h.readings) == 1, "flat signal: nothing more before the heartbeat"
        assert h.counter("reads") >= 5


TYPED = [
    ("int16", -12345, "ABCD"),
    ("uint16", 54321, "ABCD"),
    ("int32", -123456789, "CDAB"),
    ("uint32", 3000000000, "BADC"),
    ("float32", -273.25, "DCBA"),
    ("int64", -1234567890123, "CDAB"),
    ("uint64", 2**63 + 11, "DCBA"),
    ("float64", 6.02214076e23, "BADC"),
]


async def test_every_type_and_order_over_the_wire(tmp_path):
    """Known register images in the simulator's scratch area decode right after a real read."""
    model = ConveyorModel(noise=0.0, frozen=True)
    points, address = [], 100
    for index, (type_, value, order) in enumerate(TYPED):
        model.set_registers("holding", address, encode_raw(value, type_, order))
        points.append(
            {
                "name": f"p{index}",
                "address": address,
                "type": type_,
                "order": order,
                "scale": 2.0 if type_ == "int16" else 1.0,
            }
        )
        address += 4
    model.set_registers("holding", 140, [0b100])
    points.append({"name": "flag", "address": 140, "type": "bit", "bit": 2})
    async with running(tmp_path, points, model=model) as h:
        await wait_until(lambda: h.readings)
        got = h.readings[0]["points"]
    for index, (type_, value, _) in enumerate(TYPED):
        expected = value * 2.0 if type_ == "int16" else value
        assert got[f"p{index}"]["value"] == pytest.approx(expected), type_
    assert got["flag"]["value"] is True
    assert h.driver.health().counters["reads"] >= 1


async def test_jam_raise_and_clear_and_estop_bit(tmp_path):
    """A jam and an e-stop each give one raise and one clear, in order; the jam stops the belt."""
    async with running(tmp_path, [SPEED, JAM, ESTOP]) as h:
        await wait_until(lambda: h.readings)
        h.sim.model.set_fault("jam", True)
        await wait_until(lambda: len(h.alarms) == 1)
        await asyncio.sleep(0.1)
        h.sim.model.set_fault("jam", False)
        # One at a time: a poll that reads the two points in separate requests may see the
        # e-stop before the jam's clear, and both orders would be right.
        await wait_until(lambda: len(h.alarms) == 2)
        h.sim.model.set_fault("estop", True)
        await wait_until(lambda: len(h.alarms) == 3)
        h.sim.model.set_fault("estop", False)
        await wait_until(lambda: len(h.alarms) == 4)
        await asyncio.sleep(0.1)
    assert [(a["alarm"], a["state"]) for a in h.alarms] == [
        ("jam", "raised"),
        ("jam", "cleared"),
        ("estop", "raised"),
        ("estop", "cleared"),
    ]
    jam_events = [e for e in h.events if e.type == ALARM_TYPE]
    assert all(not e.droppable for e in jam_events)
    assert all(e.droppable for e in h.events if e.type == READING_TYPE)


async def test_counter_rollover_from_the_device(tmp_path):
    """The 16-bit photo-eye counter wrapping 65530 -> 3 is reported as a delta of 9."""
    model = ConveyorModel(noise=0.0, frozen=True)
    model.set_registers("input", 8, [65530])
    async with running(tmp_path, [CARTONS16], model=model) as h:
        await wait_until(lambda: h.readings)
        model.set_registers("input", 8, [3])
        await wait_until(lambda: len(h.readings) == 2)
    assert [r["points"]["cartons16"] for r in h.readings] == [
        {"value": 65530, "delta": 0},
        {"value": 3, "delta": 9},
    ]


async def test_counter_reset_by_the_plc_from_the_upper_half(tmp_path):
    """A PLC resetting its 16-bit counter at 40000 gives 3 cartons and says reset, not 25539."""
    model = ConveyorModel(noise=0.0, frozen=True)
    model.set_registers("input", 8, [40000])
    async with running(tmp_path, [CARTONS16], model=model) as h:
        await wait_until(lambda: h.readings)
        model.set_registers("input", 8, [3])
        await wait_until(lambda: len(h.readings) == 2)
    assert [r["points"]["cartons16"] for r in h.readings] == [
        {"value": 40000, "delta": 0},
        {"value": 3, "delta": 3, "reset": True},
    ]
    assert h.counter("counter_resets") == 1


async def test_cartons_flow_with_the_belt(tmp_path):
    """A running simulated line advances its counter; deltas add up to the counter's rise."""
    async with running(tmp_path, [CARTONS], model=ConveyorModel(noise=0.0, seed=1)) as h:
        h.sim.model.speed = 1500.0
        h.sim.model.cartons = 0
        await wait_until(lambda: (h.latest("cartons") or 0) >= 2, timeout=4)
    deltas = sum(r["points"]["cartons"]["delta"] for r in h.readings)
    assert deltas == h.latest("cartons") - h.readings[0]["points"]["cartons"]["value"]


@pytest.mark.parametrize("rtu", [False, True], ids=["tcp", "rtu"])
async def test_device_stops_answering_down_once_up_once(tmp_path, rtu):
    """A silent device is marked down once however long it stays silent, and up once after."""
    async with running(tmp_path, [SPEED], rtu=rtu, timeout=0.1) as h:
        await wait_until(lambda: h.transitions == [True])
        h.sim.silent = True
        await wait_until(lambda: h.transitions == [True, False])
        await asyncio.sleep(0.6)  # several failed reconnects and polls meanwhile
        assert h.transitions == [True, False]
        assert "no answer" in h.driver.health().detail
        h.sim.silent = False
        await wait_until(lambda: h.transitions == [True, False, True])
        await asyncio.sleep(0.1)
    assert h.transitions == [True, False, True]
    assert h.counter("link_failures") >= 2


async def test_connection_refused_then_server_appears(tmp_path):
    """No server at all: down once with the reason, retried with backoff, never raising."""
    async with running(tmp_path, [SPEED], port=1) as h:
        await wait_until(lambda: h.counter("connect_failures") >= 3)
        assert h.transitions == [False]
        assert "cannot connect" in h.statuses[0][1]


async def test_illegal_address_splits_and_isolates_the_point(tmp_path):
    """Exception 02 on a merged read: the read is split, the bad point reported, others poll."""
    bad = {"name": "bad", "table": "input", "address": 2}
    async with running(tmp_path, [SPEED, bad, {**SPEED, "name": "vib", "address": 3}]) as h:
        h.sim.fail(2, table="input", address=2)
        await wait_until(lambda: h.counter("point_failures") == 1)
        await wait_until(lambda: h.readings and "vib" in h.readings[-1]["points"])
        assert h.counter("requests_split") == 1
        assert "failing points: bad" in h.statuses[-1][1]
        assert h.statuses[-1][0] is True, "a refused point does not take the device down"
        h.sim.rules.clear()
        await wait_until(lambda: h.latest("bad") is not None)
        assert "failing" not in h.statuses[-1][1]
    assert h.transitions == [True]
    assert h.counter("exception_02") >= 2


async def test_busy_is_retried_and_gateway_codes_mean_down(tmp_path):
    """06 busy twice is retried transparently; 0B (gateway: no response) marks the device down."""
    async with running(tmp_path, [SPEED]) as h:
        await wait_until(lambda: h.readings)
        h.sim.fail(6, times=2)
        before = h.counter("reads")
        await wait_until(lambda: h.counter("reads") > before + 2)
        assert h.counter("exception_06") == 0 and h.transitions == [True]
        rule = h.sim.fail(0x0B)
        await wait_until(lambda: h.transitions == [True, False])
        assert "0x0B" in h.driver.health().detail
        h.sim.rules.remove(rule)
        await wait_until(lambda: h.transitions == [True, False, True])


async def test_device_failure_is_counted_not_fatal(tmp_path):
    """04 device failure skips that poll's points, counted; polling goes on."""
    async with running(tmp_path, [SPEED]) as h:
        await wait_until(lambda: h.readings)
        h.sim.fail(4, times=3)
        await wait_until(lambda: h.counter("exception_04") == 3)
        before = h.counter("reads")
        await wait_until(lambda: h.counter("reads") > before)
    assert h.transitions == [True]


async def test_threshold_alarm_on_motor_current(tmp_path):
    """A stalled motor (jam: 9.5 A) raises the current alarm; clearing the jam clears it."""
    current = {
        "name": "motor_current",
        "table": "input",
        "address": 1,
        "type": "int16",
        "scale": 0.01,
        "unit": "A",
        "alarm_above": 9.0,
        "hysteresis": 0.5,
    }
    async with running(tmp_path, [current]) as h:
        await wait_until(lambda: h.readings)
        h.sim.model.set_fault("jam", True)
        await wait_until(lambda: len(h.alarms) == 1)
        h.sim.model.set_fault("jam", False)
        await wait_until(lambda: len(h.alarms) == 2)
    assert [(a["condition"], a["state"], a["limit"]) for a in h.alarms] == [
        ("above", "raised", 9.0),
        ("above", "cleared", 9.0),
    ]


async def test_feedback_writes_coils(tmp_path):
    """good / bad write the configured coils; a repeated good is not re-written; pulses reset."""
    async with running(
        tmp_path, [SPEED], feedback_good={"address": 0}, feedback_bad={"address": 2, "pulse": 0.05}
    ) as h:
        await wait_until(lambda: h.transitions == [True])
        await h.driver.feedback(Outcome.GOOD)
        await h.driver.feedback(Outcome.GOOD)
        await h.driver.feedback(Outcome.BAD)
        await h.driver.feedback(Outcome.PENDING)  # not configured: nothing
    assert h.sim.writes == [
        ("coil", 2, [0]),  # on connect: the pulse output put at rest
        ("coil", 0, [1]),
        ("coil", 2, [1]),
        ("coil", 2, [0]),
    ]
    assert h.counter("feedback_writes") == 2


async def test_poll_groups_and_overruns(tmp_path):
    """A fast group polls more often than the default one; an impossible interval is counted."""
    slow = {**SPEED, "name": "slow"}
    fast = {**SPEED, "name": "fast", "group": "fast"}
    async with running(
        tmp_path,
        [slow, fast],
        interval=0.5,
        heartbeat=0.05,
        groups=[{"name": "fast", "interval": 0.01}],
    ) as h:
        await asyncio.sleep(0.6)
        slow_reports = sum("slow" in r["points"] for r in h.readings)
        fast_reports = sum("fast" in r["points"] for r in h.readings)
        assert slow_reports in (1, 2)
        assert fast_reports >= 4
        h.sim.model.frozen = True
        h.sim.fail(6)  # every answer busy: each poll now takes > 10 ms of retries
        await wait_until(lambda: h.counter("overruns") > 0)


@pytest.mark.parametrize("rtu", [False, True], ids=["tcp", "rtu"])
async def test_short_bit_reply_is_a_device_fault_not_a_crash(tmp_path, rtu):
    """A Read Discrete Inputs reply with fewer bits than asked for (over RTU with a good CRC)
    is counted and logged as a bad reply (the points fail for that poll); run() goes on
    polling."""
    motor_fault = {**JAM, "name": "motor_fault", "address": 12}
    async with running(tmp_path, [SPEED, JAM, motor_fault], rtu=rtu) as h:
        await wait_until(lambda: h.readings)
        h.sim.short_bit_replies = 3
        await wait_until(lambda: h.counter("bad_replies") >= 1)
        await wait_until(lambda: h.sim.short_bit_replies == 0)
        before = h.counter("reads")
        await wait_until(lambda: h.counter("reads") > before + 2)
        h.sim.model.set_fault("jam", True)
        await wait_until(lambda: [a["state"] for a in h.alarms] == ["raised"])
        assert h.transitions == [True]
        assert "failing" not in h.statuses[-1][1], "recovered after good replies"


async def test_refused_alarm_raise_is_retried(tmp_path):
    """A jam 'raised' the buffer refused is emitted again at the next poll, so central never
    gets a 'cleared' it did not see raised."""
    async with running(tmp_path, [SPEED, JAM]) as h:
        assert h.driver is not None
        refused: list[dict[str, Any]] = []

        async def refusing_emit(event: DeviceEvent) -> StoredEvent | None:
            if event.type == ALARM_TYPE and not refused:
                refused.append(dict(event.data))
                return None  # buffer full
            return await h.emit(event)

        h.driver._emit = refusing_emit
        await wait_until(lambda: h.readings)
        h.sim.model.set_fault("jam", True)
        await wait_until(lambda: [a["state"] for a in h.alarms] == ["raised"])
        h.sim.model.set_fault("jam", False)
        await wait_until(lambda: len(h.alarms) == 2)
    assert [r["state"] for r in refused] == ["raised"]
    assert [(a["alarm"], a["state"]) for a in h.alarms] == [("jam", "raised"), ("jam", "cleared")]
    assert h.counter("alarms_refused") == 1


async def test_alarm_raise_whose_emit_raised_is_retried_after_restart(tmp_path):
    """emit raising (the buffer failed) leaves the alarm state alone: run(), restarted as the
    supervisor does, raises the jam again."""
    async with running(tmp_path, [JAM]) as h:
        assert h.driver is not None
        failed: list[str] = []

        async def failing_emit(event: DeviceEvent) -> StoredEvent | None:
            if event.type == ALARM_TYPE and not failed:
                failed.append(event.data["state"])
                raise RuntimeError("disk I/O error")
            return await h.emit(event)

        h.driver._emit = failing_emit
        await wait_until(lambda: h.counter("reads") > 0)
        h.sim.model.set_fault("jam", True)
        await wait_until(lambda: failed == ["raised"])
        assert h.task is not None
        with pytest.raises(RuntimeError):
            async with asyncio.timeout(TIMEOUT):
                await h.task
        h.task = asyncio.create_task(h.driver.run())
        await wait_until(lambda: [a["state"] for a in h.alarms] == ["raised"])


def coil(h: Harness, address: int) -> int:
    """The simulated device's coil, as the last write left it."""
    return h.sim.model.tables["coil"][address]


async def test_pulse_is_reset_through_the_new_link_after_a_blip(tmp_path):
    """A link blip during a pulse: the reset still reaches the device (a horn is not left on)."""
    async with running(
        tmp_path, [SPEED], timeout=0.1, feedback_bad={"address": 2, "pulse": 0.5}
    ) as h:
        assert h.driver is not None
        await wait_until(lambda: h.transitions == [True])
        pulse = asyncio.create_task(h.driver.feedback(Outcome.BAD))
        await wait_until(lambda: coil(h, 2) == 1)
        h.sim.silent = True  # the link blips: polls time out, the driver reconnects
        await wait_until(lambda: h.transitions == [True, False])
        h.sim.silent = False
        await wait_until(lambda: h.transitions == [True, False, True])
        await wait_until(lambda: pulse.done() and coil(h, 2) == 0)
        await pulse


async def test_pulse_cancelled_midway_still_resets(tmp_path):
    """Feedback cancelled during its pulse (a shutdown) still writes the reset."""
    async with running(tmp_path, [SPEED], feedback_bad={"address": 2, "pulse": 30.0}) as h:
        assert h.driver is not None
        await wait_until(lambda: h.transitions == [True])
        pulse = asyncio.create_task(h.driver.feedback(Outcome.BAD))
        await wait_until(lambda: coil(h, 2) == 1)
        pulse.cancel()
        await asyncio.gather(pulse, return_exceptions=True)
        await wait_until(lambda: coil(h, 2) == 0)


async def test_pulse_cancelled_again_while_its_reset_waits_still_resets(tmp_path):
    """A second cancellation (a shutdown giving up) while the reset waits for the link behind a
    poll does not stop the reset: it is shielded."""
    async with running(tmp_path, [SPEED], feedback_bad={"address": 2, "pulse": 30.0}) as h:
        assert h.driver is not None
        await wait_until(lambda: h.transitions == [True])
        pulse = asyncio.create_task(h.driver.feedback(Outcome.BAD))
        await wait_until(lambda: coil(h, 2) == 1)
        link = h.driver._link
        assert link is not None and link._tcp is not None
        async with link._tcp._lock:  # a request in flight: the reset must wait its turn
            pulse.cancel()
            await wait_until(lambda: not h.driver._feedback._until)  # the reset is waiting
            pulse.cancel()
            await asyncio.gather(pulse, return_exceptions=True)
        await wait_until(lambda: coil(h, 2) == 0)


async def test_pulse_outputs_are_put_at_rest_on_connect(tmp_path):
    """An output a pulse left on (a crash, a blip) is reset when the device is (re)connected."""
    model = ConveyorModel(noise=0.0)
    model.write("coil", 2, [1])
    async with running(
        tmp_path, [SPEED], model=model, feedback_bad={"address": 2, "pulse": 1.0}
    ) as h:
        await wait_until(lambda: h.transitions == [True])
        await wait_until(lambda: coil(h, 2) == 0)


def spare(address: int, **extra: Any) -> dict[str, Any]:
    return {"name": f"s{address}", "table": "input", "address": address, **extra}


async def test_a_change_reports_only_its_point_and_unchanged_points_still_heartbeat(tmp_path):
    """Only the points whose registers changed are decoded and reported; the others are
    offered again when their heartbeat falls due, though their registers never changed."""
    model = ConveyorModel(noise=0.0, frozen=True)
    points = [spare(a) for a in (10, 11, 12, 13)]
    async with running(tmp_path, points, model=model, heartbeat=0.4) as h:
        await wait_until(lambda: h.readings)
        assert h.readings[0]["points"] == {f"s{a}": {"value": a * 10} for a in (10, 11, 12, 13)}
        model.set_registers("input", 12, [7])
        await wait_until(lambda: len(h.readings) == 2)
        assert h.readings[1] == {
            "group": "default",
            "reason": "change",
            "points": {"s12": {"value": 7}},
        }
        await wait_until(lambda: len(h.readings) == 3)
        heartbeat = h.readings[2]
        assert heartbeat["reason"] == "heartbeat"
        assert {"s10", "s11", "s13"} <= set(heartbeat["points"])
        # s12's heartbeat runs from its change: it joins this one only if that poll came 0.4 s
        # after the change too (on a loaded box a poll can be that late), never earlier.
        since_change = h.reading_times[2] - h.reading_times[1]
        if "s12" in heartbeat["points"]:
            assert since_change >= 0.4 - 0.02, f"s12 heartbeat {since_change:.2f} s after change"
        else:
            await wait_until(lambda: len(h.readings) == 4)
            assert h.readings[3]["points"] == {"s12": {"value": 7}}
            assert h.readings[3]["reason"] == "heartbeat"


async def test_churning_registers_end_reported_as_the_device_holds_them(tmp_path):
    """With 30 % of the spare registers changing every 100 ms, every change (deadband 0) is
    reported, each reported value differs from the point's previous one, and once the line is
    frozen the last reported values are the device's registers."""
    model = ConveyorModel(noise=0.0, churn=0.3, seed=3)
    points = [spare(a) for a in range(10, 60)]
    async with running(tmp_path, points, model=model, interval=0.05) as h:
        await wait_until(lambda: len(h.readings) >= 10)
        model.frozen = True
        reads = h.counter("reads")
        await wait_until(lambda: h.counter("reads") >= reads + 3)
        for a in range(10, 60):
            assert h.latest(f"s{a}") == model.tables["input"][a], a
    seen: dict[str, int] = {}
    for reading in h.readings:
        for name, entry in reading["points"].items():
            assert seen.get(name) != entry["value"], "an unchanged value was reported"
            seen[name] = entry["value"]
    assert sum(len(r["points"]) for r in h.readings[1:]) > 50, "the registers did churn"


async def test_non_finite_is_counted_every_poll_while_it_lasts(tmp_path):
    """A NaN float is never reported, counted per poll although its registers stay the same;
    the point is reported again once it reads a number."""
    model = ConveyorModel(noise=0.0, frozen=True)
    model.set_registers("holding", 100, encode_raw(float("nan"), "float32", "ABCD"))
    point = {"name": "level", "address": 100, "type": "float32"}
    async with running(tmp_path, [point], model=model) as h:
        await wait_until(lambda: h.counter("non_finite") >= 3)
        assert h.counter("non_finite") == h.counter("reads"), "one read per poll, each counted"
        assert h.readings == []
        model.set_registers("holding", 100, encode_raw(2.5, "float32", "ABCD"))
        await wait_until(lambda: h.latest("level") == 2.5)


async def test_an_answer_that_cannot_be_framed_ends_the_session(tmp_path):
    """Modbus TCP: an answer with a protocol id other than 0 leaves the stream unframeable:
    the connection is dropped at once (down once), and the next one polls again (up once)."""
    async with running(tmp_path, [SPEED], timeout=5.0) as h:
        await wait_until(lambda: h.transitions == [True])
        h.sim.unframed_replies = 1
        await wait_until(lambda: h.transitions == [True, False, True])
        assert "cannot frame" in h.statuses[1][1]
        assert h.counter("link_failures") == 1


async def test_feedback_writes_a_holding_register(tmp_path):
    """A level write to a holding register (function 06) lands in the device."""
    async with running(
        tmp_path, [SPEED], feedback_good={"table": "holding", "address": 120, "value": 7}
    ) as h:
        await wait_until(lambda: h.transitions == [True])
        await h.driver.feedback(Outcome.GOOD)
    assert h.sim.writes == [("holding", 120, [7])]
    assert h.counter("feedback_writes") == 1


@pytest.mark.parametrize("rtu", [False, True], ids=["tcp", "rtu"])
async def test_a_lost_answer_is_retried_before_the_device_is_down(tmp_path, rtu):
    """retries = 1: one lost answer is re-asked and polling goes on up; two in a row are
    "no answer", the device goes down once and comes back."""
    async with running(tmp_path, [SPEED], rtu=rtu, timeout=0.15, retries=1) as h:
        await wait_until(lambda: h.transitions == [True])
        h.sim.dropped_replies = 1
        await wait_until(lambda: h.sim.dropped_replies == 0)
        reads = h.counter("reads")
        await wait_until(lambda: h.counter("reads") > reads + 2)
        assert h.transitions == [True] and h.counter("link_failures") == 0
        h.sim.dropped_replies = 2
        await wait_until(lambda: h.transitions == [True, False, True])
        assert h.counter("link_failures") == 1
        assert "no answer" in h.statuses[1][1]


@pytest.mark.parametrize("rtu", [False, True], ids=["tcp", "rtu"])
async def test_feedback_writes_and_polls_take_turns_on_the_link(tmp_path, rtu):
    """Feedback writes for three outputs at once, 20 times, while the device is polled every
    10 ms: one request at a time on the link, so every write lands, no poll or write loses its
    answer to another's, and the device never goes down."""
    outputs = {"feedback_good": 0, "feedback_pending": 1, "feedback_bad": 2}
    async with running(
        tmp_path,
        [SPEED],
        rtu=rtu,
        interval=0.01,
        **{key: {"address": address} for key, address in outputs.items()},
    ) as h:
        assert h.driver is not None
        await wait_until(lambda: h.transitions == [True])
        reads = h.counter("reads")
        for _ in range(20):
            await asyncio.gather(
                *(h.driver.feedback(o) for o in (Outcome.GOOD, Outcome.PENDING, Outcome.BAD))
            )
        await wait_until(lambda: h.counter("reads") > reads + 5)
        assert h.counter("feedback_failures") == 0
        assert h.counter("link_failures") == 0
        assert h.transitions == [True]
        assert h.counter("feedback_writes") >= 40, "most writes were written, not skipped"
        assert len(h.sim.writes) == h.counter("feedback_writes")
        assert {address for _, address, _ in h.sim.writes} == set(outputs.values())


@pytest.mark.parametrize("rtu", [False, True], ids=["tcp", "rtu"])
async def test_no_descriptor_or_task_leaks_over_25_reconnects(tmp_path, rtu):
    """25 lost links (TCP: an answer that cannot be framed; RTU: an answer lost), each down once
    and reconnected: the process ends holding no more file descriptors and asyncio tasks than
    after the first."""
    async with running(tmp_path, [SPEED], rtu=rtu, timeout=0.1) as h:
        await wait_until(lambda: h.transitions == [True])

        def lose_the_link() -> None:
            if rtu:
                h.sim.dropped_replies = 1
            else:
                h.sim.unframed_replies = 1

        async def cycle(n: int) -> None:
            lose_the_link()
            await wait_until(lambda: h.counter("link_failures") == n)
            await wait_until(lambda: h.transitions.count(True) == n + 1)

        await cycle(1)
        fds, tasks = support.open_fds(), len(asyncio.all_tasks())
        for n in range(2, 27):
            await cycle(n)
        await support.assert_no_leaks(fds, tasks)
        assert h.transitions == [True, False] * 26 + [True]
