"""The shared scan reader: frames to events, AIM and GS1, repeats, counters, dropped frames."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from drivers.barcode_common.config import BarcodeConfig
from drivers.barcode_common.scans import EVENT_TYPE, ScanReader, scan_data
from drivers.base import DeviceEvent, StoredEvent

GS = "\x1d"


class Log:
    """Records structlog-style calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str):
        return lambda event, **kw: self.calls.append((level, event, kw))


def make(mode="cr", **settings):
    events: list[DeviceEvent] = []
    counters: Counter[str] = Counter()

    async def emit(event):
        events.append(event)
        return StoredEvent(f"e{len(events)}", "s", len(events), "2026-01-01T00:00:00Z", event.type)

    def count(name, amount):
        counters[name] += amount

    log = Log()
    config = BarcodeConfig(id="s", driver="x", **settings)
    reader = ScanReader(config, mode, emit=emit, count=count, log=log, garbage_hint="check X")
    return reader, events, counters, log


def test_scan_data_gs1_by_symbology_or_sniffed():
    """GS1 fields come with a GS1 AIM id, or without any id when the text is clearly GS1."""
    code = f"0109501101020917{GS}10AB"
    assert scan_data(code, "]C1", "GS1-128", gs1=True)["lot"] == "AB"
    assert scan_data(code, None, None, gs1=True)["gtin"] == "09501101020917"
    assert scan_data(code, "]C0", "Code 128", gs1=True) == {
        "code": code, "symbology": "]C0", "symbology_name": "Code 128",
    }  # fmt: skip
    assert scan_data(code, "]C1", "GS1-128", gs1=False) == {
        "code": code, "symbology": "]C1", "symbology_name": "GS1-128",
    }  # fmt: skip
    assert "gs1_error" in scan_data("0109501101020918", "]C1", None, gs1=True)


async def test_frames_to_events():
    """Two frames in one chunk give two events with symbology and counters."""
    reader, events, counters, _ = make()
    assert await reader.feed(b"]E04006381333931\rPLAIN\r") is False
    assert [e.type for e in events] == [EVENT_TYPE, EVENT_TYPE]
    assert events[0].data == {
        "code": "4006381333931",
        "symbology": "]E0",
        "symbology_name": "EAN-13",
    }
    assert events[1].data == {"code": "PLAIN"}
    assert (counters["frames"], counters["scans"]) == (2, 2)


async def test_garbage_logged_once_per_burst_and_reported_dropped():
    """Garbage frames are counted, logged once per burst with the driver's hint, and reported."""
    reader, events, counters, log = make()
    assert await reader.feed(b"\x00a\r\x01b\r") is True
    assert await reader.feed(b"\x02c\r") is True
    assert await reader.feed(b"OK\r") is False
    assert counters["garbage"] == 3
    assert [c[1] for c in log.calls] == ["garbage_received", "garbage_burst_ended"]
    assert log.calls[0][2] == {"hint": "check X"}
    assert [e.data["code"] for e in events] == ["OK"]


async def test_oversize_and_restart():
    """An over-long frame is dropped; restart() forgets a partial frame cut short by a replug."""
    reader, events, counters, _ = make(max_frame=8)
    assert await reader.feed(b"123456789\r") is True
    await reader.feed(b"HALF")
    assert reader.buffered == 4
    reader.restart()
    assert reader.buffered == 0
    await reader.feed(b"NEW\r")
    assert [e.data["code"] for e in events] == ["NEW"]
    assert counters["oversize"] == 1


async def test_aim_required():
    """With aim = required a frame without an id is rejected (bad feedback), and logged once."""
    reader, events, counters, log = make(aim="required")
    assert await reader.feed(b"NOAIM\rNOAIM2\r") is True
    assert await reader.feed(b"]A0X\r") is False
    assert [e.data["code"] for e in events] == ["X"]
    assert counters["no_aim"] == 2
    assert [c[1] for c in log.calls] == ["frame_without_aim_id"]


async def test_aim_only_is_empty():
    """An AIM id without data is counted as empty, emitted as nothing, and not a rejection."""
    reader, events, counters, _ = make()
    assert await reader.feed(b"]E0\r") is False
    assert (events, counters["empty"]) == ([], 1)


@pytest.mark.parametrize("mode", ["tab", "cr-tab"])
async def test_tab_terminators(mode):
    """The keyboard-wedge modes cut at TAB (and CR in cr-tab)."""
    reader, events, _, _ = make(mode)
    await reader.feed(b"A\tB\t")
    if mode == "cr-tab":
        await reader.feed(b"C\r")
    assert [e.data["code"] for e in events] == (["A", "B", "C"] if mode == "cr-tab" else ["A", "B"])


async def test_suppress_window():
    """A repeat inside the window is suppressed; another code, or the window passing, is not."""
    reader, events, counters, _ = make(suppress_window=0.2)
    await reader.feed(b"R\rR\rO\r")
    await asyncio.sleep(0.25)
    await reader.feed(b"O\r")
    assert [e.data["code"] for e in events] == ["R", "O", "O"]
    assert counters["suppressed"] == 1
