"""Feedback decided by the device's policy, through the real pipeline on a real buffer file:
refusals at the cap, and a driver cancelled while its event commits (issue 13, defect 7)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from buffer.store import Buffer
from drivers.base import DeviceConfig, DeviceEvent, Outcome
from gateway.confirmations import Confirmations
from gateway.pipeline import Pipeline
from simulators.broker import MosquittoBroker
from simulators.scanner import ScannerSimulator
from tests.support import device_figures, running_gateway, scanner_device, write_config

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

    async def settled(self) -> int:
        """Events in the file once the commit under way (if any) returned."""
        await asyncio.sleep(0.2)
        return self.stored_ids()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    buffer = await Buffer.open(tmp_path / "buffer.db", max_bytes=2**20)
    rig = Rig(buffer)
    yield rig
    rig.confirmations.close()
    await buffer.close()


async def test_stored_counts_by_device_and_type_across_a_devices_emitters(rig: Rig) -> None:
    """``Pipeline.stored`` (the metrics' figure): stored events only, by (device, type), a
    device's later emitter (a reload's new driver) counting on from its earlier one; a snapshot
    that later events do not change."""
    first = rig.emit("dock-1", "barcode-serial")
    assert rig.pipeline.stored == {}
    for code in "AB":
        assert await first(DeviceEvent(SCAN, {"code": code})) is not None
    conveyor = rig.emit("conveyor", "modbus")
    assert await conveyor(DeviceEvent(READING, {"points": {"i": 1}}, droppable=True)) is not None
    snapshot = rig.pipeline.stored
    second = rig.emit("dock-1", "barcode-serial")
    assert await second(DeviceEvent(SCAN, {"code": "C"})) is not None
    rig.buffer.max_bytes = 1  # refused: not counted
    assert await second(DeviceEvent(SCAN, {"code": "D"})) is None
    assert snapshot == {("dock-1", SCAN): 2, ("conveyor", READING): 1}
    assert rig.pipeline.stored == {("dock-1", SCAN): 3, ("conveyor", READING): 1}
    assert rig.pipeline.stored["dock-1", ALARM] == 0, "a Counter: unseen keys are 0"


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


async def test_concurrent_emits_keep_their_order_and_share_commits(rig: Rig) -> None:
    """The commit's future refuses cancellation (so a cancelled driver cannot orphan it): emits
    started in order, as the RFID driver starts them, still take seqs in that order and still
    commit in groups."""
    emit = rig.emit("portal", "rfid-llrp")
    events = [DeviceEvent(ARRIVED, {"epc": f"{i:04x}"}) for i in range(500)]
    stored = await asyncio.gather(*(asyncio.create_task(emit(e)) for e in events))
    assert [s.seq for s in stored if s is not None] == list(range(1, 501))
    assert rig.buffer.commits < 50


async def cancel_mid_emit(emit, event: DeviceEvent) -> asyncio.Task:
    """Start ``emit`` as a driver's task would, and cancel it while the commit is under way."""
    task = asyncio.create_task(emit(event))
    for _ in range(3):  # into emit, into the buffer's queue, the writer picks it up
        await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return task


@pytest.mark.parametrize(
    ("confirm", "expected"),
    [("stored", Outcome.GOOD), ("delivered", Outcome.PENDING), ("accepted", Outcome.PENDING)],
)
async def test_driver_cancelled_mid_emit_still_gets_the_feedback_decision(
    rig: Rig, confirm: str, expected: Outcome
) -> None:
    """Reload or stop cancels the driver while ``emit`` awaits the commit: the scan is stored,
    and the worker hears about it before the driver lets go of its device: good where storing
    is the level, pending otherwise (stored, not lost, do not scan again). It used to get no
    feedback at all."""
    await cancel_mid_emit(rig.emit("dock-1", "barcode-serial", confirm), DeviceEvent(SCAN, {}))
    assert rig.given == [("dock-1", expected)], "decided before the cancellation finished"
    assert await rig.settled() == 1, "the commit went through"
    assert rig.given == [("dock-1", expected)], "and once only"
    assert rig.confirmations.waiting == 0, "nobody is left waiting on a stopped driver"


