"""Adversarial review of 6409176: ``delivered`` feedback told at the PUBACK (``Publisher._deliver``,
a ``call_soon`` per loop turn), no longer after the buffer's sent mark committed.

Each test is either a hole proven (``xfail(strict=True, reason="PROVEN: ...")``) or a passing pin
of a dismissal. Real parts only: a private Mosquitto (tests/conftest.py), the fault proxy
(tests/chaos/faultproxy.py), a real buffer file, the real pipeline and ``Confirmations`` wired
as the daemon wires them (``on_delivered`` -> ``Confirmations.delivered``).
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from buffer import schema
from buffer.rows import OutgoingEvent
from buffer.store import Buffer
from drivers.base import DeviceConfig, DeviceEvent, EmitFn, Outcome
from gateway.confirmations import Confirmations
from gateway.pipeline import Pipeline
from gateway.publisher import Publisher
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker
from tests.chaos.faultproxy import FaultProxy
from tests.integration.gateway.test_broker_refusals import broker_with, scan
from tests.integration.gateway.test_publisher import TOPICS, event
from tests.integration.gateway.test_publisher_stop import until_in_flight
from tests.support import publisher_and_central, running_publisher, wait_until

SCAN = "warehouse.barcode.scanned.v1"


class Rig:
    """Buffer file, pipeline, confirmations and publisher as the daemon wires them.

    ``given`` is every feedback the devices got, in order; ``told`` counts how often the
    publisher reported each event id delivered (``on_delivered``)."""

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self.given: list[tuple[str, Outcome]] = []
        self.confirmations = Confirmations(lambda d, o: self.given.append((d, o)))
        self.pipeline = Pipeline(buffer, self.confirmations, site="s", gateway_id="g")
        self.told: collections.Counter[str] = collections.Counter()

    def on_delivered(self, batch: Sequence[OutgoingEvent]) -> None:
        self.told.update(e.id for e in batch)
        self.confirmations.delivered(e.id for e in batch)

    def scanner(self, device: str, timeout: float = 60.0) -> EmitFn:
        config = DeviceConfig(
            id=device, driver="barcode-serial", confirm="delivered", confirm_timeout=timeout
        )
        return self.pipeline.emitter(config)

    def per_device(self) -> dict[str, list[Outcome]]:
        out: dict[str, list[Outcome]] = collections.defaultdict(list)
        for device, outcome in self.given:
            out[device].append(outcome)
        return dict(out)


@asynccontextmanager
async def running(rig: Rig, host: str, port: int, client_id: str) -> AsyncIterator[Publisher]:
    settings = MqttSection(host=host, port=port, reconnect_min=0.05, reconnect_max=0.2)
    async with running_publisher(
        settings,
        rig.buffer,
        TOPICS,
        client_id=client_id,
        on_delivered=rig.on_delivered,
        stop_within=30,
    ) as pub:
        yield pub


async def sent_up_to(buffer: Buffer, device: str, seq: int, timeout: float = 15) -> None:
    async with asyncio.timeout(timeout):
        while True:
            figures = (await buffer.stats()).devices.get(device)
            if figures is not None and figures.last_sent_seq >= seq:
                return
            await asyncio.sleep(0.02)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    buffer = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**8)
    made = Rig(buffer)
    yield made
    made.confirmations.close()
    await buffer.close()


# --- DISMISSED: the PUBACK overtaking the waiter --------------------------------------------


async def test_puback_never_comes_before_the_waiter_it_settles(
    rig: Rig, broker: MosquittoBroker
) -> None:
    """DISMISSED: the change took the sent-mark fsync out of the PUBACK -> feedback path, so the
    PUBACK now follows the commit by one claim and one broker round trip only. Could it reach
    ``Confirmations.delivered`` before ``Confirmations.stored`` made the waiter (then the scan
    would wait for nothing and time out pending)? No, by the loop's order: the append's
    ``CommitFuture`` is settled in the same step that releases the buffer's write lock, so the
    emitter runs ``stored`` in the next turn, while the claim has yet to take the lock, go to
    the SQLite thread and back, be written and PUBACKed, and ``_deliver`` is one more turn.
    Pinned: 20 scanners x 5 scans at once against a fast local broker, every scan good, once."""
    scanners = {f"dock-{d}": rig.scanner(f"dock-{d}") for d in range(20)}
    async with running(rig, broker.host, broker.port, "gw-review-delivered-order"):
        tasks = [
            asyncio.create_task(emit(DeviceEvent(SCAN, {"code": f"{device}-{n}"})))
            for n in range(5)
            for device, emit in scanners.items()
        ]
        await asyncio.gather(*tasks)
        await wait_until(lambda: len(rig.given) >= 100, timeout=15)
        await asyncio.sleep(0.2)  # a second feedback would come now
    assert rig.per_device() == {device: [Outcome.GOOD] * 5 for device in scanners}
    assert rig.confirmations.waiting == 0


# --- DISMISSED: told twice when the sent mark fails and the event is published again --------


async def test_sent_mark_failing_after_the_puback_gives_feedback_once(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DISMISSED: now the PUBACK is told before (and whether or not) its sent mark commits. When
    that mark fails (another connection holds the buffer's write lock past the busy timeout),
    the session ends, the row is released still unsent and published again (same id and seq),
    and its second PUBACK is told delivered a second time: ``on_delivered`` sees the id twice,
    which before the change could not happen. ``Confirmations.delivered`` pops the waiter at
    the first, so the second finds none: the scan got good feedback once."""
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_MS", 300)
    buffer = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**8)
    rig = Rig(buffer)
    emit = rig.scanner("dock-1")
    try:
        async with (
            FaultProxy(broker.host, broker.port) as proxy,
            running(rig, proxy.host, proxy.port, "gw-review-delivered-twice") as pub,
        ):
            proxy.delay_replies(0.5)
            stored = await emit(DeviceEvent(SCAN, {"code": "A"}))
            assert stored is not None
            await until_in_flight(buffer, 1)
            holder = sqlite3.connect(buffer.path, isolation_level=None)
            try:
                holder.execute("BEGIN IMMEDIATE")  # the sent mark (and the release) now fail
                await wait_until(lambda: rig.given != [], timeout=5)
                await wait_until(lambda: pub.store_errors >= 1, timeout=5)
                proxy.heal()
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            await wait_until(lambda: rig.told[stored.id] >= 2, timeout=15)
            await sent_up_to(buffer, "dock-1", stored.seq)
            await asyncio.sleep(0.2)
        assert rig.told[stored.id] == 2, "told at the first PUBACK and at the republished one's"
        assert rig.given == [("dock-1", Outcome.GOOD)], "feedback once, good"
        assert (await buffer.stats()).unsent == 0
    finally:
        rig.confirmations.close()
        await buffer.close()


