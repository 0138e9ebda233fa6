"""The rfid-llrp driver against the simulated reader on real TCP: smoothing, faults, feedback."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
from sllurp.llrp import LLRPClient, LLRPMessage, LLRPReaderConfig, LLRPReaderState

from drivers.base import DeviceEvent, Outcome, StoredEvent
from drivers.rfid_llrp import driver as rfid_driver
from drivers.rfid_llrp.config import RfidLlrpConfig
from drivers.rfid_llrp.driver import RfidLlrpDriver
from drivers.rfid_llrp.tagevents import ARRIVED, DEPARTED
from simulators import llrp_wire as w
from simulators.llrp_population import SimTag, epc_for
from simulators.llrp_reader import LlrpReaderSimulator
from tests import support

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

TIMEOUT = 5.0
PALLET = [epc_for(i) for i in range(40)]


@dataclass
class Harness:
    """A driver wired to a recording emit and status callback, and its simulated reader."""

    sim: LlrpReaderSimulator
    events: list[DeviceEvent] = field(default_factory=list)
    statuses: list[tuple[bool, str]] = field(default_factory=list)
    driver: RfidLlrpDriver | None = None

    async def emit(self, event: DeviceEvent) -> StoredEvent:
        self.events.append(event)
        n = len(self.events)
        return StoredEvent(f"ev-{n}", "portal", n, "2026-11-24T00:00:00.000000Z", event.type)

    def status(self, up: bool, detail: str) -> None:
        self.statuses.append((up, detail))

    def of(self, event_type: str) -> list[str]:
        return [e.data["epc"] for e in self.events if e.type == event_type]

    def ups(self, since: int = 0) -> list[bool]:
        """Whether each status reported from the ``since``-th on said up."""
        return [up for up, _ in self.statuses[since:]]

    def counter(self, name: str) -> int:
        assert self.driver is not None
        return self.driver.health().counters.get(name, 0)


wait_until = functools.partial(support.wait_until, timeout=TIMEOUT)


async def silenced_while_up(h: Harness) -> int:
    """Silence the reader once the driver reports it up and it has answered two keepalives;
    return how many statuses came before the silence.

    The watchdog allows one second (three 0.2 s keepalives), and on a loaded CI box the test's
    own loop, which runs the simulated reader too, has stalled that long: the driver saw a
    keepalive lost and came back up before the silence began (CI, stop 28). What the tests
    check is what follows the silence, so they count from here.
    """
    for _ in range(3):
        await wait_until(lambda: h.sim.active and bool(h.statuses) and h.statuses[-1][0])
        since, acks = len(h.statuses), h.sim.keepalive_acks
        await wait_until(lambda wanted=acks + 2: h.sim.keepalive_acks >= wanted)
        if len(h.statuses) == since:
            h.sim.silent = True
            return since
    raise AssertionError(f"the link kept flapping before any silence: {h.statuses}")


@contextlib.asynccontextmanager
async def running(*, start_sim: bool = True, **config: Any) -> AsyncIterator[Harness]:
    """Simulator + driver task; on exit run() must still be running, then it is cancelled."""
    sim = LlrpReaderSimulator()
    await sim.start()
    if not start_sim:
        sim.refuse = True
    settings = {
        "departure_s": 0.5,
        "keepalive_s": 0.3,
        "reconnect_min": 0.05,
        "reconnect_max": 0.2,
        "zones": {"dock": {"antennas": [1, 2]}, "inside": {"antennas": [3, 4]}},
        **config,
    }
    cfg = RfidLlrpConfig(
        id="portal", driver="rfid-llrp", host="127.0.0.1", port=sim.port, **settings
    )
    h = Harness(sim)
    h.driver = RfidLlrpDriver(cfg, emit=h.emit, report_status=h.status)
    task = asyncio.create_task(h.driver.run())
    try:
        yield h
        assert not task.done(), "run() returned or raised"
    finally:
        task.cancel()
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(task, return_exceptions=True)
        await sim.close()
    assert task.cancelled()


async def test_pallet_of_40_gives_40_arrived_then_40_departed_and_nothing_else():
    """40 tags x 25 reads/s on two antennas for 2 s (1,000 reads/s): exactly 80 events."""
    async with running() as h:
        await wait_until(lambda: h.sim.active)
        h.sim.population.pallet(PALLET, h.sim.now(), 2.0, reads_per_s=25)
        await wait_until(lambda: len(h.of(ARRIVED)) == 40)
        await wait_until(lambda: len(h.of(DEPARTED)) == 40, timeout=2.0 + 0.5 + TIMEOUT)
        await asyncio.sleep(0.3)
        assert h.sim.reads_sent >= 1800, "about 1,000 raw reads/s for 2 s"
        assert len(h.events) == 80, "1,000 reads/s must not become 1,000 events/s"
        assert sorted(h.of(ARRIVED)) == sorted(h.of(DEPARTED)) == sorted(PALLET)
        first_departure = next(i for i, e in enumerate(h.events) if e.type == DEPARTED)
        assert first_departure == 40, "every arrival precedes every departure"
        arrived = h.events[0].data
        assert arrived["zone"] == "dock" and arrived["antenna"] in (1, 2)
        assert arrived["gtin"] == "80614141123458"
        departed = h.events[-1].data
        assert departed["reads"] >= 40 and departed["dwell_s"] > 1.5
        assert h.statuses == [(True, h.statuses[0][1])]
        assert "inventorying on 127.0.0.1" in h.statuses[0][1]


async def test_reader_drop_mid_inventory_down_up_once_rospec_reinstalled_no_lost_arrivals():
    """The reader drops half-way through a pallet: down once, up once, ROSpec added again,
    each tag arrives exactly once (including tags first seen after the drop) and departs once."""
    async with running() as h:
        await wait_until(lambda: h.sim.active)
        first, second = PALLET[:20], PALLET[20:]
        h.sim.population.pallet(first, h.sim.now(), 3.0, reads_per_s=20)
        await wait_until(lambda: len(h.of(ARRIVED)) == 20)
        h.sim.drop()
        h.sim.population.pallet(second, h.sim.now(), 2.0, reads_per_s=20)
        await wait_until(lambda: len(h.of(ARRIVED)) == 40)
        await wait_until(lambda: len(h.of(DEPARTED)) == 40, timeout=10)
        assert [up for up, _ in h.statuses] == [True, False, True]
        assert h.sim.rospecs_added == 2
        assert h.counter("rospec_installs") == 2
        assert sorted(h.of(ARRIVED)) == sorted(PALLET), "no tag lost, none repeated"
        assert len(h.events) == 80


async def test_keepalive_lost_marks_down_once_then_recovers():
    """A reader that goes silent (no answers, keepalives or reports) is down, then up once.

    connect_timeout is short: a reconnect attempted while the reader is still silent would
    otherwise wait the default 5 s for an answer before the next try.
    """
    async with running(keepalive_s=0.2, connect_timeout=0.5) as h:
        since = await silenced_while_up(h)
        # Generous bounds and no exact match of a passing state: the down may be followed by
        # the reconnect's up within milliseconds, and a loaded box's poll missed that window.
        await wait_until(lambda: len(h.statuses) >= since + 1, timeout=10)
        assert h.ups(since)[:1] == [False]
        assert "keepalive lost" in h.statuses[since][1]
        h.sim.silent = False
        await wait_until(lambda: len(h.statuses) >= since + 2, timeout=10)
        await asyncio.sleep(0.3)  # no flapping after it
        assert h.ups(since) == [False, True], "down once, up once"
        assert h.counter("keepalive_lost") >= 1


async def test_not_up_while_a_reconnected_reader_answers_nothing_up_once_it_answers():
    """After a keepalive loss the reader takes connections (and even sends its connection
    event) but answers nothing: however many reconnects that lasts, it is not reported up. It
    is up once it answers the setup and starts the ROSpec, and only then."""
    async with running(keepalive_s=0.2, connect_timeout=0.5) as h:
        since = await silenced_while_up(h)
        await wait_until(lambda: len(h.statuses) >= since + 1, timeout=10)
        assert h.ups(since) == [False]
        connections = h.sim.connections
        asked = h.sim.received.count(w.GET_READER_CAPABILITIES)
        # Three reconnects, each one connected and asking for the reader's capabilities.
        await wait_until(lambda: h.sim.connections >= connections + 3, timeout=20)
        await wait_until(
            lambda: h.sim.received.count(w.GET_READER_CAPABILITIES) >= asked + 3, timeout=10
        )
        assert h.ups(since) == [False], "up while the reader is silent"
        assert not h.sim.active
        h.sim.silent = False
        await wait_until(lambda: len(h.statuses) >= since + 2, timeout=20)
        assert h.sim.active, "up only once the reader started the ROSpec"
        await asyncio.sleep(0.3)  # no flapping after it
        assert h.ups(since) == [False, True], "down once, up once"


async def test_unreachable_then_error_response_then_up():
    """Refused connections and an ADD_ROSPEC error keep it down (once), then it comes up."""
    async with running(start_sim=False) as h:
        await wait_until(lambda: h.statuses != [])
        assert h.statuses[0][0] is False
        assert "reader refused the session" in h.statuses[0][1]
        h.sim.fail_next[20] = (101, "ROSpec rejected")
        h.sim.refuse = False
        await wait_until(lambda: h.sim.active)
        await wait_until(lambda: h.statuses[-1][0])
        assert [up for up, _ in h.statuses] == [False, True], "down once, up once"
        assert h.counter("setup_failures") >= 2, "refusals, then the ADD_ROSPEC error"
        assert h.counter("error_responses") == 1


async def test_malformed_frames_are_counted_not_fatal():
    """Undecodable messages are counted and skipped; an impossible header forces a reconnect."""
    async with running() as h:
        await wait_until(lambda: h.sim.active)
        garbage = struct.pack("!HII", (1 << 10) | 61, 14, 9) + b"\x00\x00\x00\x00"
        for _ in range(5):
            h.sim.send_raw(garbage)
        h.sim.population.pallet(PALLET[:3], h.sim.now(), 0.3)
        await wait_until(lambda: len(h.of(ARRIVED)) == 3)
        assert h.counter("malformed") == 5
        assert [up for up, _ in h.statuses] == [True]
        h.sim.send_raw(b"\xff" * 10)
        await wait_until(lambda: h.sim.connections == 2)
        await wait_until(lambda: [up for up, _ in h.statuses] == [True, False, True])
        assert "out of sync" in h.statuses[1][1]


async def test_a_report_just_before_a_bad_header_is_not_lost_with_the_connection():
    """One read holding a whole tag report and then an impossible header: the connection is
    dropped, but the report arrived whole, so its tag is an arrival (it was lost with the
    connection; the reader never sends a report twice)."""
    async with running() as h:
        await wait_until(lambda: h.sim.active)
        spec = h.sim.rospec
        assert spec is not None
        stamp = w.now_us()
        report = w.ro_access_report(
            9001, [w.tag_report_data(PALLET[7], 1, -50, stamp, stamp, 1, spec.rospec_id)]
        )
        h.sim.send_raw(report + b"\xff" * 10)  # one write: one read on loopback
        await wait_until(lambda: [up for up, _ in h.statuses] == [True, False, True])
        assert "out of sync" in h.statuses[1][1]
        assert h.of(ARRIVED) == [PALLET[7]]


async def test_gpi_trigger_starts_and_stops_inventory():
    """With a photo-eye on GPI 1 nothing is read until it goes high, and reading stops when low."""
    async with running(
        start_trigger={"type": "gpi", "gpi_port": 1},
        stop_trigger={"type": "gpi", "gpi_port": 1, "gpi_state": False},
    ) as h:
        await wait_until(lambda: h.sim.rospec is not None and h.sim.rospec.enabled)
        await wait_until(lambda: h.statuses != [])
        assert "waiting for GPI 1" in h.statuses[0][1]
        h.sim.population.linger(PALLET[0], h.sim.now(), antennas=(1,))
        await asyncio.sleep(0.3)
        assert h.events == [] and not h.sim.active
        h.sim.set_gpi(1, True)
        await wait_until(lambda: len(h.of(ARRIVED)) == 1)
        h.sim.set_gpi(1, False)
        assert not h.sim.active


async def test_gpo_pulses_and_merging():
    """good pulses GPO 1 on then off; a second good during the pulse extends it (merged)."""
    async with running(gpo_good=1, gpo_bad=2, gpo_pulse_ms=100) as h:
        await wait_until(lambda: h.sim.active)
        await wait_until(lambda: bool(h.statuses))
        assert h.driver is not None
        resets = len(h.sim.gpo_writes)
        assert resets == 2, "both configured outputs switched off at setup"
        first = asyncio.create_task(h.driver.feedback(Outcome.GOOD))
        await asyncio.sleep(0.03)
        await h.driver.feedback(Outcome.GOOD)
        await first
        await h.driver.feedback(Outcome.BAD)
        await h.driver.feedback(Outcome.PENDING)  # no port configured: nothing
        writes = [(port, state) for _, port, state in h.sim.gpo_writes[resets:]]
        assert writes == [(1, True), (1, False), (2, True), (2, False)]
        on, off = h.sim.gpo_writes[resets][0], h.sim.gpo_writes[resets + 1][0]
        assert 0.12 <= off - on < 0.5, "the merged pulse ran ~130 ms"
        assert (h.driver.gpo.pulses, h.driver.gpo.merged) == (2, 1)


async def test_sllurp_own_client_accepts_the_simulator():
    """sllurp's LLRPClient state machine, fed over asyncio, reaches INVENTORYING and gets tags."""
    async with LlrpReaderSimulator() as sim:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
        client = LLRPClient(
            LLRPReaderConfig({"antennas": [1, 2], "report_every_n_tags": 1}),
            transport_tx_write=writer.write,
        )
        tags: list[dict[str, Any]] = []
        sim.population.linger(PALLET[0], sim.now(), antennas=(1, 2))
        try:
            async with asyncio.timeout(TIMEOUT):
                while not tags:
                    header = await reader.readexactly(10)
                    length = struct.unpack("!HII", header)[1]
                    msg = LLRPMessage(msgbytes=header + await reader.readexactly(length - 10))
                    client.handleMessage(msg)
                    if msg.getName() == "RO_ACCESS_REPORT":
                        tags += msg.msgdict["RO_ACCESS_REPORT"]["TagReportData"]
        finally:
            writer.close()
        assert client.state == LLRPReaderState.STATE_INVENTORYING
        assert tags[0]["EPC"] == PALLET[0].encode()
        assert sim.rospecs_added == 1


