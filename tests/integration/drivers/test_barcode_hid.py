"""The barcode-hid driver fed `struct input_event` streams: recorded scans, typed codes, replug."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from drivers.barcode_hid.config import BarcodeHidConfig
from drivers.barcode_hid.driver import BarcodeHidDriver
from drivers.barcode_hid.events import pack_events
from drivers.base import DeviceEvent, Outcome, StoredEvent
from simulators.barcodes import generate
from tests import support
from tests.unit.drivers.barcode_hid.keyboard import FakeScanner, Typist, load_evtest

GS = "\x1d"
TIMEOUT = 3.0
PATH = "/dev/input/by-id/usb-Honeywell_1950g-event-kbd"


@dataclass
class Harness:
    """A driver on a fake scanner, with a recording emit and status callback."""

    scanner: FakeScanner
    driver: BarcodeHidDriver
    events: list[DeviceEvent] = field(default_factory=list)
    statuses: list[tuple[bool, str]] = field(default_factory=list)

    @property
    def codes(self) -> list[str]:
        return [event.data["code"] for event in self.events]

    @property
    def ups(self) -> list[bool]:
        return [up for up, _ in self.statuses]

    def counter(self, name: str) -> int:
        return self.driver.health().counters.get(name, 0)


wait_until = functools.partial(support.wait_until, timeout=TIMEOUT)


def make_driver(scanner: FakeScanner | None, **config: Any) -> Harness:
    settings = {"path": PATH, "reconnect_min": 0.01, "reconnect_max": 0.05, **config}
    cfg = BarcodeHidConfig(id="hid-1", driver="barcode-hid", **settings)
    events: list[DeviceEvent] = []
    statuses: list[tuple[bool, str]] = []

    async def emit(event: DeviceEvent) -> StoredEvent:
        events.append(event)
        return StoredEvent(
            f"ev-{len(events)}", "hid-1", len(events), "2026-11-24T00:00:00Z", event.type
        )

    fake = scanner or FakeScanner()
    opener = fake.opener if scanner is not None else None
    driver = BarcodeHidDriver(
        cfg, emit=emit, report_status=lambda *s: statuses.append(s), opener=opener
    )
    return Harness(fake, driver, events, statuses)


@contextlib.asynccontextmanager
async def running(scanner: FakeScanner | None = None, **config: Any) -> AsyncIterator[Harness]:
    """Driver task on ``scanner`` (the real evdev opener if None); run() must survive the test."""
    harness = make_driver(scanner if scanner is not None else FakeScanner(), **config)
    task = asyncio.create_task(harness.driver.run())
    try:
        if harness.scanner.plugged and not harness.scanner.grabbed_elsewhere:
            await wait_until(lambda: harness.scanner.is_open)
        yield harness
        assert not task.done(), "run() returned or raised"
    finally:
        task.cancel()
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert harness.scanner.closes == harness.scanner.opens, "device left open"


@pytest.mark.parametrize(
    ("fixture", "layout", "terminator", "expected"),
    [
        (
            "honeywell_us_gs1_ctrl.evtest", "us", "enter",
            [{"code": f"0109501101020917{GS}10ABC123{GS}17310131", "symbology": "]C1",
              "symbology_name": "GS1-128", "gtin": "09501101020917", "lot": "ABC123",
              "expiry": "2031-01-31",
              "ais": {"01": "09501101020917", "10": "ABC123", "17": "310131"}}],
        ),
        (
            "zebra_de_gs1_altcode.evtest", "de", "enter",
            [{"code": f"0109501101020917{GS}10ZY-7/A{GS}21Q_3;x", "symbology": "]d2",
              "symbology_name": "GS1 DataMatrix", "gtin": "09501101020917", "lot": "ZY-7/A",
              "serial": "Q_3;x", "ais": {"01": "09501101020917", "10": "ZY-7/A", "21": "Q_3;x"}}],
        ),
        (
            "datalogic_us_ean13_tab.evtest", "us", "tab",
            [{"code": "4006381333931"},
             {"code": "5901234123457", "symbology": "]E0", "symbology_name": "EAN-13"}],
        ),
    ],
)  # fmt: skip
async def test_recorded_streams(fixture, layout, terminator, expected):
    """Recorded evtest streams, read in odd-sized chunks, give exactly the expected scans."""
    async with running(layout=layout, terminator=terminator) as h:
        h.scanner.write(load_evtest(fixture), chunk=7)
        await wait_until(lambda: len(h.events) == len(expected))
        assert [dict(event.data) for event in h.events] == expected
        assert h.counter("garbage") == 0
        assert h.counter("autorepeats") == (1 if layout == "de" else 0)


@pytest.mark.parametrize(("layout", "gs"), [("us", "ctrl"), ("de", "alt")])
async def test_typed_codes_in_order(layout, gs):
    """30 generated codes typed through a layout arrive in order, GS1 ones parsed cleanly."""
    codes = list(generate("mixed", random.Random(7), count=30))
    typist = Typist(layout, gs=gs)
    async with running(layout=layout) as h:
        for code, aim in codes:
            h.scanner.write(typist.scan((aim or "") + code))
        await wait_until(lambda: len(h.events) == 30)
        assert h.codes == [code for code, _ in codes]
        assert [e.data.get("symbology") for e in h.events] == [aim for _, aim in codes]
        assert not [e.data for e in h.events if "gs1_error" in e.data]
        assert any("gtin" in e.data or "sscc" in e.data for e in h.events)
        assert h.counter("frames") == h.counter("scans") == 30


async def test_unmapped_key_drops_the_scan_only():
    """A key the layout cannot type (Esc) makes that frame garbage; the next scan still arrives."""
    typist = Typist("us")
    async with running() as h:
        h.scanner.write(typist.scan("AB"))
        h.scanner.write(pack_events(typist.text("X") + typist.tap(1) + typist.text("Y\r")))
        h.scanner.write(typist.scan("OK"))
        await wait_until(lambda: len(h.events) == 2)
        assert h.codes == ["AB", "OK"]
        assert h.counter("garbage") == 1


async def test_suppress_window_applies():
    """The shared repeat suppression works on keyboard wedges too."""
    typist = Typist("us")
    async with running(suppress_window=5) as h:
        for code in ("SAME", "SAME", "OTHER"):
            h.scanner.write(typist.scan(code))
        await wait_until(lambda: len(h.events) == 2)
        assert h.codes == ["SAME", "OTHER"]
        assert h.counter("suppressed") == 1


async def test_unplug_and_replug():
    """Unplug mid-scan: down once while retrying; replug: up once, and later scans flow."""
    typist = Typist("us")
    async with running() as h:
        await wait_until(lambda: h.ups == [True])
        h.scanner.write(typist.scan("BEFORE"))
        await wait_until(lambda: h.codes == ["BEFORE"])
        h.scanner.write(pack_events(typist.text("HALF")))  # unplugged before its Enter
        h.scanner.unplug()
        await wait_until(lambda: h.ups == [True, False])
        assert "No such device" in h.statuses[-1][1]
        await wait_until(lambda: h.counter("open_failures") >= 3)  # retried, reported once
        assert h.ups == [True, False]
        assert not h.scanner.is_open
        h.scanner.replug()
        await wait_until(lambda: h.ups == [True, False, True])
        h.scanner.write(typist.scan("AFTER"))
        await wait_until(lambda: len(h.events) == 2)
        assert h.codes == ["BEFORE", "AFTER"]  # the cut-off half is not glued on
        assert h.statuses[-1][1] == "open fake-scanner (Honeywell 1950g)"
        assert h.counter("disconnects") == 1


async def test_missing_at_start_then_plugged():
    """A scanner not plugged in yet reports down, then up once it appears."""
    async with running(FakeScanner(plugged=False)) as h:
        await wait_until(lambda: h.ups == [False])
        assert h.statuses[0][1] == f"cannot open {PATH}: No such file or directory"
        h.scanner.replug()
        await wait_until(lambda: h.ups == [False, True])
        h.scanner.write(Typist("us").scan("HELLO"))
        await wait_until(lambda: h.codes == ["HELLO"])


async def test_grabbed_elsewhere():
    """Another program holding the grab keeps the device down with a clear reason."""
    async with running(FakeScanner(grabbed_elsewhere=True)) as h:
        await wait_until(lambda: bool(h.statuses))
        assert h.statuses == [
            (False, f"cannot open {PATH}: Device or resource busy (grabbed by another program)")
        ]


async def test_cancel_closes_device_and_feedback_is_noop():
    """Cancelling run() releases the device; feedback never fails (a wedge has no channel)."""
    h = make_driver(FakeScanner())
    task = asyncio.create_task(h.driver.run())
    await wait_until(lambda: h.scanner.is_open)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert not h.scanner.is_open
    assert h.scanner.closes == 1
    for outcome in Outcome:
        await h.driver.feedback(outcome)
    assert h.driver.health().up is False
    assert h.driver.health().detail == "stopped"


@pytest.mark.parametrize(
    ("config", "detail"),
    [
        (
            {"path": "/dev/input/by-id/no-such-scanner"},
            "/dev/input/by-id/no-such-scanner: No such file",
        ),
        (
            {"path": None, "vendor_id": 0x0C2E, "product_id": 0x0DB1},
            "USB 0c2e:0db1: no input device USB 0c2e:0db1",
        ),
    ],
)
async def test_real_evdev_opener_missing_device(config, detail):
    """Through python-evdev itself, a missing device is 'down' with a useful detail, not a crash."""
    pytest.importorskip("evdev")
    h = make_driver(None, **config)
    task = asyncio.create_task(h.driver.run())
    try:
        await wait_until(lambda: bool(h.statuses))
        assert h.ups == [False]
        assert detail in h.statuses[0][1]
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_no_task_leaks_over_25_replugs():
    """25 unplug/replug cycles of the (fake) device, a scan through each: every open is closed,
    and no more asyncio tasks or file descriptors are left than after the first."""
    typist = Typist("us")
    async with running() as h:
        await wait_until(lambda: h.ups == [True])

        async def cycle(n: int) -> None:
            h.scanner.unplug()
            await wait_until(lambda: h.ups.count(False) == n)
            h.scanner.replug()
            await wait_until(lambda: h.ups.count(True) == n + 1)
            h.scanner.write(typist.scan(f"CODE{n}"))
            await wait_until(lambda: len(h.events) == n)

        await cycle(1)
        fds, tasks = support.open_fds(), len(asyncio.all_tasks())
        for n in range(2, 27):
            await cycle(n)
        await support.assert_no_leaks(fds, tasks)
        assert h.codes == [f"CODE{n}" for n in range(1, 27)]
        assert h.scanner.opens == h.scanner.closes + 1
