"""Report by exception, counters with rollover, and alarm edges with hysteresis."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.modbus.alarms import AlarmTracker
from drivers.modbus.config import PointConfig
from drivers.modbus.report import ReadingFilter


def p(name, **extra):
    return PointConfig.model_validate({"name": name, "address": 0, **extra})


def run(filter_, series, step=1.0, name="v"):
    """Feed a value series one poll per ``step`` seconds; return (time, entry, reason) reported."""
    out = []
    for index, value in enumerate(series):
        entries, reason = filter_.offer({name: value}, index * step)
        if entries:
            out.append((index * step, entries[name], reason))
    return out


def test_flat_signal_yields_heartbeats_only():
    """A flat value polled for 35 s with a 10 s heartbeat: the first report, then 3 heartbeats."""
    reports = run(ReadingFilter([p("v", deadband=0.5)], heartbeat=10), [20.0] * 36)
    assert [(t, r) for t, _, r in reports] == [
        (0, "change"),
        (10, "heartbeat"),
        (20, "heartbeat"),
        (30, "heartbeat"),
    ]


def test_step_yields_one_event():
    """A step beyond the deadband is one report, then nothing until the heartbeat."""
    series = [20.0] * 5 + [25.0] * 5
    reports = run(ReadingFilter([p("v", deadband=0.5, unit="degC")], heartbeat=100), series)
    assert reports == [
        (0, {"value": 20.0, "unit": "degC"}, "change"),
        (5, {"value": 25.0, "unit": "degC"}, "change"),
    ]


def test_noise_inside_deadband_and_slow_drift():
    """Noise within the band is suppressed; a drift is reported once it adds up beyond it."""
    series = [10.0, 10.3, 9.8, 10.2, 10.4, 10.5, 10.6]
    reports = run(ReadingFilter([p("v", deadband=0.5)], heartbeat=100), series)
    assert [entry["value"] for _, entry, _ in reports] == [10.0, 10.6]


def test_deadband_percent():
    """2 % of the last reported value: 100 -> 101.9 is quiet, 102.1 reports."""
    reports = run(ReadingFilter([p("v", deadband_percent=2.0)], heartbeat=100), [100, 101.9, 102.1])
    assert [entry["value"] for _, entry, _ in reports] == [100, 102.1]


def test_zero_deadband_reports_every_change_and_bools():
    """With no deadband every change is reported; bits report on flips."""
    reports = run(ReadingFilter([p("v")], heartbeat=100), [1, 1, 2, 2, 3])
    assert [entry["value"] for _, entry, _ in reports] == [1, 2, 3]
    flips = run(ReadingFilter([p("v", type="bit", bit=0)], heartbeat=100), [False, False, True])
    assert [entry["value"] for _, entry, _ in flips] == [False, True]


@pytest.mark.parametrize(("type_", "top"), [("uint16", 2**16), ("uint32", 2**32)])
def test_counter_rollover(type_, top):
    """A counter wrapping past its top reports the true number of counts."""
    counter = ReadingFilter([p("c", type=type_, role="counter")], heartbeat=100)
    reports = run(counter, [top - 3, top - 1, 2, 2, 7], name="c")
    assert [(e["value"], e["delta"]) for _, e, _ in reports] == [
        (top - 3, 0),
        (top - 1, 2),
        (2, 3),
        (7, 5),
    ]
    assert counter.counter_resets == 0


def test_counter_reset_by_plc():
    """A counter jumping back (PLC reset to 0) counts from zero instead of a huge wrap."""
    counter = ReadingFilter([p("c", role="counter")], heartbeat=100)
    reports = run(counter, [20000, 20010, 5, 9], name="c")
    assert [e["delta"] for _, e, _ in reports] == [0, 10, 5, 4]
    assert [e.get("reset") for _, e, _ in reports] == [None, None, True, None]
    assert counter.counter_resets == 1


def test_uint16_reset_from_the_upper_half_is_not_phantom_counts():
    """40000 -> 3 on a uint16 counter is a reset (3 counts), not a wrap of 25539 cartons."""
    counter = ReadingFilter([p("c", role="counter")], heartbeat=100)
    reports = run(counter, [40000, 3], name="c")
    assert [e for _, e, _ in reports] == [
        {"value": 40000, "delta": 0},
        {"value": 3, "delta": 3, "reset": True},
    ]


def test_max_delta_bounds_a_wrap_and_rollover_false_never_wraps():
    """A wrap is believed only up to max_delta counts; rollover = false makes any fall a reset."""
    bounded = ReadingFilter([p("c", role="counter", max_delta=5)], heartbeat=100)
    reports = run(bounded, [65534, 2, 65530, 4], name="c")
    assert [(e["delta"], e.get("reset", False)) for _, e, _ in reports] == [
        (0, False),
        (4, False),  # 65534 -> 2: 4 counts across the wrap
        (65528, False),  # a rise is taken as it is
        (4, True),  # 65530 -> 4 would be 10 across the wrap: more than 5, a reset
    ]
    plain = ReadingFilter([p("c", role="counter", rollover=False)], heartbeat=100)
    reports = run(plain, [65534, 2], name="c")
    assert [(e["delta"], e.get("reset", False)) for _, e, _ in reports] == [(0, False), (2, True)]


def test_reset_is_reported_at_once_even_under_the_deadband():
    """A reset makes the point due, whatever its deadband: central must hear of it."""
    counter = ReadingFilter([p("c", role="counter", deadband=100)], heartbeat=100)
    reports = run(counter, [500, 1], name="c")
    assert [(e["delta"], e.get("reset"), r) for _, e, r in reports] == [
        (0, None, "change"),
        (1, True, "change"),
    ]


def test_counter_deltas_accumulate_under_deadband():
    """Counts below the counter's deadband are carried into the next report, never lost."""
    counter = ReadingFilter([p("c", role="counter", deadband=4)], heartbeat=100)
    reports = run(counter, [0, 2, 4, 6, 7], name="c")
    assert [(e["value"], e["delta"]) for _, e, _ in reports] == [(0, 0), (6, 6)]