async def test_keepalive_flood_from_a_peer_that_never_reads_drops_the_session():
    """A peer flooding KEEPALIVEs and reading nothing: our unsent answers are capped, the
    session dropped (counted, down once), and a fresh one set up."""
    async with running(keepalive_s=5.0) as h:
        await wait_until(lambda: h.sim.active)
        await wait_until(lambda: [up for up, _ in h.statuses] == [True])
        assert h.driver is not None
        assert h.driver._llrp is not None
        # Our kernel send buffer made small, as the simulator makes its receive buffer: the
        # flood then reaches our own queue after ~30k keepalives instead of ~1M (5 s of work).
        sock = h.driver._llrp._writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        h.sim.flood_keepalives()
        await wait_until(lambda: h.counter("write_overflow") == 1)
        await wait_until(lambda: [up for up, _ in h.statuses] == [True, False, True])
        assert "not reading" in h.statuses[1][1]
        assert h.sim.connections == 2


@pytest.mark.parametrize(
    "keepalive_s", [1.0, 0.25], ids=["session-survives", "keepalive-lost-and-reconnect"]
)
async def test_reader_silence_neither_departs_nor_re_arrives_tags_still_there(keepalive_s):
    """3 tags that never leave, and the reader says nothing for longer than departure_s (a
    switch glitch, a pulled cable; long enough, or not, to lose the session): no departure and
    no second arrival. Once the tags really leave, each departs once."""
    async with running(
        departure_s=0.5, keepalive_s=keepalive_s, connect_timeout=0.5, zones={}
    ) as h:
        assert h.driver is not None
        await wait_until(lambda: h.sim.active)
        tags = PALLET[:3]
        for epc in tags:
            h.sim.population.add(SimTag(epc, h.sim.now(), None, (1,), reads_per_s=25.0))
        await wait_until(lambda: len(h.of(ARRIVED)) == 3)
        h.sim.silent = True
        if keepalive_s == 1.0:
            await asyncio.sleep(1.2)  # the silence itself (> departure_s), not a wait for a result
        else:  # silent until the session is given up (1 s), so the reconnect finds it talking
            await wait_until(lambda: [up for up, _ in h.statuses] == [True, False])
        h.sim.silent = False
        reads = h.driver.smoother.reads
        # Heard from again (a reconnect that raced the end of the silence waits 5 s for setup).
        await wait_until(lambda: h.driver.smoother.reads > reads + 30, timeout=15)
        for epc in tags:
            h.sim.population.remove(epc)
        await wait_until(lambda: len(h.of(DEPARTED)) >= 3)
        assert sorted(h.of(ARRIVED)) == sorted(tags), "no tag arrived twice"
        assert sorted(h.of(DEPARTED)) == sorted(tags), "each departed once, after leaving"
        expected = [True] if keepalive_s == 1.0 else [True, False, True]
        assert [up for up, _ in h.statuses] == expected


