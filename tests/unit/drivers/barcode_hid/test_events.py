"""`struct input_event` records: the kernel's 24-byte layout, parsed whole or split anywhere."""

from __future__ import annotations

import random
import struct

import pytest

from drivers.barcode_hid.events import (
    EV_KEY,
    RECORD_SIZE,
    InputEvent,
    RecordParser,
    events_from_bytes,
    pack_events,
    parse_events,
)
from tests.unit.drivers.barcode_hid.keyboard import Typist

EVENTS = [InputEvent(1732438800, 104211, EV_KEY, 30, 1), InputEvent(1732438800, 105011, 0, 0, 0)]


def test_record_is_kernel_layout():
    """24 bytes: two native longs (timeval), u16 type, u16 code, s32 value."""
    assert RECORD_SIZE == 24
    raw = struct.pack("@qqHHi", 1732438800, 104211, 1, 30, -1)
    assert parse_events(raw) == [InputEvent(1732438800, 104211, 1, 30, -1)]


def test_round_trip():
    """Packing then parsing gives the events back."""
    assert parse_events(pack_events(EVENTS)) == EVENTS
    assert len(pack_events(EVENTS)) == 2 * RECORD_SIZE


def test_partial_record_refused_by_parse_events():
    """parse_events wants whole records; the incremental parser is for streams."""
    with pytest.raises(ValueError, match="24-byte"):
        parse_events(pack_events(EVENTS)[:-1])


def test_parser_independent_of_chunking():
    """Random splits of a typed scan give the same events, and nothing is left buffered."""
    stream = Typist("us").scan("]C1HELLO-123")
    expected = parse_events(stream)
    rng = random.Random(3)
    for _ in range(20):
        parser, events, pos = RecordParser(), [], 0
        while pos < len(stream):
            size = rng.randint(1, 60)
            events += parser.feed(stream[pos : pos + size])
            pos += size
        assert events == expected
        assert parser.buffered == 0


async def test_events_from_bytes():
    """An async byte stream (a pipe, a device read) becomes an async stream of events."""

    async def chunks():
        raw = pack_events(EVENTS)
        yield raw[:5]
        yield raw[5:30]
        yield raw[30:]

    assert [event async for event in events_from_bytes(chunks())] == EVENTS


def test_matches_python_evdev():
    """python-evdev's InputEvent has the same fields, so the driver adapts it one to one."""
    events = pytest.importorskip("evdev.events")
    theirs = events.InputEvent(1, 2, EV_KEY, 30, 1)
    ours = InputEvent(theirs.sec, theirs.usec, theirs.type, theirs.code, theirs.value)
    assert ours == InputEvent(1, 2, 1, 30, 1)
