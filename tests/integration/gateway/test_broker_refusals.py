"""What a hardened or limited broker refuses is not delivery (found by the issue 13 review).

An MQTT 5 PUBACK with a failure reason code (0x87 not authorized, 0x95 packet too large) was
taken as delivery: the event was marked sent, delivered feedback fired, central never had it. An
event larger than the broker's Maximum Packet Size killed every session (the broker disconnects
the client), so nothing behind it was ever delivered. A broker without retain support refused
every CONNECT (our will is retained). Now refused events are held in the buffer (state
``held_by_broker``), never marked sent, and tried again at the next session; the rest flows.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import aiomqtt
import pytest
from structlog.testing import capture_logs

from buffer.schema import STATE_HELD
from buffer.store import Buffer, NewEvent
from gateway.events import render_event
from gateway.publisher import HELD_RETRY_MIN
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker
from tests.integration.gateway.test_publisher import TOPICS
from tests.support import (
    broker_configured,
    publisher_and_central,
    running_publisher,
    wait_until,
)


def scan(n: int, code: str) -> NewEvent:
    event_id = f"scan-{n:06d}"

    def render(seq: int) -> bytes:
        return render_event(
            event_id=event_id,
            source="/site-test/gw-test/dock",
            type_="warehouse.review.scan.v1",
            time_="2026-11-24T00:00:00.000000Z",
            seq=seq,
            data={"code": code},
        )

    return NewEvent(event_id, "dock", "t", "warehouse.review.scan.v1", False, render)


def broker_with(tmp_path: Path, extra: str) -> MosquittoBroker:
    return broker_configured(tmp_path / "hardened", lambda text: text + extra)


def held_seqs(path: Path) -> set[int]:
    with sqlite3.connect(path) as conn:
        return {s for (s,) in conn.execute("SELECT seq FROM events WHERE state = ?", (STATE_HELD,))}


async def run_case(
    tmp_path: Path, broker: MosquittoBroker, events: list[NewEvent], refused: set[int]
) -> None:
    """Publish ``events``; the seqs in ``refused`` must end held (counted, not sent, not in
    flight: their window slot freed), every other one sent and at central."""
    delivered: list[str] = []
    async with publisher_and_central(
        tmp_path,
        broker,
        TOPICS,
        name="hardened",
        on_delivered=lambda b: delivered.extend(e.id for e in b),
    ) as rig:
        for ev in events:
            await rig.buffer.append(ev)
        await rig.central.wait_for(len(events), timeout=5)
        await asyncio.sleep(1.0)
        with sqlite3.connect(rig.buffer.path) as conn:
            states = dict(conn.execute("SELECT seq, state FROM events"))
        got = {m["seq"] for m in rig.central.messages}
        wrongly = [s for s, st in states.items() if st in (2, 3, 4) and s not in got]
        assert not wrongly, (
            f"seqs {wrongly} marked sent (delivered feedback for {delivered}) though the broker"
            f" refused them; central has {sorted(got)}"
        )
        # Held events are offered again later (HELD_RETRY_MIN): between tries one may be in
        # flight for a moment, so the held set is waited for, not read once.
        await wait_until(lambda: held_seqs(rig.buffer.path) == refused, timeout=5)
        assert rig.publisher.refused_by_broker >= len(refused)


async def test_puback_packet_too_large_is_not_delivery(tmp_path: Path) -> None:
    """``message_size_limit`` (a common hardening setting): a long 2D code is refused with
    PUBACK 0x95; the gateway marks it sent and the worker gets good feedback at ``delivered``."""
    broker = broker_with(tmp_path, "message_size_limit 2000\n")
    await run_case(
        tmp_path, broker, [scan(1, "A1"), scan(2, "X" * 3000), scan(3, "A3")], refused={2}
    )


async def test_puback_not_authorized_is_not_delivery(tmp_path: Path) -> None:
    """An ACL that does not (yet) cover this gateway's events topic: PUBACK 0x87 per event."""
    acl = tmp_path / "acl"
    acl.write_text(
        "user dummy\ntopic read #\n"
        "pattern write edge/site-test/gw-test/status\n"
        "pattern readwrite edge/site-test/gw-test/confirm\n"
        "pattern read #\n"
    )
    broker = broker_with(tmp_path, f"acl_file {acl}\n")
    await run_case(tmp_path, broker, [scan(1, "A1"), scan(2, "A2")], refused={1, 2})


async def test_one_event_over_broker_max_packet_size_does_not_stop_delivery(
    tmp_path: Path,
) -> None:
    """``max_packet_size`` (what Mosquitto recommends over message_size_limit, and what
    mqtt_link.py asks brokers to set, issue 18): the broker disconnects a client that sends a
    bigger packet. The one long scan is resent first on every new session, so every session
    dies: nothing after it is ever delivered (a poison event)."""
    broker = broker_with(tmp_path, "max_packet_size 2000\n")
    events = [scan(1, "A1"), scan(2, "X" * 3000), *(scan(n, f"A{n}") for n in range(3, 21))]
    async with publisher_and_central(tmp_path, broker, TOPICS, name="hardened") as rig:
        for ev in events:
            await rig.buffer.append(ev)
        await rig.central.wait_for(19, timeout=15)
        got = sorted({m["seq"] for m in rig.central.messages})
        assert set(range(3, 21)) <= set(got), (
            f"central has {got} after 15 s; sessions lost: {rig.publisher.reconnects}"
        )


