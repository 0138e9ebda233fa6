"""A synthetic keyboard-wedge scanner: types text through a layout into `struct input_event` bytes.

There is no /dev/uinput on our boxes, so the driver is fed what a scanner would make the kernel
write: MSC_SCAN, key press, SYN_REPORT, key release, SYN_REPORT per key, with modifiers around.
`FakeScanner` is a hot-pluggable device behind the driver's `opener`.
"""

from __future__ import annotations

import asyncio
import errno
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from drivers.barcode_hid.config import BarcodeHidConfig
from drivers.barcode_hid.device import OpenedDevice
from drivers.barcode_hid.events import (
    EV_KEY,
    EV_MSC,
    EV_SYN,
    MSC_SCAN,
    InputEvent,
    events_from_bytes,
    pack_events,
)
from drivers.barcode_hid.keymap import (
    KEY_ENTER,
    KEY_LEFTALT,
    KEY_LEFTCTRL,
    KEY_LEFTSHIFT,
    KEY_RIGHTALT,
    KEY_RIGHTBRACE,
    KEY_TAB,
    KEYPAD,
    LAYOUTS,
    Layout,
)

FIXTURES = Path(__file__).parent / "fixtures"
_KP_BY_DIGIT = {digit: code for code, digit in KEYPAD.items()}
_HID_USAGE = 0x70000  # MSC_SCAN values: HID keyboard page; the low bits do not matter here


class Typist:
    """Turns text into key events as a scanner set to ``layout`` would send them."""

    def __init__(self, layout: str | Layout = "us", *, gs: str = "ctrl", start: float = 1.7e9):
        self.layout = LAYOUTS[layout] if isinstance(layout, str) else layout
        self.gs = gs
        self.time_us = int(start * 1_000_000)
        self._where = self._index(self.layout)

    @staticmethod
    def _index(layout: Layout) -> dict[str, tuple[int, int]]:
        where: dict[str, tuple[int, int]] = {}
        for level in (0, 1, 2):
            for code, chars in sorted(layout.keys.items()):
                char = chars[level]
                if char and (code, level) not in layout.dead:
                    where.setdefault(char, (code, level))
        return where

    def _event(self, type_: int, code: int, value: int) -> InputEvent:
        self.time_us += 800  # a fast wedge types about one key per ms
        return InputEvent(self.time_us // 1_000_000, self.time_us % 1_000_000, type_, code, value)

    def key(self, code: int, value: int) -> list[InputEvent]:
        """One key transition as the kernel reports it."""
        return [
            self._event(EV_MSC, MSC_SCAN, _HID_USAGE + code),
            self._event(EV_KEY, code, value),
            self._event(EV_SYN, 0, 0),
        ]

    def tap(self, code: int, *modifiers: int) -> list[InputEvent]:
        """Press and release ``code`` with ``modifiers`` held around it."""
        events: list[InputEvent] = []
        for modifier in modifiers:
            events += self.key(modifier, 1)
        events += self.key(code, 1) + self.key(code, 0)
        for modifier in reversed(modifiers):
            events += self.key(modifier, 0)
        return events

    def char(self, char: str) -> list[InputEvent]:
        """The key events that type ``char``."""
        if char == "\x1d":
            if self.gs == "alt":
                events = self.key(KEY_LEFTALT, 1)
                for digit in "029":
                    events += self.tap(_KP_BY_DIGIT[digit])
                return events + self.key(KEY_LEFTALT, 0)
            return self.tap(KEY_RIGHTBRACE, KEY_LEFTCTRL)
        if char in "\r\n":
            return self.tap(KEY_ENTER)
        if char == "\t":
            return self.tap(KEY_TAB)
        code, level = self._where[char]
        modifiers = {0: (), 1: (KEY_LEFTSHIFT,), 2: (KEY_RIGHTALT,)}[level]
        return self.tap(code, *modifiers)

    def text(self, text: str) -> list[InputEvent]:
        """The key events that type ``text``."""
        return [event for char in text for event in self.char(char)]

    def scan(self, code: str, terminator: str = "\r") -> bytes:
        """A whole scan, with its terminator key, as raw ``struct input_event`` bytes."""
        return pack_events(self.text(code + terminator))


def load_evtest(name: str) -> bytes:
    """A recorded stream in `evtest` output form, turned back into raw event bytes."""
    line_re = re.compile(r"time (\d+)\.(\d+), (?:type (\d+) .*code (\d+) .*value (-?\w+)|-+ SYN)")
    events: list[InputEvent] = []
    for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines():
        match = line_re.search(line)
        if match is None:
            continue
        sec, usec, type_, code, value = match.groups()
        if type_ is None:
            events.append(InputEvent(int(sec), int(usec), EV_SYN, 0, 0))
            continue
        base = 16 if int(type_) == EV_MSC else 10  # evtest prints MSC_SCAN in hex
        events.append(InputEvent(int(sec), int(usec), int(type_), int(code), int(value, base)))
    return pack_events(events)


@dataclass
class FakeScanner:
    """A hot-pluggable HID scanner behind the driver's ``opener``: bytes in, events out.

    ``unplug`` makes the open reader fail with ENODEV (as evdev does) and later opens fail
    with ENOENT (the by-id link is gone); ``grabbed_elsewhere`` makes opens fail with EBUSY.
    """

    plugged: bool = True
    grabbed_elsewhere: bool = False
    opens: int = 0
    closes: int = 0
    _queue: asyncio.Queue[bytes | OSError] = field(default_factory=asyncio.Queue)
    _open: bool = False

    @property
    def is_open(self) -> bool:
        return self._open

    async def opener(self, config: BarcodeHidConfig) -> OpenedDevice:
        if not self.plugged:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", config.path)
        if self.grabbed_elsewhere:
            raise OSError(errno.EBUSY, "Device or resource busy")
        self.opens += 1
        self._open = True
        self._queue = asyncio.Queue()
        return OpenedDevice(
            "fake-scanner (Honeywell 1950g)", self._events(self._queue), self._close
        )

    def _close(self) -> None:
        self.closes += 1
        self._open = False

    async def _chunks(self, queue: asyncio.Queue[bytes | OSError]) -> AsyncIterator[bytes]:
        while True:
            item = await queue.get()
            if isinstance(item, OSError):
                raise item
            yield item

    def _events(self, queue: asyncio.Queue[bytes | OSError]) -> AsyncIterator[InputEvent]:
        return events_from_bytes(self._chunks(queue))

    def write(self, data: bytes, chunk: int = 0) -> None:
        """Deliver raw event bytes, whole or split into ``chunk``-byte reads."""
        step = chunk or len(data) or 1
        for pos in range(0, len(data), step):
            self._queue.put_nowait(data[pos : pos + step])

    def unplug(self) -> None:
        self.plugged = False
        self._queue.put_nowait(OSError(errno.ENODEV, "No such device"))

    def replug(self) -> None:
        self.plugged = True
