"""The event JSON Schema accepts what the driver emits and refuses malformed messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from gateway.events import render_event

SCHEMA_PATH = (
    Path(__file__).resolve().parents[4]
    / "gateway"
    / "schemas"
    / "warehouse.barcode.scanned.v1.json"
)
SCHEMA = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
DATA = {
    "code": "0109501101020917\x1d10ABC\x1d17310131",
    "symbology": "]C1",
    "symbology_name": "GS1-128",
    "gtin": "09501101020917",
    "lot": "ABC",
    "expiry": "2031-01-31",
    "ais": {"01": "09501101020917", "10": "ABC", "17": "310131"},
}


def _message(data=None, **changes):
    raw = render_event(
        event_id="0190f0a0-0000-7000-8000-000000000001",
        source="/dc-east/gw-01/dock-3-scanner",
        type_="warehouse.barcode.scanned.v1",
        time_="2026-11-24T09:00:00.123456Z",
        seq=1,
        data=DATA if data is None else data,
    )
    return {**json.loads(raw), **changes}


def test_schema_is_valid_2020_12():
    """The schema itself is a valid draft 2020-12 schema."""
    Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize(
    "message",
    [
        _message(),
        _message({"code": "4006381333931", "symbology": "]E0"}),
        _message({"code": "123", "symbology": "]C1", "gs1_error": "bad"}),
        _message(historical=True),
        _message(dataschema="https://example.net/schema.json"),
    ],
)
def test_accepts(message):
    """Rendered scans, with or without GS1 fields or the historical flag, validate."""
    VALIDATOR.validate(message)


@pytest.mark.parametrize(
    "message",
    [
        _message({"symbology": "]C1"}),
        _message({**DATA, "gtin": "123"}),
        _message({**DATA, "expiry": "2031-13-45"}),
        _message({**DATA, "extra": 1}),
        _message(seq=0),
        _message(source="/only/two"),
        _message(historical=False),
        _message(unknown=1),
        _message(type="warehouse.rfid.tag.arrived.v1"),
    ],
)
def test_refuses(message):
    """Missing code, bad GTIN or date, unknown keys and bad envelope values are refused."""
    assert list(VALIDATOR.iter_errors(message))