# --- DISMISSED: confirm_timeout firing in the PUBACK's turn -----------------------------------


async def test_timeout_racing_the_puback_gives_one_feedback_per_scan(
    rig: Rig, broker: MosquittoBroker
) -> None:
    """DISMISSED: a scan's ``confirm_timeout`` and its PUBACK (held 0.3 s by the proxy) come in
    the same few loop turns: 40 scanners whose timeouts step from 0.1 to 0.49 s, so some are
    told delivered first and some time out first, and those near 0.3 s race. ``_deliver`` runs
    one turn after the PUBACK; whichever of it and ``_timed_out`` runs first pops the waiter,
    the other finds none (the loop is one thread): good or pending, never both. Same for a
    verdict (``Confirmations.settled``) or ``device_stopped`` between ``_on_ack`` and
    ``_deliver``: each pops the waiter before giving anything."""
    scanners = {f"gate-{d}": rig.scanner(f"gate-{d}", timeout=0.1 + d * 0.01) for d in range(40)}
    async with FaultProxy(broker.host, broker.port) as proxy:
        async with running(rig, proxy.host, proxy.port, "gw-review-delivered-race"):
            proxy.delay_replies(0.3)
            for emit in scanners.values():
                await emit(DeviceEvent(SCAN, {"code": "race"}))
            for device in scanners:
                await sent_up_to(rig.buffer, device, 1)
            await asyncio.sleep(0.6)  # past every timeout: a second feedback would be here
        proxy.heal()
    per_device = rig.per_device()
    assert sorted(per_device) == sorted(scanners), "every scan got feedback"
    assert all(len(outcomes) == 1 for outcomes in per_device.values()), per_device
    outcomes = {outcomes[0] for outcomes in per_device.values()}
    assert outcomes == {Outcome.GOOD, Outcome.PENDING}, "both sides of the race were taken"


