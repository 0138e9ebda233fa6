"""Review of the fifth performance round, MQTT publish/PUBACK path (issue 16, linkpath).

``MqttLink`` now numbers its PUBLISHes itself (``_PacketIds``, also gmqtt's ``id_generator``),
reads PUBACKs itself and keeps no copy in gmqtt's storage; the publisher gives its PUBACK
wake-ups once per loop turn (``_deliver``). No way found to lose, renumber or mismatch an event;
these pin what the change could have broken and no other test covers, on real sockets: a
scripted broker (exact packet ids, stray and duplicate PUBACKs, a SUBACK held back) and a real
Mosquitto behind the fault proxy (late PUBACKs).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Self

import pytest

from buffer.store import Buffer
from gateway.mqtt_link import MqttLink
from gateway.publisher import Publisher
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker
from tests.chaos.faultproxy import FaultProxy
from tests.integration.gateway.test_publisher import TOPICS, event
from tests.support import broker_configured, running_publisher

_CONNACK_NO_PROPERTIES = b"\x20\x03\x00\x00\x00"
"""Success, no Receive Maximum: MQTT's 65535 (3.2.2.3.3)."""


def _connack(receive_maximum: int) -> bytes:
    return b"\x20\x06\x00\x00\x03\x21" + receive_maximum.to_bytes(2, "big")


def _puback(mid: int, reason: int | None = None) -> bytes:
    if reason is None:
        return b"\x40\x02" + mid.to_bytes(2, "big")
    return b"\x40\x03" + mid.to_bytes(2, "big") + bytes((reason,))


def _suback(mid: int) -> bytes:
    return b"\x90\x04" + mid.to_bytes(2, "big") + b"\x00\x01"  # no properties, granted QoS 1


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


def _publish_mid(body: bytes) -> int:
    topic_length = int.from_bytes(body[:2], "big")
    return int.from_bytes(body[2 + topic_length : 4 + topic_length], "big")


