"""The RFID event JSON Schemas accept what the driver emits and refuse malformed messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from drivers.rfid_llrp.smoothing import Presence
from drivers.rfid_llrp.tagevents import ARRIVED, DEPARTED, tag_event
from gateway.events import render_event

SCHEMAS = Path(__file__).resolve().parents[4] / "gateway" / "schemas"
PRESENCE = Presence(
    epc="3074257bf7194e4000001a85",
    zone="dock",
    first_mono=0,
    first_wall=1_800_000_000.25,
    last_mono=2,
    last_wall=1_800_000_002.5,
    reads=57,
    peak_rssi=-41,
    antenna=2,
    reader_first_us=1_800_000_000_000_000,
    reader_last_us=None,
    arrived=True,
)


def validator(event_type):
    schema = json.loads((SCHEMAS / f"{event_type}.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def message(event):
    raw = render_event(
        event_id="0190f0a0-0000-7000-8000-000000000001",
        source="/dc-east/gw-01/dock-3-portal",
        type_=event.type,
        time_="2026-11-24T09:00:00.123456Z",
        seq=1,
        data=event.data,
    )
    return json.loads(raw)


@pytest.mark.parametrize("departed", [False, True])
def test_emitted_events_validate(departed):
    """Arrivals and departures, decoded or not, validate against their schema."""
    for decode in (True, False):
        event = tag_event(PRESENCE, departed=departed, decode=decode)
        assert event.type == (DEPARTED if departed else ARRIVED)
        assert not event.droppable
        validator(event.type).validate(message(event))
    data = tag_event(PRESENCE, departed=departed, decode=True).data
    assert data["gtin"] == "80614141123458"
    assert data["first_seen"] == "2027-01-15T08:00:00.250000Z"
    assert data["reader_time"] == (None if departed else "2027-01-15T08:00:00.000000Z")


@pytest.mark.parametrize(
    "change",
    [
        {"epc": "XYZ"},
        {"peak_rssi": "loud"},
        {"reads": 0},
        {"first_seen": 5},
        {"extra": 1},
        {"gtin": "123"},
    ],
)
def test_refuses_malformed(change):
    """Bad EPC, RSSI, counts, times, unknown keys and bad GS1 keys are refused."""
    event = tag_event(PRESENCE, departed=False, decode=True)
    body = message(event)
    body["data"].update(change)
    assert list(validator(ARRIVED).iter_errors(body))


def test_departed_needs_dwell():
    """A departure without dwell_s, or typed as an arrival, is refused."""
    body = message(tag_event(PRESENCE, departed=True, decode=False))
    del body["data"]["dwell_s"]
    assert list(validator(DEPARTED).iter_errors(body))
    assert list(
        validator(ARRIVED).iter_errors(message(tag_event(PRESENCE, departed=True, decode=False)))
    )