@pytest.mark.parametrize(
    ("what", "other"), [("device_stopped", Outcome.PENDING), ("rejected", Outcome.BAD)]
)
async def test_stop_or_verdict_racing_the_puback_gives_one_feedback_per_scan(
    rig: Rig, broker: MosquittoBroker, what: str, other: Outcome
) -> None:
    """DISMISSED: ``device_stopped`` (a reload or shutdown stopping the driver) or central's
    rejection (``Confirmations.settled``, as gateway/inbound.py calls it) lands 0.1 to 0.49 s
    after each of 40 scans is stored, around its PUBACK (held 0.3 s by the proxy), so some land
    between ``_on_ack`` and ``_deliver``. Each pops the waiter before it gives anything, as
    ``delivered`` does: good, or pending/bad, never both, never good then bad."""
    loop = asyncio.get_running_loop()
    scanners = {f"lane-{d}": rig.scanner(f"lane-{d}") for d in range(40)}
    async with FaultProxy(broker.host, broker.port) as proxy:
        async with running(rig, proxy.host, proxy.port, f"gw-review-delivered-{what}"):
            proxy.delay_replies(0.3)
            for d, (device, emit) in enumerate(scanners.items()):
                stored = await emit(DeviceEvent(SCAN, {"code": "race"}))
                assert stored is not None
                if what == "device_stopped":
                    loop.call_later(0.1 + d * 0.01, rig.confirmations.device_stopped, device)
                else:
                    loop.call_later(
                        0.1 + d * 0.01,
                        lambda i=stored.id, dev=device: rig.confirmations.settled(
                            i, dev, accepted=False, reason="review"
                        ),
                    )
            for device in scanners:
                await sent_up_to(rig.buffer, device, 1)
            await asyncio.sleep(0.6)  # past every scheduled stop or verdict
        proxy.heal()
    per_device = rig.per_device()
    assert sorted(per_device) == sorted(scanners), "every scan got feedback"
    assert all(len(outcomes) == 1 for outcomes in per_device.values()), per_device
    outcomes = {outcomes[0] for outcomes in per_device.values()}
    assert outcomes == {Outcome.GOOD, other}, "both sides of the race were taken"


# --- DISMISSED: a session ending between the PUBACK and _deliver; mids reused after it -------


async def test_link_cut_mid_stream_each_scan_good_once(rig: Rig, broker: MosquittoBroker) -> None:
    """DISMISSED: 20 scans, their PUBACKs held 0.3 s, the connection reset (RST) while about
    half have come. A ``_deliver`` scheduled by the last PUBACKs before the reset runs after the
    session's end began; that is right: each event in it was PUBACKed on the live link (the
    broker has it). The next link numbers its mids from 1 again, but an old link reports no
    ack once lost (gateway/mqtt_link.py ``_acked``) and ``_settle`` empties ``_in_flight``
    before the next link exists, so a new PUBACK only maps to the event sent with it; and
    ``_deliver`` carries events, not mids. The rest are released and sent again: each scan gets
    good feedback once, and the buffer ends with nothing unsent."""
    scanners = {f"belt-{d}": rig.scanner(f"belt-{d}") for d in range(20)}
    async with (
        FaultProxy(broker.host, broker.port) as proxy,
        running(rig, proxy.host, proxy.port, "gw-review-delivered-cut") as pub,
    ):
        proxy.delay_replies(0.3)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for emit in scanners.values():
            await emit(DeviceEvent(SCAN, {"code": "cut"}))
            await asyncio.sleep(0.02)
        await asyncio.sleep(max(0.0, started + 0.55 - loop.time()))
        proxy.cut()
        before_cut = len(rig.given)
        proxy.heal()
        for device in scanners:
            await sent_up_to(rig.buffer, device, 1)
        await wait_until(lambda: len(rig.given) >= len(scanners), timeout=10)
        await asyncio.sleep(0.3)
        reconnects = pub.reconnects
    assert 0 < before_cut < len(scanners), f"the cut came mid-stream ({before_cut} told)"
    assert reconnects >= 1
    assert rig.per_device() == {device: [Outcome.GOOD] for device in scanners}
    assert (await rig.buffer.stats()).unsent == 0


