"""Report by exception: which polled values are worth an event.

Conveyor telemetry polled at 10 Hz would flood the broker with identical numbers. A value is
reported when it moves beyond its deadband since the value last *reported* (not last polled, so
a slow drift still gets through once it adds up), or when ``heartbeat`` seconds passed without a
report, which tells central "still alive, still this value". Counters (photo-eye carton counts)
are reported as deltas. A counter that falls has either wrapped (65535 -> 3 is 4 cartons, not
-65532) or been reset by the PLC (40000 -> 3 is 3 cartons since the reset, not 25539): it is
taken for a wrap only when the point rolls over and the counts across the wrap are plausible
for one poll (``max_delta``), else for a reset, which the next reading says (``reset``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from drivers.modbus.config import PointConfig
from drivers.modbus.decode import Number

Reason = Literal["change", "heartbeat"]


@dataclass(slots=True)
class _Reported:
    value: Number
    at: float
    raw: int = 0
    pending: int = 0
    """Counters: counts seen since the last report (the delta the next report carries)."""
    reset: bool = False
    """Counters: a reset was assumed since the last report (the next report says so)."""


class ReadingFilter:
    """Per-point report-by-exception state for one device."""

    def __init__(self, points: Iterable[PointConfig], heartbeat: float) -> None:
        self._points = {p.name: p for p in points if p.role != "alarm"}
        self._heartbeat = heartbeat
        self._last: dict[str, _Reported] = {}
        self.counter_resets = 0

    def offer(self, values: Mapping[str, Number], now: float) -> tuple[dict[str, Any], Reason]:
        """The entries to report for one poll of some points, and why (change wins)."""
        entries: dict[str, Any] = {}
        reason: Reason = "heartbeat"
        for name, value in values.items():
            point = self._points.get(name)
            if point is None:
                continue
            if point.role == "counter":
                due = self._counter(point, int(value), now)
            else:
                due = self._value(point, value, now)
            if due is None:
                continue
            if due == "change":
                reason = "change"
            entries[name] = self._entry(point, value)
        return entries, reason

    def next_heartbeat(self, names: Iterable[str]) -> float:
        """When the first of ``names`` is due a heartbeat (inf: none was reported yet)."""
        last = self._last
        return self._heartbeat + min(
            (last[name].at for name in names if name in last), default=math.inf
        )

    def _value(self, point: PointConfig, value: Number, now: float) -> Reason | None:
        last = self._last.get(point.name)
        if last is None or _moved(point, last.value, value):
            self._last[point.name] = _Reported(value, now)
            return "change"
        if now - last.at >= self._heartbeat:
            last.value, last.at = value, now
            return "heartbeat"
        return None

    def _counter(self, point: PointConfig, raw: int, now: float) -> Reason | None:
        last = self._last.get(point.name)
        if last is None:
            self._last[point.name] = _Reported(raw, now, raw=raw)
            return "change"
        delta = raw - last.raw
        if delta < 0:
            wrapped = delta + (1 << (16 if point.type == "uint16" else 32))
            if point.rollover and wrapped <= point.max_delta:
                delta = wrapped
            else:
                # No wrap, or more than the line can count in one poll: the PLC reset it, and
                # what it shows now was counted since.
                self.counter_resets += 1
                last.reset = True
                delta = raw
        last.raw = raw
        last.pending += delta
        if last.reset or last.pending > point.deadband:
            last.value, last.at = raw, now
            return "change"
        if now - last.at >= self._heartbeat:
            last.value, last.at = raw, now
            return "heartbeat"
        return None

    def _entry(self, point: PointConfig, value: Number) -> dict[str, Any]:
        entry: dict[str, Any] = {"value": value}
        if point.role == "counter":
            last = self._last[point.name]
            entry["delta"] = last.pending
            if last.reset:
                entry["reset"] = True
            last.pending, last.reset = 0, False
        if point.unit is not None:
            entry["unit"] = point.unit
        return entry


def _moved(point: PointConfig, last: Number, value: Number) -> bool:
    """Beyond the deadband: strictly, so a deadband of 0 reports any change at all."""
    if isinstance(value, bool) or isinstance(last, bool):
        return value != last
    band = point.deadband
    if point.deadband_percent is not None:
        band = abs(last) * point.deadband_percent / 100
    return abs(value - last) > band
