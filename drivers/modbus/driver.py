"""The ``modbus`` driver: polls conveyor sensors, emits readings by exception and alarms on edges.

One connection per device, one scheduler loop over its poll groups (the link serialises requests
anyway, and RS-485 cannot do two at once). A device that stops answering is marked down once,
retried with jittered exponential backoff and marked up once when it answers again; a point the
device refuses is isolated and reported while the others keep polling. Nothing here raises out
of ``run()`` for a device fault.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from drivers.base import DeviceEvent, EmitFn, EventFeedback, Outcome, StatusFn
from drivers.modbus.alarms import AlarmTracker
from drivers.modbus.client import BadReply, DeviceError, LinkDown, ModbusLink
from drivers.modbus.config import ModbusConfig
from drivers.modbus.decode import Number, decode_point
from drivers.modbus.feedback import FeedbackWriter
from drivers.modbus.plan import Request, plan, split
from drivers.modbus.report import ReadingFilter
from drivers.reconnecting import ReconnectingDriver, raise_if_cancelling

READING_TYPE = "warehouse.conveyor.reading.v1"
ALARM_TYPE = "warehouse.conveyor.alarm.v1"
_SPLIT_CODES = (1, 2, 3)
"""Exception codes that mean "this request is wrong for this device": isolate its points."""


class ModbusDriver(ReconnectingDriver[ModbusConfig]):
    """Reads one Modbus device; see ``drivers/modbus/README.md``."""

    config_model = ModbusConfig
    event_feedback: ClassVar[Mapping[str, EventFeedback]] = {
        ALARM_TYPE: EventFeedback.CONFIRM,
        READING_TYPE: EventFeedback.NONE,
    }
    """An alarm is confirmed like a scan (and a refused one is a loud bad); telemetry is never
    announced on the stack light, whatever happens to it."""
    retry_event = "modbus_retry"

    def __init__(self, config: ModbusConfig, *, emit: EmitFn, report_status: StatusFn) -> None:
        super().__init__(config, emit=emit, report_status=report_status)
        self._intervals = config.intervals()
        self._readings = ReadingFilter(config.points, config.heartbeat)
        self._alarms = AlarmTracker(config.points)
        self._link: ModbusLink | None = None
        self._feedback = FeedbackWriter(config, lambda: self._link, self.count)
        self._failing: dict[str, str] = {}
        self._plans: dict[str, list[Request]] = {}

    async def feedback(self, outcome: Outcome) -> None:
        """Write the configured coil or register for ``outcome``; skipped while disconnected."""
        await self._feedback.give(outcome)

    async def stop(self) -> None:
        """Close the link if ``run`` was cancelled mid-session."""
        if self._link is not None:
            self._link.close()
            self._link = None

    async def _session(self) -> str:
        """One connect-poll-close cycle; returns why it ended."""
        link = ModbusLink(self.config)
        try:
            await link.open()
        except LinkDown as exc:
            self.count("connect_failures")
            return str(exc)
        self._link = link
        self._plans = self._fresh_plans()
        try:
            await self._feedback.restore()
            await self._poll_loop(link)
        except LinkDown as exc:
            self.count("link_failures")
            return str(exc)
        finally:
            self._link = None
            link.close()
        return "poll loop ended"  # pragma: no cover - the loop only ends by raising

    def _fresh_plans(self) -> dict[str, list[Request]]:
        """Merged reads per group; recomputed per session so a fixed device map is re-merged."""
        cfg = self.config
        return {
            group: plan(
                (p for p in cfg.points if p.group == group),
                max_gap=cfg.max_gap,
                max_registers=cfg.max_registers,
                max_bits=cfg.max_bits,
            )
            for group in self._intervals
            if any(p.group == group for p in cfg.points)
        }

    async def _poll_loop(self, link: ModbusLink) -> None:
        """Poll each group on its own interval; a poll that overruns skips ticks, counted."""
        loop = asyncio.get_running_loop()
        due = dict.fromkeys(self._plans, loop.time())
        while True:
            group = min(due, key=due.__getitem__)
            delay = due[group] - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._poll_group(link, group)
            raise_if_cancelling()
            interval = self._intervals[group]
            late = loop.time() - due[group]
            missed = int(late // interval)
            if missed:
                self.count("overruns", missed)
            due[group] += (missed + 1) * interval

    async def _poll_group(self, link: ModbusLink, group: str) -> None:
        values: dict[str, Number] = {}
        for request in list(self._plans[group]):
            try:
                data = await link.read(request.table, request.start, request.count)
            except (DeviceError, BadReply) as exc:
                self._answered()
                self._refused(group, request, exc)
                continue
            self._answered()
            self.count("reads")
            for point in request.points:
                value = decode_point(request.slice_for(point, data), point)
                if isinstance(value, float) and not math.isfinite(value):
                    self.count("non_finite")  # a NaN "no reading" has no JSON form
                    continue
                values[point.name] = value
                self._recovered(point.name)
        if values:
            await self._report(group, values)

    async def _report(self, group: str, values: dict[str, Number]) -> None:
        """Alarms first (they are what someone is waiting for), then the reading."""
        for change in self._alarms.update(values):
            event = DeviceEvent(type=ALARM_TYPE, data=change.body, droppable=False)
            if await self._emit(event) is None:
                self.count("alarms_refused")  # the next poll offers it again
                continue
            self._alarms.commit(change)
            self.count("alarms")
            self._log.info("conveyor_alarm", **change.body)
        now = asyncio.get_running_loop().time()
        resets = self._readings.counter_resets
        entries, reason = self._readings.offer(values, now)
        if self._readings.counter_resets > resets:
            self.count("counter_resets", self._readings.counter_resets - resets)
        if entries:
            self.count("readings")
            data: dict[str, Any] = {"group": group, "reason": reason, "points": entries}
            await self._emit(DeviceEvent(type=READING_TYPE, data=data, droppable=True))

    def _refused(self, group: str, request: Request, exc: DeviceError | BadReply) -> None:
        if isinstance(exc, BadReply):
            # Logged below, once per split or failing point: a device that answers short
            # often cannot do long reads.
            self.count("bad_replies")
            split_it = True
        else:
            self.count(f"exception_{exc.code:02x}")
            split_it = exc.code in _SPLIT_CODES
        if split_it and len(request.points) > 1:
            # One bad address in a merged read must not cost the points around it.
            plans = self._plans[group]
            index = plans.index(request)
            plans[index : index + 1] = split(request)
            self.count("requests_split")
            self._log.warning("request_split", request=request.label, error=str(exc))
            return
        for point in request.points:
            if point.name not in self._failing:
                self.count("point_failures")
                self._log.warning("point_failing", point=point.name, error=str(exc))
            self._failing[point.name] = str(exc)
        self._refresh_detail()

    def _recovered(self, name: str) -> None:
        if self._failing.pop(name, None) is not None:
            self._log.info("point_recovered", point=name)
            self._refresh_detail()

    def _refresh_detail(self) -> None:
        if self._up:
            self.set_status(True, self._detail())

    def _detail(self) -> str:
        text = f"polling {self.config.transport} unit {self.config.unit}"
        if self._failing:
            text += f"; failing points: {', '.join(sorted(self._failing))}"
        return text

    def _answered(self) -> None:
        """The device answered: report it up, unless it already is."""
        if not self._up:
            self._mark_up(self._detail())