async def test_broker_without_retain_still_gets_events(tmp_path: Path) -> None:
    """A broker that says Retain Available = 0 in its CONNACK (Mosquitto ``retain_available
    false``; some managed brokers): every session starts with a retained ``online`` status,
    the broker disconnects it (0x9A), and no event is ever delivered."""
    broker = broker_with(tmp_path, "retain_available false\n")
    async with publisher_and_central(
        tmp_path, broker, TOPICS, name="hardened", wait_publisher=False
    ) as rig:
        for n in range(1, 6):
            await rig.buffer.append(scan(n, f"A{n}"))
        ok = await rig.central.wait_for(5, timeout=10)
        assert ok, (
            f"central has {rig.central.unique_count()} of 5;"
            f" sessions lost: {rig.publisher.reconnects}"
        )


async def test_an_event_over_max_packet_size_inside_a_claim_does_not_stop_the_rest(
    tmp_path: Path,
) -> None:
    """The long scan sits in the middle of a backlog the publisher claims at once: it is held,
    and the events claimed after it in the same batch are still sent in that session."""
    broker = broker_with(tmp_path, "max_packet_size 2000\n")
    events = [scan(1, "A1"), scan(2, "X" * 3000), *(scan(n, f"A{n}") for n in range(3, 21))]
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**9)
    for ev in events:
        await buf.append(ev)
    await buf.close()
    async with publisher_and_central(tmp_path, broker, TOPICS, name="hardened") as rig:
        await rig.central.wait_for(19, timeout=15)
        got = sorted({m["seq"] for m in rig.central.messages})
        assert got == [1, *range(3, 21)], f"central has {got}"
        assert rig.publisher.reconnects == 0
        # Counted once the hold has committed, which can come after central has the other 19.
        await wait_until(lambda: rig.publisher.refused_by_broker > 0, timeout=10)
        assert rig.publisher.refused_by_broker == 1


async def test_a_refusal_that_goes_on_is_retried_less_and_less_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event the broker will never take is offered again from ``HELD_RETRY_MIN`` seconds,
    the wait doubling while the refusals go on: a handful of tries in two seconds at a 0.1 s
    start (0.1, 0.3, 0.7, 1.5), never a loop that hammers the broker and the log."""
    import gateway.publisher  # noqa: PLC0415

    monkeypatch.setattr(gateway.publisher, "HELD_RETRY_MIN", 0.1)
    broker = broker_with(tmp_path, "max_packet_size 2000\n")
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**9)
    await buf.append(scan(1, "X" * 3000))
    await buf.close()
    async with publisher_and_central(tmp_path, broker, TOPICS, name="hardened") as rig:
        await wait_until(lambda: rig.publisher.refused_by_broker > 0, timeout=10)
        await asyncio.sleep(2.0)
        tries = rig.publisher.refused_by_broker
        assert 2 <= tries <= 8, f"{tries} refusals in about two seconds"
        assert rig.publisher.reconnects == 0


async def test_events_held_by_one_session_are_offered_again_when_the_next_starts(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A refusal may end with its session: the next one (new settings after a reload, a
    failover broker) may take the event. What was held is offered again when that session
    starts, not only at the in-session retry ``HELD_RETRY_MIN`` (5 s) later."""
    limited = broker_with(tmp_path, "max_packet_size 2000\n")
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**9)
    try:
        async with running_publisher(
            MqttSection(host=limited.host, port=limited.port),
            buf,
            TOPICS,
            client_id="gw-held-next",
            stop_within=15,
        ) as pub:
            await buf.append(scan(1, "X" * 3000))
            await wait_until(lambda: held_seqs(buf.path) == {1}, timeout=5)
            async with aiomqtt.Client(broker.host, broker.port, identifier="held-watch") as client:
                await client.subscribe(TOPICS.events("+"), qos=1)
                pub.reconfigure(MqttSection(host=broker.host, port=broker.port))
                async with asyncio.timeout(HELD_RETRY_MIN / 2):
                    message = await anext(aiter(client.messages))
            assert json.loads(bytes(message.payload))["seq"] == 1  # type: ignore[arg-type]
    finally:
        await buf.close()
        limited.stop()


async def test_holding_a_refused_event_leaves_no_error_on_the_event_loop(tmp_path: Path) -> None:
    """The bookkeeping of a hold and of a sent mark (a done callback) must not fail: an error
    in a callback is only logged by asyncio, and the future it should have forgotten stays
    referenced. One refusal counts one."""
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    broker = broker_with(tmp_path, "max_packet_size 2000\n")
    async with publisher_and_central(tmp_path, broker, TOPICS, name="hold-quiet") as rig:
        await rig.buffer.append(scan(1, "X" * 3000))
        await rig.buffer.append(scan(2, "A"))  # marked sent: the same bookkeeping
        await wait_until(lambda: held_seqs(rig.buffer.path) == {1}, timeout=5)
        await rig.central.wait_for(1, timeout=5)
        await asyncio.sleep(0.2)
        assert rig.publisher.refused_by_broker == 1
    assert errors == []


