"""The PUBLISH packets gateway/mqtt_link.py builds itself are the ones gmqtt builds."""

from __future__ import annotations

from types import SimpleNamespace

import gmqtt
import pytest
from gmqtt.mqtt.constants import MQTTv50, MQTTv311
from gmqtt.mqtt.package import PublishPacket
from gmqtt.mqtt.utils import pack_variable_byte_integer

from gateway.mqtt_link import _remaining_length, _Wire


class _Ids:
    def __init__(self, mid: int) -> None:
        self.mid = mid

    def next_id(self) -> int:
        return self.mid


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
    protocol = SimpleNamespace(proto_ver=version, id_generator=_Ids(mid))
    payload = bytes(i % 251 for i in range(size))
    wire = _Wire(protocol, id_limit=100, max_packet_size=None)
    message = gmqtt.Message(topic, payload, qos=1, retain=retain)
    gmqtt_mid, expected = PublishPacket.build_package(message, protocol)
    assert gmqtt_mid == mid
    assert wire.publish(mid, wire.topic_head(topic), payload, retain=retain) == bytes(expected)


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455])
def test_remaining_length_is_mqtts_variable_byte_integer(n: int) -> None:
    assert _remaining_length(n) == bytes(pack_variable_byte_integer(n))