class _ScriptedBroker:
    """One client: CONNACK ``connack``; each PUBLISH's mid noted and answered by ``answer``
    (bytes to write, or nothing); each SUBSCRIBE's mid noted, not answered (the test does)."""

    def __init__(self, connack: bytes, answer: Callable[[int], bytes]) -> None:
        self.connack = connack
        self.answer = answer
        self.publish_mids: list[int] = []
        self.subscribe_mids: asyncio.Queue[int] = asyncio.Queue()
        self.writer: asyncio.StreamWriter | None = None
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        if self.writer is not None:
            self.writer.close()

    def mqtt(self) -> MqttSection:
        return MqttSection(host="127.0.0.1", port=self.port, publish_timeout=10.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        try:
            await _read_packet(reader)  # CONNECT
            writer.write(self.connack)
            while True:
                first, body = await _read_packet(reader)
                kind = first & 0xF0
                if kind == 0x30:  # PUBLISH (QoS 1)
                    mid = _publish_mid(body)
                    self.publish_mids.append(mid)
                    reply = self.answer(mid)
                    if reply:
                        writer.write(reply)
                        if len(self.publish_mids) % 256 == 0:
                            await writer.drain()
                elif kind == 0x80:  # SUBSCRIBE
                    self.subscribe_mids.put_nowait(int.from_bytes(body[:2], "big"))
                elif kind == 0xE0:  # DISCONNECT
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return


async def test_packet_ids_wrap_at_65535_past_one_still_in_flight_each_ack_its_own() -> None:
    """No Receive Maximum from the broker: ids 1..65534. The first PUBLISH is never acked;
    70 000 more go out in windows of 200, each acked. Ids wrap after 65534 to 2 (1 is still in
    flight), no id is handed out while in use, each PUBACK is reported once for its own mid,
    and 1 stays in flight."""
    first_mid: list[int] = []

    def answer(mid: int) -> bytes:
        if not first_mid:
            first_mid.append(mid)
            return b""
        return _puback(mid)

    in_flight: set[int] = set()
    sent: list[int] = []
    reused: list[int] = []
    wrong_acks: list[int] = []
    acks = 0
    acked = asyncio.Event()

    def on_ack(mid: int) -> None:
        nonlocal acks
        acks += 1
        if mid in in_flight:
            in_flight.remove(mid)
        else:
            wrong_acks.append(mid)
        acked.set()

    total, window = 70_001, 200
    async with _ScriptedBroker(_CONNACK_NO_PROPERTIES, answer) as broker:
        link = MqttLink(broker.mqtt(), "wrap", on_ack=on_ack)
        try:
            await link.connect()
            assert link.free_ids() == 65534
            while len(sent) < total:
                with link.batch():
                    while len(in_flight) < window and len(sent) < total:
                        mid = link.send("edge/s/g/events/dock", b"x" * 20)
                        if mid in in_flight:
                            reused.append(mid)
                        in_flight.add(mid)
                        sent.append(mid)
                acked.clear()
                async with asyncio.timeout(10):
                    await acked.wait()
            async with asyncio.timeout(10):
                while len(in_flight) > 1:
                    acked.clear()
                    await acked.wait()
        finally:
            await link.close()
    assert not reused, f"ids handed out while in flight: {reused[:10]}"
    assert not wrong_acks, f"PUBACKs reported for ids not in flight: {wrong_acks[:10]}"
    assert in_flight == {1} == set(first_mid)
    assert acks == total - 1
    assert max(sent) == 65534
    wrapped = sent.index(65534) + 1
    assert sent[wrapped] == 2, "after 65534 the next free id is 2 (1 is in flight)"
    assert broker.publish_mids == sent, "the wire carries the ids send returned"


async def test_a_subscribe_id_is_never_a_publish_id_and_a_stray_puback_frees_nothing() -> None:
    """Receive Maximum 5: four ids. A SUBSCRIBE awaiting its SUBACK holds one; PUBLISHes cycle
    through the other three and never get it. A PUBACK for the SUBSCRIBE's id (success or
    refusing) is neither an ack nor a refusal and does not free it; a second PUBACK for an
    acked PUBLISH is not a second ack; a PUBACK with a success reason code (0x10, no matching
    subscribers) is a delivery. The SUBACK frees the id, which a PUBLISH then gets."""
    next_reason: list[int] = []
    acked: list[int] = []
    refused: list[tuple[int, int]] = []
    got = asyncio.Event()

    def answer(mid: int) -> bytes:
        return _puback(mid, next_reason.pop() if next_reason else None)

    def on_ack(mid: int) -> None:
        acked.append(mid)
        got.set()

    def on_refused(mid: int, reason: int) -> None:
        refused.append((mid, reason))
        got.set()

    async def send_one(link: MqttLink) -> int:
        got.clear()
        mid = link.send("edge/s/g/events/dock", b"{}")
        async with asyncio.timeout(5):
            await got.wait()
        return mid

    async with _ScriptedBroker(_connack(5), answer) as broker:
        link = MqttLink(broker.mqtt(), "shared-ids", on_ack=on_ack, on_refused=on_refused)
        try:
            await link.connect()
            assert link.free_ids() == 4
            subscribing = asyncio.create_task(link.subscribe("edge/s/g/confirm"))
            async with asyncio.timeout(5):
                sub_mid = await broker.subscribe_mids.get()
            assert link.free_ids() == 3
            mids = [await send_one(link) for _ in range(9)]
            assert sub_mid not in mids and sub_mid not in broker.publish_mids
            assert acked == mids and not refused
            writer = broker.writer
            assert writer is not None
            # Stray PUBACKs for the SUBSCRIBE's id, a duplicate for the last PUBLISH's.
            writer.write(_puback(sub_mid) + _puback(sub_mid, 0x87) + _puback(mids[-1]))
            writer.write(_puback(mids[-1], 0x87))
            await writer.drain()
            await asyncio.sleep(0.3)
            assert acked == mids and not refused, "a stray or duplicate PUBACK was reported"
            assert link.free_ids() == 3, "a stray PUBACK freed the SUBSCRIBE's id"
            assert not subscribing.done()
            more = [await send_one(link) for _ in range(6)]
            assert sub_mid not in more
            next_reason.append(0x10)  # for the next PUBLISH
            nxt = await send_one(link)
            assert acked[-1] == nxt and not refused, "reason 0x10 is a delivery"
            writer.write(_suback(sub_mid))
            async with asyncio.timeout(5):
                await subscribing
            assert link.free_ids() == 4
            last = [await send_one(link) for _ in range(4)]
            assert sub_mid in last, "the SUBACK freed the id for PUBLISHes"
            assert len(acked) == len(mids) + len(more) + 1 + len(last) and not refused
        finally:
            await link.close()


@asynccontextmanager
async def _late_puback_publisher(
    tmp_path: Path, broker: MosquittoBroker, delay: float, max_inflight: int
) -> AsyncIterator[tuple[Buffer, list[str], list[MqttLink]]]:
    buffer = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**8)
    delivered: list[str] = []
    links: list[MqttLink] = []
    try:
        async with FaultProxy(broker.host, broker.port) as proxy:
            mqtt = MqttSection(
                host=proxy.host, port=proxy.port, publish_timeout=10.0, max_inflight=max_inflight
            )

            def watch_links(pub: Publisher) -> None:
                make = pub._make_link

                def recording() -> MqttLink:
                    link = make()
                    links.append(link)
                    return link

                pub._make_link = recording  # type: ignore[method-assign]

            async with running_publisher(
                mqtt,
                buffer,
                TOPICS,
                client_id="gw-round5-late",
                on_delivered=lambda batch: delivered.extend(e.id for e in batch),
                before_run=watch_links,
                stop_within=30,
            ):
                proxy.delay_replies(delay)
                yield buffer, delivered, links
            proxy.heal()
    finally:
        await buffer.close()


