"""The PUBLISH packets gateway/mqtt_link.py builds itself are the ones gmqtt builds, and its
packet ids come in the order gmqtt's own generator gives them."""

from __future__ import annotations

import random
from types import SimpleNamespace

import gmqtt
import pytest
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.mqtt.package import PublishPacket
from gmqtt.mqtt.utils import IdGenerator, pack_variable_byte_integer

from gateway.mqtt_link import MqttLink, _PacketIds, _remaining_length, _Wire
from gateway.settings import MqttSection


class _Ids:
    def __init__(self, mid: int) -> None:
        self.mid = mid

    def next_id(self) -> int:
        return self.mid


def _writing_link(version: int, first_mid: int) -> tuple[MqttLink, list[bytes]]:
    """A link whose wire writes into a list, numbering its messages from ``first_mid``."""
    written: list[bytes] = []
    protocol = SimpleNamespace(proto_ver=version, write_data=written.append)
    ids = _PacketIds(65535)
    ids._last = first_mid - 1
    link = MqttLink(MqttSection(host="127.0.0.1", port=1), "wire-test")
    transport = SimpleNamespace(is_closing=lambda: False)
    link._wire = _Wire(protocol, ids, 65534, None, transport)
    return link, written


def _gmqtts(version: int, topic: str, payload: bytes, mid: int, *, retain: bool) -> bytes:
    protocol = SimpleNamespace(proto_ver=version, id_generator=_Ids(mid))
    message = gmqtt.Message(topic, payload, qos=1, retain=retain)
    gmqtt_mid, expected = PublishPacket.build_package(message, protocol)
    assert gmqtt_mid == mid
    return bytes(expected)


@pytest.mark.parametrize("version", [MQTTv50, MQTTv311])
@pytest.mark.parametrize("retain", [False, True])
@pytest.mark.parametrize(
    ("topic", "size", "mid"),
    [
        ("edge/dc/gw/events/dock-1", 0, 1),
        ("edge/dc/gw/events/dock-1", 90, 258),
        ("edge/dc/gw/status", 127, 65534),
        ("edge/dc/gw/events/Zürich", 400, 7),
        ("edge/dc/gw/events/big", 20_000, 12),
        ("edge/dc/gw/events/huge", 2_100_000, 300),
    ],
)
def test_publish_packet_is_byte_identical_to_gmqtts(
    version: int, retain: bool, topic: str, size: int, mid: int
) -> None:
    payload = bytes(i % 251 for i in range(size))
    link, written = _writing_link(version, mid)
    assert link.send(topic, payload, retain=retain) == mid
    assert written == [_gmqtts(version, topic, payload, mid, retain=retain)]


@pytest.mark.parametrize("version", [MQTTv50, MQTTv311])
def test_a_batch_writes_the_same_bytes_at_once(version: int) -> None:
    """Sends in a batch (a header already known, a retained one, a new topic) written as one."""
    link, written = _writing_link(version, 40)
    sends = [
        ("edge/dc/gw/events/a", b"x" * 300, False),
        ("edge/dc/gw/events/a", b"y" * 300, False),
        ("edge/dc/gw/status", b"{}", True),
        ("edge/dc/gw/events/b", b"z" * 130, False),
    ]
    with link.batch():
        mids = [link.send(topic, payload, retain=retain) for topic, payload, retain in sends]
        assert written == []
    assert mids == [40, 41, 42, 43]
    expected = [
        _gmqtts(version, topic, payload, mid, retain=retain)
        for mid, (topic, payload, retain) in zip(mids, sends, strict=True)
    ]
    assert written == [b"".join(expected)]


def test_retained_publishes_are_plain_once_the_broker_cannot_retain() -> None:
    link, written = _writing_link(MQTTv50, 5)
    link.retain = False
    link.send("edge/dc/gw/status", b"{}", retain=True)
    assert written == [_gmqtts(MQTTv50, "edge/dc/gw/status", b"{}", 5, retain=False)]


@pytest.mark.parametrize("maximum", [3, 20, 65535])
def test_packet_ids_come_in_gmqtts_order(maximum: int) -> None:
    """The link's ids against gmqtt's ``IdGenerator``: the same ids, in the same order, the same
    overflow, through random takes and frees (ours and gmqtt's SUBSCRIBE ids alike)."""
    rng = random.Random(maximum)
    ours, theirs = _PacketIds(maximum), IdGenerator(max=maximum)
    held: list[tuple[int, bool]] = []
    overflows = 0
    for _ in range(5000):
        if held and rng.random() < 0.45:
            mid, publish = held.pop(rng.randrange(len(held)))
            if publish:
                ours.publishing.remove(mid)  # what the PUBACK handler does
            else:
                ours.free_id(mid)
            theirs.free_id(mid)
            continue
        publish = rng.random() < 0.9
        try:
            expected = theirs.next_id()
        except OverflowError:
            overflows += 1
            with pytest.raises(OverflowError):
                ours.take_publish() if publish else ours.next_id()
            continue
        mid = ours.take_publish() if publish else ours.next_id()
        assert mid == expected
        held.append((mid, publish))
        assert ours.in_use() == len(held)
    assert overflows or maximum == 65535


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455])
def test_remaining_length_is_mqtts_variable_byte_integer(n: int) -> None:
    assert _remaining_length(n) == bytes(pack_variable_byte_integer(n))
