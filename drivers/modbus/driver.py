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
from drivers.modbus.decode import Number
from drivers.modbus.feedback import FeedbackWriter
from drivers.modbus.image import RequestImage
from drivers.modbus.plan import plan, split
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
        self._plans: dict[str, list[RequestImage]] = {}
        self._values: dict[str, Number] = {}
        """Every point's latest good value (this session), for heartbeats and alarm retries."""
        self._names: dict[str, tuple[str, ...]] = {}
        self._groups: dict[str, frozenset[str]] = {}
        self._sweep: dict[str, float] = {}
        """Per group: when a heartbeat falls due, so every point is offered again."""
        self._alarm_retry: set[str] = set()
        """Points whose alarm event the buffer refused: offered again at the next poll."""

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

    def _fresh_plans(self) -> dict[str, list[RequestImage]]:
        """Merged reads per group; recomputed per session so a fixed device map is re-merged.

        A new session starts with no previous answers: its first poll decodes and offers every
        point (an alarm whose event failed to store is offered again).
        """
        cfg = self.config
        self._values.clear()
        self._alarm_retry.clear()
        plans = {
            group: [
                RequestImage(request)
                for request in plan(
                    (p for p in cfg.points if p.group == group),
                    max_gap=cfg.max_gap,
                    max_registers=cfg.max_registers,
                    max_bits=cfg.max_bits,
                )
            ]
            for group in self._intervals
            if any(p.group == group for p in cfg.points)
        }
        self._names = {
            group: tuple(p.name for image in images for p in image.request.points)
            for group, images in plans.items()
        }
        self._groups = {group: frozenset(names) for group, names in self._names.items()}
        self._sweep = dict.fromkeys(plans, math.inf)
        return plans

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
        """Read the group; decode only the points whose registers changed since the last poll."""
        changed: dict[str, Number] = {}
        reads = non_finite = 0
        for image in list(self._plans[group]):
            request = image.request
            try:
                data = await link.read(request.table, request.start, request.count)
            except (DeviceError, BadReply) as exc:
                self._answered()
                image.forget()
                for point in request.points:
                    self._values.pop(point.name, None)
                self._refused(group, image, exc)
                continue
            if not self._up:
                self._answered()
            reads += 1
            if self._failing:
                for point in request.points:
                    self._recovered(point.name)
            non_finite += self._decode(image, data, changed)
        if reads:
            self.count("reads", reads)
        if non_finite:
            self.count("non_finite", non_finite)  # a NaN "no reading" has no JSON form
        await self._offer(group, changed)

    async def _offer(self, group: str, changed: dict[str, Number]) -> None:
        """Report what changed; every point of the group when a heartbeat is due."""
        now = asyncio.get_running_loop().time()
        if now >= self._sweep[group]:
            # A heartbeat is due: offer every point, changed or not.
            names = self._names[group]
            current = self._values
            await self._report(group, {n: current[n] for n in names if n in current}, now)
            self._sweep[group] = self._readings.next_heartbeat(names)
        elif changed or self._alarm_retry:
            await self._report(group, changed, now)
            if self._sweep[group] == math.inf:
                self._sweep[group] = self._readings.next_heartbeat(self._names[group])

    def _decode(self, image: RequestImage, data: bytes, changed: dict[str, Number]) -> int:
        """Decode the points ``data`` changed into ``changed``; how many read non-finite."""
        points = image.request.points
        current = self._values
        for index in image.changed(data):
            name = points[index].name
            value = image.decode(data, index)
            if isinstance(value, float) and not math.isfinite(value):
                image.non_finite.add(index)
                current.pop(name, None)
                continue
            image.non_finite.discard(index)
            changed[name] = current[name] = value
        return len(image.non_finite)

    async def _report(self, group: str, values: dict[str, Number], now: float) -> None:
        """Alarms first (they are what someone is waiting for), then the reading."""
        retry = self._alarm_retry
        if retry:
            # A refused alarm is offered again while its condition holds, changed or not.
            again = [n for n in retry if n in self._values and n in self._groups[group]]
            values = {**{n: self._values[n] for n in again}, **values}
            retry.difference_update(again)
        for change in self._alarms.update(values):
            event = DeviceEvent(type=ALARM_TYPE, data=change.body, droppable=False)
            if await self._emit(event) is None:
                self.count("alarms_refused")  # the next poll offers it again
                retry.add(change.key[0])
                continue
            self._alarms.commit(change)
            self.count("alarms")
            self._log.info("conveyor_alarm", **change.body)
        resets = self._readings.counter_resets
        entries, reason = self._readings.offer(values, now)
        if self._readings.counter_resets > resets:
            self.count("counter_resets", self._readings.counter_resets - resets)
        if entries:
            self.count("readings")
            data: dict[str, Any] = {"group": group, "reason": reason, "points": entries}
            await self._emit(DeviceEvent(type=READING_TYPE, data=data, droppable=True))

    def _refused(self, group: str, image: RequestImage, exc: DeviceError | BadReply) -> None:
        request = image.request
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
            index = plans.index(image)
            plans[index : index + 1] = [RequestImage(r) for r in split(request)]
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