async def test_cancelled_mid_emit_and_refused_gets_bad(rig: Rig) -> None:
    """The same cancellation when the buffer is full: the scan is refused, so bad feedback."""
    rig.buffer.max_bytes = 1
    await cancel_mid_emit(rig.emit("dock-1", "barcode-serial"), DeviceEvent(SCAN, {}))
    assert rig.given == [("dock-1", Outcome.BAD)]
    assert await rig.settled() == 0


async def test_a_scan_emitted_once_the_buffer_is_closing_gets_bad_and_the_driver_goes_on(
    rig: Rig,
) -> None:
    """A driver that outlived the stop's bound emits after the buffer began closing: the scan
    is not stored, so the worker hears bad (scan again), once, and ``emit`` returns instead of
    raising ``BufferClosedError`` into the driver. It used to raise, with no feedback at all
    (found by the third review of the buffer's close)."""
    emit = rig.emit("dock-1", "barcode-serial")
    await rig.buffer.close()
    assert await emit(DeviceEvent(SCAN, {})) is None
    assert rig.given == [("dock-1", Outcome.BAD)]
    assert rig.pipeline.refused == 1 and rig.stored_ids() == 0


async def test_cancelled_mid_emit_telemetry_stays_silent(rig: Rig) -> None:
    """A reading cancelled mid-emit is stored and, like any reading, gives no feedback."""
    emit = rig.emit("conveyor", "modbus", "delivered")
    await cancel_mid_emit(emit, DeviceEvent(READING, {}, droppable=True))
    assert await rig.settled() == 1 and rig.given == []


async def test_cancelled_before_the_writer_took_it_still_decided(rig: Rig) -> None:
    """Cancelled at its first await, before the writer even took the event from its queue:
    queued is final, so the scan is stored and the worker hears good, once."""
    task = asyncio.create_task(rig.emit("dock-1", "barcode-serial")(DeviceEvent(SCAN, {})))
    await asyncio.sleep(0)  # emit ran up to awaiting the commit's future
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rig.given == [("dock-1", Outcome.GOOD)]
    assert await rig.settled() == 1 and rig.given == [("dock-1", Outcome.GOOD)]


