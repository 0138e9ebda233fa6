"""The barcode-serial driver against a real pty scanner: framing, parsing, feedback, replug."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from drivers.barcode_serial.config import BarcodeSerialConfig
from drivers.barcode_serial.driver import BarcodeSerialDriver
from drivers.base import DeviceEvent, Outcome, StoredEvent
from simulators.barcodes import generate
from simulators.scanner import ScannerSimulator
from tests import support

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

GS = "\x1d"
TIMEOUT = 3.0


@dataclass
class Harness:
    """A driver wired to a recording emit and status callback, and its scanner."""

    sim: ScannerSimulator
    events: list[DeviceEvent] = field(default_factory=list)
    statuses: list[tuple[bool, str]] = field(default_factory=list)
    driver: BarcodeSerialDriver | None = None
    task: asyncio.Task[None] | None = None

    async def emit(self, event: DeviceEvent) -> StoredEvent:
        self.events.append(event)
        seq = len(self.events)
        return StoredEvent(f"ev-{seq}", "scanner-1", seq, "2026-11-24T00:00:00.000000Z", event.type)

    def status(self, up: bool, detail: str) -> None:
        self.statuses.append((up, detail))

    @property
    def codes(self) -> list[str]:
        return [event.data["code"] for event in self.events]

    @property
    def ups(self) -> list[bool]:
        return [up for up, _ in self.statuses]

    def counter(self, name: str) -> int:
        assert self.driver is not None
        return self.driver.health().counters.get(name, 0)


wait_until = functools.partial(support.wait_until, timeout=TIMEOUT)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, *, sim: dict[str, Any] | None = None, plug: bool = True, **config: Any
) -> AsyncIterator[Harness]:
    """Scanner (plugged or not) + driver task; on exit, run() must still be running, then stop."""
    link = tmp_path / "ttyScanner"
    harness = Harness(ScannerSimulator(link, **(sim or {})))
    settings = {"reconnect_min": 0.02, "reconnect_max": 0.1, **config}
    cfg = BarcodeSerialConfig(id="scanner-1", driver="barcode-serial", port=str(link), **settings)
    harness.driver = BarcodeSerialDriver(cfg, emit=harness.emit, report_status=harness.status)
    if plug:
        await harness.sim.start()
    harness.task = asyncio.create_task(harness.driver.run())
    try:
        if plug:
            await harness.sim.wait_opened(TIMEOUT)
        yield harness
        assert not harness.task.done(), "run() returned or raised"
    finally:
        harness.task.cancel()
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(harness.task, return_exceptions=True)
        await harness.sim.close()
    assert harness.task.cancelled()


async def test_twenty_codes_in_order(tmp_path):
    """20 scans typed back to back arrive as 20 events, in order, with their symbology."""
    codes = list(generate("mixed", random.Random(42), count=20))
    async with running(tmp_path) as h:
        for code, aim in codes:
            await h.sim.type_code(code, aim=aim)
        await wait_until(lambda: len(h.events) == 20)
        assert h.codes == [code for code, _ in codes]
        assert [e.data["symbology"] for e in h.events] == [aim for _, aim in codes]
        assert all(e.type == "warehouse.barcode.scanned.v1" for e in h.events)
        for event in h.events:
            assert "gs1_error" not in event.data
            if event.data["symbology"] == "]C1":
                assert "gtin" in event.data or "sscc" in event.data
        assert h.counter("frames") == h.counter("scans") == 20


@pytest.mark.parametrize(
    ("terminator", "framing", "stx_etx"),
    [
        (b"\r", "cr", False),
        (b"\n", "lf", False),
        (b"\r\n", "crlf", False),
        (b"\r\n", "eol", False),
        (b"\r", "eol", False),
        (b"\r", "stx-etx", True),
    ],
)
async def test_framing(tmp_path, terminator, framing, stx_etx):
    """Each terminator style delivers the codes intact, with nothing counted as garbage."""
    sim = {"terminator": terminator, "stx_etx": stx_etx}
    async with running(tmp_path, sim=sim, framing=framing) as h:
        for code in ("4006381333931", "ABC-123", "X"):
            await h.sim.type_code(code)
        await wait_until(lambda: len(h.events) == 3)
        assert h.codes == ["4006381333931", "ABC-123", "X"]
        assert h.counter("garbage") == 0


async def test_aim_and_gs1_128_parsed(tmp_path):
    """A ]C1 GS1-128 scan carries its symbology and parsed GS1 fields."""
    async with running(tmp_path, sim={"aim": "]C1"}) as h:
        await h.sim.type_code(f"010950110102091710ABC123{GS}17310131{GS}21SN1")
        await wait_until(lambda: len(h.events) == 1)
        assert h.events[0].data == {
            "code": f"010950110102091710ABC123{GS}17310131{GS}21SN1",
            "symbology": "]C1",
            "symbology_name": "GS1-128",
            "gtin": "09501101020917",
            "lot": "ABC123",
            "expiry": "2031-01-31",
            "serial": "SN1",
            "ais": {"01": "09501101020917", "10": "ABC123", "17": "310131", "21": "SN1"},
        }


async def test_gs1_error_and_plain_symbologies(tmp_path):
    """A bad check digit in ]C1 gives gs1_error; an EAN-13 gets no GS1 parsing."""
    async with running(tmp_path) as h:
        await h.sim.type_code("0109501101020918", aim="]C1")
        await h.sim.type_code("4006381333931", aim="]E0")
        await wait_until(lambda: len(h.events) == 2)
        assert set(h.events[0].data) == {"code", "symbology", "symbology_name", "gs1_error"}
        assert "check digit" in h.events[0].data["gs1_error"]
        assert h.events[1].data == {
            "code": "4006381333931",
            "symbology": "]E0",
            "symbology_name": "EAN-13",
        }


async def test_aim_none_sniffs_gs1(tmp_path):
    """With aim = none, ]-prefixed text stays whole and GS-separated GS1 is still parsed."""
    async with running(tmp_path, aim="none") as h:
        await h.sim.type_code("]E04006381333931")
        await h.sim.type_code(f"0109501101020917{GS}10LOT7")
        await wait_until(lambda: len(h.events) == 2)
        assert h.events[0].data == {"code": "]E04006381333931"}
        assert h.events[1].data["lot"] == "LOT7"
        assert "symbology" not in h.events[1].data


async def test_aim_required_drops_frames_without_one(tmp_path):
    """With aim = required a frame without an AIM id is counted, dropped and gets bad feedback."""
    async with running(tmp_path, aim="required", feedback="honeywell") as h:
        await h.sim.type_code("NOAIM")
        await h.sim.type_code("CODE39", aim="]A0")
        await wait_until(lambda: len(h.events) == 1)
        assert h.codes == ["CODE39"]
        assert h.counter("no_aim") == 1
        assert await h.sim.wait_feedback(lambda b: b"\x1b8," in b, TIMEOUT) == b"\x1b8,"


async def test_suppress_window(tmp_path):
    """A repeat within suppress_window is suppressed; after it, the same code is sent again."""
    async with running(tmp_path, suppress_window=0.3) as h:
        await h.sim.type_code("REPEAT")
        await wait_until(lambda: len(h.events) == 1)
        await h.sim.type_code("REPEAT")
        await wait_until(lambda: h.counter("suppressed") == 1)
        await h.sim.type_code("OTHER")
        await wait_until(lambda: len(h.events) == 2)
        await asyncio.sleep(0.35)
        await h.sim.type_code("OTHER")
        await wait_until(lambda: len(h.events) == 3)
        assert h.codes == ["REPEAT", "OTHER", "OTHER"]
        assert h.counter("suppressed") == 1


async def test_feedback_honeywell(tmp_path):
    """GOOD with the honeywell profile reaches the scanner as ESC 7 ,; PENDING writes nothing."""
    async with running(tmp_path, feedback="honeywell") as h:
        assert h.driver is not None
        await h.sim.type_code("4006381333931")
        await wait_until(lambda: len(h.events) == 1)
        await h.driver.feedback(Outcome.GOOD)
        assert await h.sim.wait_feedback(lambda b: b"\x1b7," in b, TIMEOUT) == b"\x1b7,"
        await h.driver.feedback(Outcome.PENDING)
        await h.driver.feedback(Outcome.BAD)
        received = await h.sim.wait_feedback(lambda b: b"\x1b8," in b, TIMEOUT)
        assert received == b"\x1b7,\x1b8,"


async def test_feedback_now_writes_at_once_and_defers_when_the_port_is_behind(tmp_path):
    """The synchronous path writes the bytes; with output queued it asks for feedback()."""
    async with running(tmp_path, feedback="honeywell") as h:
        assert h.driver is not None
        await h.sim.type_code("4006381333931")
        await wait_until(lambda: len(h.events) == 1)
        assert h.driver.feedback_now(Outcome.GOOD) is True
        assert await h.sim.wait_feedback(lambda b: b"\x1b7," in b, TIMEOUT) == b"\x1b7,"
        assert h.driver.feedback_now(Outcome.PENDING) is True  # no bytes for pending: done
        writer = h.driver._writer  # a stalled adapter cannot be made otherwise
        assert writer is not None
        writer.write(b"\0" * (4 << 20))  # more than the pty holds: the rest stays queued
        assert writer.transport.get_write_buffer_size() > 0
        assert h.driver.feedback_now(Outcome.BAD) is False


async def test_garbage_and_oversize_counted(tmp_path):
    """Noise and an over-long frame are dropped and counted; the next scan still arrives."""
    async with running(tmp_path, max_frame=16, feedback="honeywell") as h:
        await h.sim.write_raw(b"\x00\xff\x01noise\r")
        await h.sim.type_code("X" * 40)
        await h.sim.type_code("OK")
        await wait_until(lambda: len(h.events) == 1)
        assert h.codes == ["OK"]
        assert (h.counter("garbage"), h.counter("oversize")) == (1, 1)
        assert b"\x1b8," in await h.sim.wait_feedback(lambda b: b"\x1b8," in b, TIMEOUT)


async def test_unplug_and_replug(tmp_path):
    """Unplug reports down once while retrying; replug reports up and scans flow again."""
    async with running(tmp_path) as h:
        await wait_until(lambda: h.ups == [True])
        await h.sim.type_code("BEFORE")
        await wait_until(lambda: len(h.events) == 1)
        await h.sim.unplug()
        await wait_until(lambda: h.ups == [True, False])
        await wait_until(lambda: h.counter("open_failures") >= 3)  # retried, reported once
        assert h.ups == [True, False]
        assert h.task is not None
        assert not h.task.done()
        await h.sim.replug()
        await h.sim.wait_opened(TIMEOUT)
        await wait_until(lambda: h.ups == [True, False, True])
        await h.sim.type_code("AFTER")
        await wait_until(lambda: len(h.events) == 2)
        assert h.codes == ["BEFORE", "AFTER"]
        assert h.statuses[-1][1].startswith("open ")


async def test_port_missing_at_start(tmp_path):
    """A port that does not exist yet reports down, then up once the scanner appears."""
    async with running(tmp_path, plug=False) as h:
        await wait_until(lambda: h.ups == [False])
        assert "No such file or directory" in h.statuses[0][1]
        await h.sim.start()
        await h.sim.wait_opened(TIMEOUT)
        await wait_until(lambda: h.ups == [False, True])
        await h.sim.type_code("HELLO")
        await wait_until(lambda: h.codes == ["HELLO"])


async def test_cancel_closes_port(tmp_path):
    """Cancelling run() closes the port: the scanner sees it closed, feedback becomes a no-op."""
    async with running(tmp_path, feedback="honeywell") as h:
        assert h.task is not None
        assert h.driver is not None
        assert h.sim.is_open
        h.task.cancel()
        await asyncio.gather(h.task, return_exceptions=True)
        await wait_until(lambda: not h.sim.is_open)
        await h.driver.feedback(Outcome.GOOD)  # must not raise with the port closed
        assert h.driver.health().up is False
        h.task = asyncio.create_task(asyncio.sleep(3600))  # keep the harness's exit checks happy


async def test_second_reader_is_locked_out(tmp_path):
    """A second driver on the same port stays down ('locked'), so scans are never split."""
    async with running(tmp_path) as h:
        statuses: list[tuple[bool, str]] = []
        cfg = BarcodeSerialConfig(
            id="scanner-2", driver="barcode-serial", port=str(h.sim.link), reconnect_min=0.02
        )
        other = BarcodeSerialDriver(cfg, emit=h.emit, report_status=lambda *s: statuses.append(s))
        task = asyncio.create_task(other.run())
        try:
            await wait_until(lambda: bool(statuses))
            assert statuses == [
                (False, f"cannot open {h.sim.link}: locked by another process (another gateway?)")
            ]
            await h.sim.type_code("ONLY-ONCE")
            await wait_until(lambda: h.codes == ["ONLY-ONCE"])
        finally:
            task.cancel()
            async with asyncio.timeout(TIMEOUT):
                await asyncio.gather(task, return_exceptions=True)


async def test_scanner_cli(tmp_path):
    """The simulator's CLI types its codes into the driver and prints the feedback it gets."""
    link = tmp_path / "ttyCli"
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.scanner", "--link", str(link),
        "--code", "CLI-1", "--code", "0109501101020917<GS>10L", "--aim", "]C1",
        "--rate", "50", "--linger", "1",
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[3],
    )  # fmt: skip
    harness = Harness(ScannerSimulator(link))
    cfg = BarcodeSerialConfig(
        id="scanner-1", driver="barcode-serial", port=str(link), feedback="honeywell",
        reconnect_min=0.02, reconnect_max=0.05,
    )  # fmt: skip
    driver = BarcodeSerialDriver(cfg, emit=harness.emit, report_status=harness.status)
    task = asyncio.create_task(driver.run())
    try:
        await wait_until(lambda: len(harness.events) == 2, timeout=10)
        await driver.feedback(Outcome.GOOD)
        async with asyncio.timeout(10):
            out, _ = await cli.communicate()
    finally:
        task.cancel()
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(task, return_exceptions=True)
        if cli.returncode is None:
            cli.kill()
            await cli.wait()
    assert cli.returncode == 0
    assert harness.codes == ["CLI-1", "0109501101020917\x1d10L"]
    assert harness.events[1].data["lot"] == "L"
    text = out.decode()
    assert "typed 2: ]C10109501101020917\\x1d10L" in text
    assert "feedback: 1b 37 2c" in text
    assert not link.exists()


