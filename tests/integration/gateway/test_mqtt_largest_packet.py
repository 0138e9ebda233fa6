"""Found by the review of the cpu branch (fixed): a payload beyond MQTT's largest packet went out
malformed.

MQTT's Remaining Length is at most four bytes, 268,435,455 (1.5.5). gmqtt's ``Message`` refused a
larger payload (ValueError); :class:`gateway.mqtt_link._Wire`, which builds the PUBLISH itself
since 3c27b15, wrote a five-byte length instead, and a broker with no Maximum Packet Size of its
own (Mosquitto's default) dropped the connection: the event went back to pending, was sent again
at the next session, and so for ever, with every event behind it stuck. The buffer's default cap
(1 GiB) takes such an event. It is now too large to send, like one over the broker's Maximum
Packet Size: held (0x95), and the link carries on.
"""

from __future__ import annotations

import pytest

from gateway.mqtt_link import MqttLink, PacketTooLargeError
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker
from tests.support import wait_until

LARGEST_REMAINING_LENGTH = 268_435_455


async def test_a_payload_beyond_mqtts_largest_packet_is_too_large_not_malformed(
    broker: MosquittoBroker,
) -> None:
    acked: list[int] = []
    link = MqttLink(MqttSection(host="127.0.0.1", port=broker.port), "largest", on_ack=acked.append)
    await link.connect()
    try:
        assert link.max_packet_size is None  # the broker sets none: only MQTT's own bound holds
        topic = "largest/t"
        fits = LARGEST_REMAINING_LENGTH - (2 + len(topic) + 2 + 1)  # topic, packet id, properties
        with pytest.raises(PacketTooLargeError):
            link.send(topic, bytes(fits + 1))
        assert not link.lost.is_set()
        mid = link.send(topic, b"after")
        await wait_until(lambda: mid in acked, timeout=10)
    finally:
        await link.close()