@pytest.mark.parametrize("full", [False, True], ids=["stored", "refused"])
async def test_cancelled_twice_mid_commit_decided_when_the_commit_returns(
    rig: Rig, full: bool
) -> None:
    """Cancelled twice while the commit is held up: the driver's task ends only once the
    commit returned, and the decision is made then, once (good if stored, bad if refused at
    the cap); the event is in the file exactly when it was reported stored."""
    if full:
        rig.buffer.max_bytes = 1
    holder = sqlite3.connect(rig.buffer.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the commit waits for us
    try:
        task = asyncio.create_task(rig.emit("dock-1", "barcode-serial")(DeviceEvent(SCAN, {})))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done(), "the cancellation waits for the commit"
        assert rig.given == [], "nothing decided while the commit is held up"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rig.given == [("dock-1", Outcome.BAD if full else Outcome.GOOD)]
    stored = await rig.settled()
    assert stored == (0 if full else 1)
    assert rig.given == [("dock-1", Outcome.BAD if full else Outcome.GOOD)], "once only"
    assert rig.pipeline.refused == (1 if full else 0)
    assert sum(rig.pipeline.stored.values()) == stored


async def test_scanner_stopped_by_a_reload_mid_commit_still_beeps(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A real pty scanner: its scan is committing (held up by another connection's write lock)
    when a reload restarts the device. The scan is stored and its good-read reaches the
    scanner before the port is closed; before, the scan was stored with no feedback at all."""
    async with ScannerSimulator(tmp_path / "scanner") as sim:
        feedback = {"feedback": "custom", "feedback_good": "G", "feedback_bad": "B"}

        def config(**extra: object) -> Path:
            device = scanner_device("dock-1", sim.link, **feedback, **extra)
            return write_config(
                tmp_path / "gateway.toml",
                mqtt_port=broker.port,
                state_dir=tmp_path / "state",
                devices=[device],
            )

        async with running_gateway(config()) as gw:
            await sim.wait_opened(timeout=10)
            await sim.type_code("WARM", aim="")
            assert await sim.wait_feedback(1) == b"G"
            holder = sqlite3.connect(gw.buffer.path, isolation_level=None)
            try:
                holder.execute("BEGIN IMMEDIATE")  # the gateway's commit now waits for us
                await sim.type_code("MID", aim="")
                async with asyncio.timeout(5):
                    while gw.drivers["dock-1"].health().counters.get("scans", 0) < 2:
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0.2)  # in emit, awaiting the commit
                config(suppress_window=0.5)  # a changed device: reload restarts it
                reload = asyncio.create_task(gw.reload())
                await asyncio.sleep(0.3)
                assert sim.feedback_bytes() == b"G", "nothing yet: the commit is held up"
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            async with asyncio.timeout(10):
                assert await reload
            await sim.wait_opened(timeout=10)
            assert sim.feedback_bytes() == b"GG", "the stored scan got its good-read"
            async with asyncio.timeout(5):
                while (await device_figures(gw, "dock-1")).last_seq < 2:
                    await asyncio.sleep(0.02)


async def test_waiting_scans_get_pending_when_their_device_stops(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Scans waiting for ``delivered`` (the broker is down) when their device is removed by a
    reload, or the gateway stops: pending feedback while the port is still open. Before, the
    driver was gone by the time anything was decided, and the worker heard nothing."""
    broker.stop()
    async with (
        ScannerSimulator(tmp_path / "a") as a,
        ScannerSimulator(tmp_path / "b") as b,
    ):
        feedback = {"feedback": "custom", "feedback_good": "G", "feedback_pending": "P"}

        def config(*sims: tuple[str, ScannerSimulator]) -> Path:
            devices = [
                scanner_device(name, sim.link, confirm="delivered", confirm_timeout=60, **feedback)
                for name, sim in sims
            ]
            return write_config(
                tmp_path / "gateway.toml",
                mqtt_port=broker.port,
                state_dir=tmp_path / "state",
                devices=devices,
                gateway={"shutdown_timeout": 5.0},
            )

        async with running_gateway(config(("dock-a", a), ("dock-b", b))) as gw:
            await a.wait_opened(timeout=10)
            await b.wait_opened(timeout=10)
            for sim in (a, b):
                await sim.type_code("ONE", aim="")
                await sim.type_code("TWO", aim="")
            async with asyncio.timeout(5):
                while gw.confirmations.waiting < 4:
                    await asyncio.sleep(0.01)
            assert a.feedback_bytes() == b.feedback_bytes() == b""
            config(("dock-b", b))
            assert await gw.reload()
            with contextlib.suppress(TimeoutError):
                await a.wait_feedback(lambda got: len(got) >= 2, timeout=2)
            assert a.feedback_bytes() == b"PP", "removed: told at once, not never"
            assert b.feedback_bytes() == b"", "dock-b keeps waiting"
        with contextlib.suppress(TimeoutError):
            await b.wait_feedback(lambda got: len(got) >= 2, timeout=2)
        assert b.feedback_bytes() == b"PP", "shutdown: told before the port closed"


async def test_a_scan_whose_data_cannot_be_written_is_refused_and_the_driver_goes_on(
    rig: Rig,
) -> None:
    """A driver bug (bytes in its data) is a bad read for that scan, counted: not an exception
    into the driver, and not a refusal of another device's scan committed beside it."""
    scanner = rig.emit("dock-1", "barcode-serial")
    other = rig.emit("dock-2", "barcode-serial")
    bad, good = await asyncio.gather(
        scanner(DeviceEvent(SCAN, {"code": b"\x01"})), other(DeviceEvent(SCAN, {"code": "B"}))
    )
    assert bad is None and good is not None and good.seq == 1
    assert ("dock-1", Outcome.BAD) in rig.given and ("dock-2", Outcome.GOOD) in rig.given
    assert rig.pipeline.refused == 1
    assert (await scanner(DeviceEvent(SCAN, {"code": "C"}))).seq == 1