async def test_gpo_pulse_in_progress_is_lit_again_after_a_reconnect():
    """A reconnect switches every feedback GPO off; one still pulsing is switched on again, and
    off when its pulse ends (here: cancelled)."""
    async with running(gpo_good=1, gpo_pulse_ms=20_000) as h:
        assert h.driver is not None
        await wait_until(lambda: [up for up, _ in h.statuses] == [True])
        base = len(h.sim.gpo_writes)

        def writes() -> list[tuple[int, bool]]:
            return [(port, state) for _, port, state in h.sim.gpo_writes[base:]]

        pulse = asyncio.create_task(h.driver.feedback(Outcome.GOOD))
        await wait_until(lambda: writes() == [(1, True)])
        h.sim.drop()
        await wait_until(lambda: [up for up, _ in h.statuses] == [True, False, True])
        await wait_until(lambda: writes() == [(1, True), (1, False), (1, True)])
        pulse.cancel()
        await asyncio.gather(pulse, return_exceptions=True)
        await wait_until(lambda: writes() == [(1, True), (1, False), (1, True), (1, False)])


async def test_no_descriptor_or_task_leaks_over_25_reader_drops():
    """25 reader drops mid-inventory, each down once and set up again: the process ends holding
    no more file descriptors and asyncio tasks than after the first."""
    async with running() as h:
        await wait_until(lambda: h.sim.active)

        async def cycle(n: int) -> None:
            h.sim.drop()
            await wait_until(lambda: h.sim.rospecs_added == n + 1)
            await wait_until(lambda: [up for up, _ in h.statuses].count(True) == n + 1)

        await cycle(1)
        fds, tasks = support.open_fds(), len(asyncio.all_tasks())
        for n in range(2, 27):
            await cycle(n)
        await support.assert_no_leaks(fds, tasks)
        assert [up for up, _ in h.statuses] == [True, False] * 26 + [True]