def test_alarm_points_are_not_readings():
    """Alarm bits go to the tracker only, not into readings."""
    entries, _ = ReadingFilter([p("jam", type="bit", bit=1, role="alarm")], 10).offer(
        {"jam": True}, 0
    )
    assert entries == {}


def stored(tracker: AlarmTracker, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The alarm event bodies for ``values``, each committed as if the buffer stored it."""
    bodies = []
    for change in tracker.update(values):
        tracker.commit(change)
        bodies.append(change.body)
    return bodies


def test_bit_alarm_raise_and_clear_once_each():
    """A jam bit high for several polls raises once and clears once, in order."""
    tracker = AlarmTracker([p("jam", table="discrete", type="bool", role="alarm")])
    events = [
        e for v in [False, True, True, True, False, False] for e in stored(tracker, {"jam": v})
    ]
    assert [(e["alarm"], e["state"], e["condition"]) for e in events] == [
        ("jam", "raised", "active"),
        ("jam", "cleared", "active"),
    ]


def test_active_low_alarm_and_first_sight():
    """alarm_when = false (a normally-closed e-stop) raises on 0; active at start raises once."""
    tracker = AlarmTracker([p("estop", type="bit", bit=2, role="alarm", alarm_when=False)])
    assert [e["state"] for e in stored(tracker, {"estop": False})] == ["raised"]
    assert tracker.active == ["estop"]
    assert [e["state"] for e in stored(tracker, {"estop": True})] == ["cleared"]


def test_threshold_alarm_with_hysteresis():
    """Temperature hovering at the limit raises once and clears only below limit - hysteresis."""
    tracker = AlarmTracker([p("t", alarm_above=80.0, hysteresis=5.0, unit="degC")])
    series = [70, 81, 79, 80.5, 76, 74, 82]
    events = [e for v in series for e in stored(tracker, {"t": v})]
    assert [(e["state"], e["value"]) for e in events] == [
        ("raised", 81),
        ("cleared", 74),
        ("raised", 82),
    ]
    assert events[0]["limit"] == 80.0 and events[0]["unit"] == "degC"
    low = AlarmTracker([p("s", alarm_below=1.0)])
    assert [e["condition"] for v in [2, 0.5] for e in stored(low, {"s": v})] == ["below"]


def test_alarm_state_moves_only_when_committed():
    """An uncommitted raise (refused by the buffer) is offered again; its clear is not invented."""
    tracker = AlarmTracker([p("jam", table="discrete", type="bool", role="alarm")])
    assert stored(tracker, {"jam": False}) == []
    assert [c.body["state"] for c in tracker.update({"jam": True})] == ["raised"]  # refused
    assert tracker.active == []
    assert [c.body["state"] for c in tracker.update({"jam": False})] == []  # never raised
    assert [e["state"] for e in stored(tracker, {"jam": True})] == ["raised"]
    assert tracker.active == ["jam"]