async def test_scan_received_before_the_port_fails_is_still_emitted(tmp_path):
    """Scan B, read while scan A waits for its commit, is emitted even if the cable goes next."""
    async with running(tmp_path) as h:
        gate = asyncio.Event()
        recorded = h.emit

        async def slow_emit(event: DeviceEvent) -> StoredEvent:
            if not h.events:
                h.events.append(event)  # seen now, committed only when the gate opens
                await gate.wait()
                h.events.pop()
            return await recorded(event)

        assert h.driver is not None
        h.driver._scans._emit = slow_emit  # the pipeline's emit, slowed down by a busy disk
        await h.sim.type_code("SCAN-A")
        await wait_until(lambda: h.codes == ["SCAN-A"])
        await h.sim.type_code("SCAN-B")
        await h.sim.wait_taken(TIMEOUT)  # the gateway has B's bytes ...
        writer = h.driver._writer
        assert writer is not None
        await h.sim.unplug()  # ... then the cable goes
        with contextlib.suppress(OSError):
            async with asyncio.timeout(TIMEOUT):
                await writer.wait_closed()  # the port error has reached the driver's reader
        gate.set()
        await wait_until(lambda: len(h.events) == 2)
        assert h.codes == ["SCAN-A", "SCAN-B"]
        await wait_until(lambda: h.ups == [True, False])
        assert "read failed" in h.statuses[1][1]
        await h.sim.replug()  # the harness's exit checks want a scanner to close


