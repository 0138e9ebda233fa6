"""Linux input events (``struct input_event``) as plain tuples, packed and parsed without evdev.

The driver's core consumes these tuples from any async iterator, so it can be fed recorded or
synthesized streams in tests (there is no /dev/uinput on our boxes) and python-evdev is needed
only to read a real device. The record layout is the kernel's: ``struct timeval`` (two native
longs), ``__u16 type``, ``__u16 code``, ``__s32 value``: 24 bytes on 64-bit Linux.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import NamedTuple

EV_SYN = 0x00
EV_KEY = 0x01
EV_MSC = 0x04
SYN_REPORT = 0
MSC_SCAN = 4

KEY_RELEASE = 0
KEY_PRESS = 1
KEY_REPEAT = 2

RECORD = struct.Struct("@llHHi")
RECORD_SIZE = RECORD.size
"""24 on 64-bit Linux (x86-64, arm64), where the gateway runs."""


class InputEvent(NamedTuple):
    """One input event, field for field as the kernel sends it (python-evdev names)."""

    sec: int
    usec: int
    type: int
    code: int
    value: int


def pack_events(events: Iterable[InputEvent]) -> bytes:
    """Serialise events as the kernel writes them to ``/dev/input/event*``."""
    return b"".join(RECORD.pack(*event) for event in events)


def parse_events(data: bytes) -> list[InputEvent]:
    """Parse whole records; a trailing partial record is an error (use ``RecordParser``)."""
    if len(data) % RECORD_SIZE:
        raise ValueError(f"{len(data)} bytes is not a whole number of {RECORD_SIZE}-byte events")
    return [InputEvent(*fields) for fields in RECORD.iter_unpack(data)]


class RecordParser:
    """Incremental parser for a byte stream of records split anywhere (a pipe, a capture)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete record held (fewer than ``RECORD_SIZE``)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[InputEvent]:
        """Consume ``data``; return the events it completed."""
        self._buf += data
        whole = len(self._buf) - len(self._buf) % RECORD_SIZE
        events = parse_events(bytes(self._buf[:whole]))
        del self._buf[:whole]
        return events


async def events_from_bytes(chunks: AsyncIterable[bytes]) -> AsyncIterator[InputEvent]:
    """Turn an async stream of raw ``struct input_event`` bytes into events."""
    parser = RecordParser()
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