async def test_a_held_retry_that_finds_nothing_held_lets_the_session_go_on(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-session retry looks for held events every ``HELD_RETRY_MIN`` seconds whether or
    not any are held; finding none, it waits from the start again, and the session goes on."""
    import gateway.publisher  # noqa: PLC0415

    monkeypatch.setattr(gateway.publisher, "HELD_RETRY_MIN", 0.05)
    async with publisher_and_central(tmp_path, broker, TOPICS, name="retry-idle") as rig:
        await asyncio.sleep(0.3)  # several rounds with nothing held
        await rig.buffer.append(scan(1, "A"))
        await rig.central.wait_for(1, timeout=5)
        assert rig.publisher.reconnects == 0


async def test_the_wait_between_offers_of_a_refused_event_doubles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the broker goes on refusing a held event, the wait before the next offer doubles:
    from ``HELD_RETRY_MIN`` 0.2 s, refusals at about 0, 0.2, 0.6 and 1.4 s, so 0.8 s (4 x 0.2)
    between the third and the fourth. A factor of 3 would make that 1.8 s (9 x 0.2): the bound
    is 1.2 s (6 x 0.2), which leaves 0.4 s for what a loaded box adds to a sleep."""
    import gateway.publisher  # noqa: PLC0415

    start = 0.2
    monkeypatch.setattr(gateway.publisher, "HELD_RETRY_MIN", start)
    broker = broker_with(tmp_path, "max_packet_size 2000\n")
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**9)
    await buf.append(scan(1, "X" * 3000))
    await buf.close()
    refused_at: list[float] = []
    async with publisher_and_central(tmp_path, broker, TOPICS, name="hardened") as rig:
        async with asyncio.timeout(10):
            while len(refused_at) < 4:
                if rig.publisher.refused_by_broker > len(refused_at):
                    refused_at.append(time.monotonic())
                await asyncio.sleep(0.002)
        assert rig.publisher.refused_by_broker == 4, "one refusal per offer"
    gap = refused_at[3] - refused_at[2]
    assert gap < 6 * start, f"{gap:.2f} s between the third and the fourth offer"


def device_scan(device: str, n: int) -> NewEvent:
    event_id = f"{device}-{n:06d}"

    def render(seq: int) -> bytes:
        return render_event(
            event_id=event_id,
            source=f"/site-test/gw-test/{device}",
            type_="warehouse.barcode.scanned.v1",
            time_="2026-11-24T00:00:00.000000Z",
            seq=seq,
            data={"code": "A"},
        )

    return NewEvent(event_id, device, "t", "warehouse.barcode.scanned.v1", False, render)


async def test_a_drain_whose_backlog_holds_a_refused_event_ends_when_its_rows_are_settled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog (``LIVE_FIRST_BACKLOG`` lowered to 2) of two events the broker takes and one
    its ACL refuses, all PUBACKed at once: the refusal is held first, then the others are
    marked sent. The pump, woken by those PUBACKs, may count what is left of the backlog
    between the two (its read waits behind the hold) and find rows still in flight; the hold
    and the sent marks wake it again, so ``draining`` goes false within milliseconds of the
    last of them (measured 0.002-0.005 s). Before they did, nothing woke it and its 1 s safety
    net noticed the end (1.00 s; 0.5 s allowed here)."""
    import gateway.publisher  # noqa: PLC0415

    monkeypatch.setattr(gateway.publisher, "LIVE_FIRST_BACKLOG", 2)
    acl = tmp_path / "acl"
    acl.write_text(
        "pattern write edge/site-test/gw-test/status\n"
        "pattern write edge/site-test/gw-test/events/ok\n"
        "pattern read #\n"
    )
    broker = broker_with(tmp_path, f"acl_file {acl}\n")
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**9)
    for event in (device_scan("ok", 1), device_scan("no", 1), device_scan("ok", 2)):
        await buf.append(event)
    await buf.close()
    delivered: list[str] = []
    marked_at = ended_at = 0.0
    with capture_logs() as logs:
        async with publisher_and_central(
            tmp_path,
            broker,
            TOPICS,
            name="drain-held",
            on_delivered=lambda b: delivered.extend(e.id for e in b),
        ) as rig:
            async with asyncio.timeout(10):
                while not ended_at:
                    if len(delivered) == 2 and not marked_at:
                        marked_at = time.monotonic()
                    if marked_at and not rig.publisher.draining:
                        ended_at = time.monotonic()
                    await asyncio.sleep(0.002)
            assert held_seqs(rig.buffer.path) == {1}
    assert [e["event"] for e in logs if str(e["event"]).startswith("backlog_drain")] == [
        "backlog_drain_started",
        "backlog_drain_finished",
    ]
    took = ended_at - marked_at
    assert took < 0.5, f"the drain's end noticed {took:.2f} s late"
