"""The conveyor event JSON Schemas accept what the driver emits and refuse malformed bodies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from gateway.events import render_event

SCHEMAS = Path(__file__).resolve().parents[4] / "gateway" / "schemas"
READING = "warehouse.conveyor.reading.v1"
ALARM = "warehouse.conveyor.alarm.v1"


def validator(event_type):
    schema = json.loads((SCHEMAS / f"{event_type}.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def message(event_type, data):
    raw = render_event(
        event_id="0190f0a0-0000-7000-8000-000000000001",
        source="/dc-east/gw-01/conveyor-a",
        type_=event_type,
        time_="2026-11-24T09:00:00.123456Z",
        seq=1,
        data=data,
    )
    return json.loads(raw)


GOOD_READING = {
    "group": "fast",
    "reason": "change",
    "points": {
        "belt_speed": {"value": 1.5, "unit": "m/s"},
        "cartons": {"value": 65535, "delta": 3, "unit": "cartons"},
        "cartons16": {"value": 3, "delta": 3, "reset": True},
        "running": {"value": True},
    },
}
GOOD_ALARMS = [
    {"alarm": "jam", "condition": "active", "state": "raised", "value": True},
    {
        "alarm": "motor_temperature",
        "condition": "above",
        "state": "cleared",
        "value": 74.5,
        "limit": 80.0,
        "unit": "degC",
    },
]


def test_reading_accepted():
    """A rendered reading with values, units and a counter delta validates."""
    validator(READING).validate(message(READING, GOOD_READING))


@pytest.mark.parametrize("alarm", GOOD_ALARMS)
def test_alarm_accepted(alarm):
    """Bit and threshold alarm bodies validate."""
    validator(ALARM).validate(message(ALARM, alarm))


@pytest.mark.parametrize(
    "data",
    [
        {**GOOD_READING, "points": {}},
        {**GOOD_READING, "reason": "poll"},
        {**GOOD_READING, "points": {"x": {"unit": "A"}}},
        {**GOOD_READING, "points": {"x": {"value": "1"}}},
        {**GOOD_READING, "points": {"x": {"value": 1, "delta": -1}}},
        {**GOOD_READING, "points": {"x": {"value": 1, "delta": 1, "reset": False}}},
        {"reason": "change", "points": {"x": {"value": 1}}},
    ],
)
def test_reading_refused(data):
    """Empty points, unknown reasons, missing or textual values and negative deltas are refused."""
    assert list(validator(READING).iter_errors(message(READING, data)))


@pytest.mark.parametrize(
    "data",
    [
        {**GOOD_ALARMS[0], "state": "on"},
        {**GOOD_ALARMS[1], "limit": None},
        {"alarm": "jam", "condition": "above", "state": "raised", "value": 1},
        {**GOOD_ALARMS[0], "extra": 1},
    ],
)
def test_alarm_refused(data):
    """Unknown states, thresholds without a limit and unknown keys are refused."""
    assert list(validator(ALARM).iter_errors(message(ALARM, data)))


def test_type_is_pinned():
    """A reading body under the alarm type is refused (types are not interchangeable)."""
    wrong = message(READING, GOOD_READING) | {"type": ALARM}
    assert list(validator(ALARM).iter_errors(wrong))