async def test_tags_do_not_depart_while_the_reader_is_not_read_because_emits_are_backed_up(
    monkeypatch,
):
    """The buffer stalls with 3 arrivals in flight, the in-flight cap is reached and the
    reader's socket is left unread for longer than departure_s while the tags stay: nothing
    departs. Once the buffer moves on, the backlog is read; the tags depart only after leaving."""
    monkeypatch.setattr(rfid_driver, "_MAX_IN_FLIGHT", 3)
    async with running(departure_s=0.5, keepalive_s=5.0, zones={}) as h:
        assert h.driver is not None
        gate = asyncio.Event()
        recorded = h.emit

        async def stalled_emit(event: DeviceEvent) -> StoredEvent:
            await gate.wait()  # a busy disk: nothing commits until the gate opens
            return await recorded(event)

        h.driver._emit = stalled_emit
        await wait_until(lambda: h.sim.active)
        tags = PALLET[:3]
        for epc in tags:
            h.sim.population.add(SimTag(epc, h.sim.now(), None, (1,), reads_per_s=25.0))
        await wait_until(lambda: h.counter("arrived") == 3)
        assert not h.driver._room.is_set(), "the reader's socket is no longer read"
        reads = h.driver.smoother.reads
        await asyncio.sleep(1.2)  # the stall itself (> departure_s), not a wait for a result
        assert h.counter("departed") == 0, "a tag departed while the reader was not read"
        gate.set()
        await wait_until(lambda: len(h.of(ARRIVED)) == 3)
        await wait_until(lambda: h.driver.smoother.reads > reads + 30)
        assert h.counter("departed") == 0
        for epc in tags:
            h.sim.population.remove(epc)
        await wait_until(lambda: len(h.of(DEPARTED)) >= 3)
        assert sorted(h.of(ARRIVED)) == sorted(tags), "no tag arrived twice"
        assert sorted(h.of(DEPARTED)) == sorted(tags), "each departed once, after leaving"
        assert [up for up, _ in h.statuses] == [True]