# --- DISMISSED: a PUBACK refusing the event ---------------------------------------------------


async def test_puback_with_a_failure_code_is_never_told_delivered(tmp_path: Path) -> None:
    """DISMISSED: the new path is fed by ``_on_ack`` only; a PUBACK with a reason code of 0x80
    or more goes to ``_on_refused`` (gateway/mqtt_link.py ``_acked``), and an event over the
    broker's Maximum Packet Size is never in ``_in_flight``. test_broker_refusals.py checks
    such events are not marked sent, which no longer implies they were not told delivered; this
    checks the telling itself: the 3000-byte scan refused with 0x95 is never reported."""
    broker = broker_with(tmp_path, "message_size_limit 2000\n")
    told: list[str] = []
    async with publisher_and_central(
        tmp_path,
        broker,
        TOPICS,
        name="review-delivered-refused",
        on_delivered=lambda b: told.extend(e.id for e in b),
    ) as setup:
        for ev in (scan(1, "A1"), scan(2, "X" * 3000), scan(3, "A3")):
            await setup.buffer.append(ev)
        await wait_until(lambda: setup.publisher.refused_by_broker >= 1, timeout=10)
        await wait_until(lambda: len(told) >= 2, timeout=10)
        await asyncio.sleep(0.3)
    assert sorted(told) == ["scan-000001", "scan-000003"]


# --- DISMISSED: an exception in on_delivered --------------------------------------------------


async def test_on_delivered_raising_does_not_stop_later_feedback_or_the_sent_marks(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """DISMISSED: an exception in ``on_delivered`` is now raised in the ``_deliver`` loop
    callback (the loop's exception handler gets it) instead of in ``_mark_sent`` (where it
    failed the ack writer, ended the session and left ``run()`` by an exception nobody
    catches). ``_deliver`` empties ``_delivering`` before it calls, so the next PUBACK
    schedules a new one: later events are told; the raising batch is still marked sent; the
    session goes on. (What the rest of the raising batch loses is the callee's business:
    ``Confirmations.delivered`` cannot raise in the daemon, whose ``_feedback`` catches.)"""
    buffer = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**8)
    told: list[str] = []
    calls = 0

    def on_delivered(batch: Sequence[OutgoingEvent]) -> None:
        nonlocal calls
        calls += 1
        told.extend(e.id for e in batch)
        if calls == 1:
            raise RuntimeError("feedback bug")

    caught: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: caught.append(context))
    settings = MqttSection(host=broker.host, port=broker.port)
    pub = Publisher(
        settings, buffer, TOPICS, client_id="gw-review-delivered-raise", on_delivered=on_delivered
    )
    task = asyncio.create_task(pub.run())
    try:
        await wait_until(pub.connected.is_set, timeout=10)
        await buffer.append(event("dock-1", 0))
        await wait_until(lambda: calls >= 1, timeout=10)
        for n in range(1, 4):
            await buffer.append(event("dock-1", n))
        await wait_until(lambda: len(told) >= 4, timeout=10)
        await sent_up_to(buffer, "dock-1", 4)
        assert not task.done(), "the publisher keeps running"
        assert pub.reconnects == 0 and pub.store_errors == 0
    finally:
        pub.stop()
        async with asyncio.timeout(30):
            await task
        loop.set_exception_handler(previous)
        await buffer.close()
    assert told == [f"dock-1-{n:06d}" for n in range(4)]
    assert len(caught) == 1 and isinstance(caught[0].get("exception"), RuntimeError), caught