async def test_refused_scan_is_not_suppressed_on_rescan(tmp_path):
    """A scan the buffer refused (bad-read) is not recorded as seen: the rescan is emitted."""
    async with running(tmp_path, suppress_window=60.0) as h:
        refused: list[str] = []
        recorded = h.emit

        async def refusing_emit(event: DeviceEvent) -> StoredEvent | None:
            if not refused:
                refused.append(event.data["code"])
                return None  # buffer full: the worker got bad-read feedback
            return await recorded(event)

        assert h.driver is not None
        h.driver._scans._emit = refusing_emit
        await h.sim.type_code("PALLET-1")
        await wait_until(lambda: refused == ["PALLET-1"])
        await h.sim.type_code("PALLET-1")  # the rescan bad-read asked for
        await wait_until(lambda: h.codes == ["PALLET-1"])
        await h.sim.type_code("PALLET-1")  # a real repeat of a stored scan: suppressed
        await wait_until(lambda: h.counter("suppressed") == 1)
        assert h.codes == ["PALLET-1"]


async def test_scan_whose_emit_raised_is_not_suppressed_on_rescan(tmp_path):
    """emit raising (the buffer failed) records nothing as seen: after the restart, the rescan
    is emitted."""
    async with running(tmp_path, suppress_window=60.0) as h:
        assert h.driver is not None
        recorded = h.emit
        failed: list[str] = []

        async def failing_emit(event: DeviceEvent) -> StoredEvent:
            if not failed:
                failed.append(event.data["code"])
                raise RuntimeError("disk I/O error")
            return await recorded(event)

        h.driver._scans._emit = failing_emit
        assert h.task is not None
        await h.sim.type_code("PALLET-2")
        with pytest.raises(RuntimeError):
            async with asyncio.timeout(TIMEOUT):
                await h.task
        h.task = asyncio.create_task(h.driver.run())  # as the gateway's supervisor does
        await h.sim.wait_opened(TIMEOUT)
        await h.sim.type_code("PALLET-2")
        await wait_until(lambda: h.codes == ["PALLET-2"])
        assert h.counter("suppressed") == 0


async def test_no_descriptor_or_task_leaks_over_25_replugs(tmp_path):
    """25 unplug/replug cycles, a scan through each: the process ends holding no more file
    descriptors and asyncio tasks than after the first."""
    async with running(tmp_path) as h:

        async def cycle(n: int) -> None:
            await h.sim.unplug()
            await wait_until(lambda: h.ups.count(False) == n)
            await h.sim.replug()
            await h.sim.wait_opened(TIMEOUT)
            await wait_until(lambda: h.ups.count(True) == n + 1)
            await h.sim.type_code(f"CODE-{n}")
            await wait_until(lambda: len(h.events) == n)

        await cycle(1)
        fds, tasks = support.open_fds(), len(asyncio.all_tasks())
        for n in range(2, 27):
            await cycle(n)
        await support.assert_no_leaks(fds, tasks)
        assert h.codes == [f"CODE-{n}" for n in range(1, 27)]
