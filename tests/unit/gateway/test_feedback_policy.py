"""The per-device feedback policy: one answer per event kind and stage, from config + driver."""

from __future__ import annotations

import pytest

from drivers.base import DeviceConfig, Outcome
from gateway.feedback_policy import NOT_HEARD, FeedbackPolicy, Stage

SCAN = "warehouse.barcode.scanned.v1"
ARRIVED = "warehouse.rfid.tag.arrived.v1"
DEPARTED = "warehouse.rfid.tag.departed.v1"
READING = "warehouse.conveyor.reading.v1"
ALARM = "warehouse.conveyor.alarm.v1"

G, B, P = Outcome.GOOD, Outcome.BAD, Outcome.PENDING


def policy(driver: str, confirm: str = "stored") -> FeedbackPolicy:
    return FeedbackPolicy.for_device(DeviceConfig(id="d", driver=driver, confirm=confirm))


@pytest.mark.parametrize(
    ("driver", "waited_on", "silent"),
    [
        ("barcode-serial", [SCAN], []),
        ("barcode-hid", [SCAN], []),
        ("rfid-llrp", [ARRIVED], [DEPARTED]),
        ("modbus", [ALARM], [READING]),
    ],
)
def test_each_driver_names_what_a_worker_waits_on(
    driver: str, waited_on: list[str], silent: list[str]
) -> None:
    """Scans, arrivals and alarms are confirmed; departures and readings never get feedback,
    whatever happens to them (a refused reading used to pulse the stack light bad)."""
    for level in ("stored", "delivered", "accepted"):
        p = policy(driver, level)
        for type_ in waited_on:
            assert p.waits(type_)
            assert p.outcome(type_, Stage.REFUSED) is B
            assert p.outcome(type_, Stage.REJECTED) is B
            assert p.outcome(type_, Stage.TIMEOUT) is P
            assert p.outcome(type_, Stage.STOPPED) is P
        for type_ in [*silent, "warehouse.unknown.v1"]:
            assert not p.waits(type_)
            assert all(p.outcome(type_, stage) is None for stage in Stage), (level, type_)


def test_good_comes_once_the_level_is_reached() -> None:
    """Good at the configured level; before it, nothing yet (the event is waited on)."""
    expected = {
        "stored": {Stage.STORED: G, Stage.DELIVERED: G, Stage.ACCEPTED: G},
        "delivered": {Stage.STORED: None, Stage.DELIVERED: G, Stage.ACCEPTED: G},
        "accepted": {Stage.STORED: None, Stage.DELIVERED: None, Stage.ACCEPTED: G},
    }
    for level, stages in expected.items():
        p = policy("barcode-serial", level)
        for stage, outcome in stages.items():
            assert p.outcome(SCAN, stage) is outcome, (level, stage)


def test_table_documents_every_stage() -> None:
    """``table()`` is what docs/confirmation.md shows for the conveyor at ``delivered``."""
    assert policy("modbus", "delivered").table() == {
        ALARM: {
            "stored": None,
            "delivered": "good",
            "accepted": "good",
            "rejected": "bad",
            "refused": "bad",
            "timeout": "pending",
            "stopped": "pending",
        },
        READING: dict.fromkeys(
            ("stored", "delivered", "accepted", "rejected", "refused", "timeout", "stopped")
        ),
    }


@pytest.mark.parametrize("driver", ["barcode-serial", "barcode-hid", "rfid-llrp", "modbus"])
@pytest.mark.parametrize("level", ["stored", "delivered", "accepted"])
def test_the_answers_made_once_for_stored_are_outcome_and_waits(driver: str, level: str) -> None:
    """``at_stored`` (what the pipeline reads per event) agrees with the two questions it
    replaces, for every listed type; an unlisted type is neither heard nor waited for."""
    p = policy(driver, level)
    assert p.at_stored.keys() == p.kinds.keys()
    for type_ in [*p.kinds, "warehouse.unknown.v1"]:
        assert p.at_stored.get(type_, NOT_HEARD) == (p.outcome(type_, Stage.STORED), p.waits(type_))
    assert p.at_stored.get("warehouse.unknown.v1", NOT_HEARD) == (None, False)
