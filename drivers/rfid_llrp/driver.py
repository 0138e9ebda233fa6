"""The ``rfid-llrp`` driver: an LLRP reader's tag reads in, arrivals and departures out, GPO back.

Readers get power-cycled, lose their network and reboot for firmware updates; every such fault is
"down once, retry with jittered backoff, re-install the ROSpec, up once" and never escapes
``run()``. Tag presence lives here, not in the connection, so a reader drop mid-pallet neither
loses the tags already seen nor reports them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from functools import partial
from typing import ClassVar

from drivers.base import DeviceEvent, EmitFn, EventFeedback, Outcome, StatusFn
from drivers.reconnecting import ReconnectingDriver
from drivers.rfid_llrp import messages
from drivers.rfid_llrp.config import RfidLlrpConfig
from drivers.rfid_llrp.decode import TagRead
from drivers.rfid_llrp.feedback import GpoPulser
from drivers.rfid_llrp.plan import (
    ROSPEC_ID,
    ReaderMismatchError,
    ReaderPlan,
    plan_from_capabilities,
)
from drivers.rfid_llrp.session import LlrpSession, SessionError
from drivers.rfid_llrp.smoothing import Smoother
from drivers.rfid_llrp.tagevents import ARRIVED, DEPARTED, tag_event

_REQUEST_TIMEOUT = 5.0
_CLOSE_TIMEOUT = 1.0
_MAX_IN_FLIGHT = 2048
"""Events handed to ``emit`` and not yet stored; beyond this the reader's socket is not read,
so TCP pushes back on the reader instead of the gateway buffering without bound."""


class RfidLlrpDriver(ReconnectingDriver[RfidLlrpConfig]):
    """Reads an LLRP reader; see ``drivers/rfid_llrp/README.md``."""

    config_model = RfidLlrpConfig
    event_feedback: ClassVar[Mapping[str, EventFeedback]] = {
        ARRIVED: EventFeedback.CONFIRM,
        DEPARTED: EventFeedback.NONE,
    }
    """An arrival is what the worker at the portal waits on; nobody waits to hear a departure."""
    retry_event = "reader_retry"

    def __init__(self, config: RfidLlrpConfig, *, emit: EmitFn, report_status: StatusFn) -> None:
        super().__init__(config, emit=emit, report_status=report_status)
        self.smoother = Smoother(
            config.zone_of_antenna(),
            config.departure_of_zone(),
            arrive_reads=config.arrive_reads,
            min_rssi=config.min_rssi,
        )
        ports = {
            outcome: port
            for outcome, port in (
                (Outcome.GOOD, config.gpo_good),
                (Outcome.BAD, config.gpo_bad),
                (Outcome.PENDING, config.gpo_pending),
            )
            if port is not None
        }
        self.gpo = GpoPulser(ports, config.gpo_pulse_ms / 1000, self._write_gpo)
        self._llrp: LlrpSession | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._room.set()
        self._probe: asyncio.Task[None] | None = None
        self.plan: ReaderPlan | None = None

    async def run(self) -> None:
        """Connect, configure, read and reconnect until cancelled; faults only mark it down."""
        expiry = asyncio.create_task(self._expire_loop(), name=f"rfid-expiry-{self.device_id}")
        try:
            await super().run()
        finally:
            expiry.cancel()
            probe, self._probe = self._probe, None
            if probe is not None:
                probe.cancel()
            await asyncio.gather(expiry, *([probe] if probe else []), return_exceptions=True)

    async def feedback(self, outcome: Outcome) -> None:
        """Pulse the GPO configured for ``outcome``; a no-op without one or without a reader."""
        try:
            await self.gpo.pulse(outcome)
        except Exception as exc:
            self._log.warning("feedback_failed", outcome=outcome.value, error=str(exc))

    async def stop(self) -> None:
        """Let events already handed to ``emit`` reach the buffer, briefly."""
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=2.0)

    async def _session(self) -> str:
        """One connect-configure-read cycle; returns why it ended."""
        cfg = self.config
        try:
            async with asyncio.timeout(cfg.connect_timeout):
                reader, writer = await asyncio.open_connection(cfg.host, cfg.port)
        except (OSError, TimeoutError) as exc:
            self.count("connect_failures")
            why = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            return f"cannot connect to {cfg.host}:{cfg.port}: {why}"
        session = LlrpSession(
            reader,
            writer,
            on_report=self._on_report,
            count=self.count,
            idle_timeout=max(1.0, 3 * cfg.keepalive_s),
            log=self._log,
            after_chunk=self._wait_for_room,
        )
        pump = asyncio.create_task(session.pump(), name=f"llrp-pump-{self.device_id}")
        try:
            try:
                self.plan = await self._configure(session)
            except ReaderMismatchError as exc:
                self.count("config_mismatch")
                return f"reader cannot do what the config asks: {exc}"
            except SessionError as exc:
                self.count("setup_failures")
                return f"setup failed: {exc}"
            except (KeyError, TypeError, ValueError) as exc:  # a capabilities dict we cannot read
                self.count("setup_failures")
                return f"setup failed: unexpected reader response ({exc!r})"
            self._llrp = session
            self.smoother.hold(asyncio.get_running_loop().time())
            self._mark_up(self._describe(self.plan))
            await self.gpo.reassert()  # setup switched off outputs that are mid-pulse
            reason = await pump
            self.count("disconnects")
            return reason
        finally:
            self._llrp = None
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await writer.wait_closed()

    async def _configure(self, session: LlrpSession) -> ReaderPlan:
        """Bring the reader from "connected" to "inventorying (or armed) with our ROSpec"."""
        timeout = _REQUEST_TIMEOUT
        await session.wait_connected(self.config.connect_timeout)
        if self.config.search_mode is not None:
            await session.request(
                messages.impinj_enable_extensions, "IMPINJ_ENABLE_EXTENSIONS", timeout
            )
        caps = await session.request(
            messages.get_reader_capabilities, "GET_READER_CAPABILITIES", timeout
        )
        plan = plan_from_capabilities(self.config, caps)
        await session.request(
            lambda i: messages.set_reader_config(i, plan), "SET_READER_CONFIG", timeout
        )
        for port in self.gpo.ports:  # a pulse cut short by the drop may have left it on
            await session.request(
                partial(messages.gpo_write, port=port, state=False), "GPO", timeout
            )
        session.send(messages.frame(messages.ENABLE_EVENTS_AND_REPORTS, session.next_id()))
        # Whatever ROSpec is on the reader (ours from before a drop, or a stale one) goes first.
        await session.request(
            lambda i: messages.with_id(messages.DELETE_ROSPEC, i, 0), "DELETE_ROSPEC", timeout
        )
        await session.request(lambda i: messages.add_rospec(i, plan), "ADD_ROSPEC", timeout)
        await session.request(
            lambda i: messages.with_id(messages.ENABLE_ROSPEC, i, ROSPEC_ID),
            "ENABLE_ROSPEC",
            timeout,
        )
        self.count("rospec_installs")
        return plan

    def _on_report(self, reads: list[TagRead]) -> None:
        mono, wall = asyncio.get_running_loop().time(), time.time()
        observe = self.smoother.observe
        decode = self.config.decode_epc
        for read in reads:
            presence = observe(read, mono, wall)
            if presence is not None:
                self._submit(tag_event(presence, departed=False, decode=decode))

    async def _expire_loop(self) -> None:
        """Departures: checked a few times a second while the reader is connected.

        A tag departs only once the reader has been heard from after its deadline: silence is
        not absence. A reader that rebooted, a pulled cable (noticed only after 3 keepalives)
        or a socket left unread while emits are backed up all look like silence, and would
        otherwise make every present tag depart and then arrive again.
        """
        tick = min(0.1, min(self.config.departure_of_zone().values()) / 4)
        loop = asyncio.get_running_loop()
        decode = self.config.decode_epc
        while True:
            await asyncio.sleep(tick)
            session = self._llrp
            if session is None:
                continue  # nothing can be seen while down; not a reason to depart
            for presence in self.smoother.expire(session.last_heard):
                self._submit(tag_event(presence, departed=True, decode=decode))
            deadline = self.smoother.next_deadline()
            if deadline is not None and session.last_heard < deadline <= loop.time():
                self._ask(session)

    def _ask(self, session: LlrpSession) -> None:
        """A departure is due and the reader has been quiet since: ask it something.

        Its answer comes after every report it sent before, so it lets the departure go (or
        the tag's reads come first). Without it a quiet field would wait for the next keepalive.
        """
        if self._probe is not None and not self._probe.done():
            return
        self._probe = asyncio.create_task(self._probe_once(session))

    async def _probe_once(self, session: LlrpSession) -> None:
        self.count("probes")
        # Any answer will do, an error status included; no answer is the keepalive watchdog's.
        with contextlib.suppress(SessionError):
            await session.request(
                messages.get_reader_identification, "GET_READER_CONFIG", _REQUEST_TIMEOUT
            )

    def _submit(self, event: DeviceEvent) -> None:
        """Hand ``event`` to ``emit`` without waiting for its commit.

        Tasks start in creation order, and so do the buffer appends ``emit`` starts before its
        first await, so events keep their order in the buffer while many commit in one group.
        """
        self.count("arrived" if event.type.endswith("arrived.v1") else "departed")
        task = asyncio.create_task(self._emit_one(event))
        self._in_flight.add(task)
        task.add_done_callback(self._done)
        if len(self._in_flight) >= _MAX_IN_FLIGHT:
            self._room.clear()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if len(self._in_flight) < _MAX_IN_FLIGHT // 2:
            self._room.set()

    async def _wait_for_room(self) -> None:
        if not self._room.is_set():
            await self._room.wait()

    async def _emit_one(self, event: DeviceEvent) -> None:
        try:
            stored = await self._emit(event)
        except Exception as exc:  # the buffer is gone; the supervisor reports that, not us
            self.count("emit_errors")
            self._log.error("emit_failed", type=event.type, epc=event.data["epc"], error=str(exc))
            return
        if stored is None:
            self.count("refused")

    async def _write_gpo(self, port: int, state: bool) -> bool:
        session = self._llrp
        if session is None:
            self.count("feedback_skipped")
            return False
        try:
            await session.request(
                lambda i: messages.gpo_write(i, port, state), "GPO write", _REQUEST_TIMEOUT
            )
        except SessionError as exc:
            self.count("feedback_failures")
            self._log.warning("gpo_write_failed", port=port, state=state, error=str(exc))
            return False
        return True

    def _describe(self, plan: ReaderPlan) -> str:
        """The status detail of a reader configured with ``plan``."""
        cfg = self.config
        what = f"armed, waiting for GPI {plan.start_gpi[0]}" if plan.start_gpi else "inventorying"
        return (
            f"{what} on {cfg.host}:{cfg.port}, antennas {list(plan.antennas)}, "
            f"{plan.power_dbm:g} dBm"
        )