@pytest.mark.parametrize(("max_inflight", "broker_window"), [(3, 100), (200, 6)])
async def test_late_pubacks_never_stall_the_pump_and_each_event_is_delivered_once(
    tmp_path: Path, max_inflight: int, broker_window: int
) -> None:
    """A real Mosquitto whose replies reach us 50 ms late; 60 events. The publisher's window
    (``max_inflight`` 3) or the broker's (Receive Maximum 6: 5 packet ids, 3 for events) binds.
    Each freed slot is used at once, not at the pump's 1 s recheck (20 windows of 50 ms, well
    under the seconds missed wake-ups would cost); every event is told delivered exactly once
    and recorded sent, on one session, never more in flight than the window."""
    broker = broker_configured(
        tmp_path / "broker",
        lambda conf: conf.replace(
            "max_inflight_messages 100", f"max_inflight_messages {broker_window}"
        ),
    )
    ids = [f"dock-1-{n:06d}" for n in range(60)]
    peak = 0
    try:
        async with _late_puback_publisher(tmp_path, broker, 0.05, max_inflight) as (
            buffer,
            delivered,
            links,
        ):
            start = time.monotonic()
            await asyncio.gather(*(buffer.append(event("dock-1", n)) for n in range(60)))
            async with asyncio.timeout(20):
                while len(delivered) < 60:
                    if links:
                        peak = max(peak, len(links[-1]._ids.publishing))
                    await asyncio.sleep(0.002)
            took = time.monotonic() - start
            async with asyncio.timeout(10):
                while (await buffer.stats()).unsent:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # a second feedback would come within a few turns
            quota = links[-1].send_quota
    finally:
        broker.stop()
    assert sorted(delivered) == ids, "each event told delivered exactly once"
    assert len(links) == 1, "one session: no reconnect"
    assert quota == 3 if broker_window == 6 else quota > 3
    assert took < 8.0, f"60 events took {took:.2f} s: the pump waited for its recheck"
    assert 0 < peak <= 3, f"{peak} PUBLISHes awaiting PUBACK at once, the window is 3"
