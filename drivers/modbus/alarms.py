"""Alarm tracking: jam, e-stop and motor-fault bits, and thresholds on measured values.

An alarm is an edge, not a level: one event when it is raised and one when it clears, never
repeated while it stays, so central can open and close a ticket per occurrence. Thresholds have
hysteresis so a temperature hovering at its limit does not raise and clear on every poll.
State lives only in memory: after a gateway restart an alarm still active is raised again,
which consumers treat as the same open alarm. State moves only when the transition's event was
stored (``commit``): a raise the buffer refused, or whose store failed, is offered again at the
next poll, so central never gets a "cleared" it did not see raised.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from drivers.modbus.config import PointConfig
from drivers.modbus.decode import Number

Condition = Literal["active", "above", "below"]


@dataclass(frozen=True, slots=True)
class Transition:
    """An alarm changing state, and the body of its event."""

    key: tuple[str, Condition]
    raised: bool
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Alarm:
    point: PointConfig
    condition: Condition
    limit: float | None


class AlarmTracker:
    """Turns polled values into raise/clear event bodies for one device."""

    def __init__(self, points: Iterable[PointConfig]) -> None:
        self._alarms: dict[str, list[_Alarm]] = {}
        for point in points:
            found: list[_Alarm] = []
            if point.role == "alarm":
                found.append(_Alarm(point, "active", None))
            if point.alarm_above is not None:
                found.append(_Alarm(point, "above", point.alarm_above))
            if point.alarm_below is not None:
                found.append(_Alarm(point, "below", point.alarm_below))
            if found:
                self._alarms[point.name] = found
        self._active: dict[tuple[str, Condition], bool] = {}

    @property
    def active(self) -> list[str]:
        """Names of alarms currently raised, for health details."""
        return sorted(
            f"{name}" if cond == "active" else f"{name}_{cond}"
            for (name, cond), on in self._active.items()
            if on
        )

    def update(self, values: Mapping[str, Number]) -> list[Transition]:
        """Every alarm that changes state with these values; none moves until committed."""
        changes: list[Transition] = []
        for name, value in values.items():
            for alarm in self._alarms.get(name, ()):
                key = (name, alarm.condition)
                was = self._active.get(key)
                now = _active(alarm, value, bool(was))
                if was is None and not now:
                    self._active[key] = False  # first sight and quiet: nothing happened
                    continue
                if now == bool(was) and was is not None:
                    continue
                changes.append(Transition(key, now, _body(alarm, value, now)))
        return changes

    def commit(self, change: Transition) -> None:
        """``change``'s event was stored: the alarm is now in its new state."""
        self._active[change.key] = change.raised


def _active(alarm: _Alarm, value: Number, was: bool) -> bool:
    point = alarm.point
    if alarm.condition == "active":
        return bool(value) == point.alarm_when
    assert alarm.limit is not None
    slack = point.hysteresis if was else 0.0
    if alarm.condition == "above":
        return value > alarm.limit - slack
    return value < alarm.limit + slack


def _body(alarm: _Alarm, value: Number, raised: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "alarm": alarm.point.name,
        "condition": alarm.condition,
        "state": "raised" if raised else "cleared",
        "value": value,
    }
    if alarm.limit is not None:
        body["limit"] = alarm.limit
    if alarm.point.unit is not None:
        body["unit"] = alarm.point.unit
    return body
