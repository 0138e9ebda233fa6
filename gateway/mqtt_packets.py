"""The largest MQTT packet the gateway takes from the broker, and gmqtt's parser held to it.

Issue 18, finding 1: gmqtt reads a whole packet before any check of ours can run, appending
64 KiB reads to a bytes object, so one oversized ``confirm`` or ``cmd`` message cost CPU
growing with the square of its size and, redelivered on every reconnect, stopped all delivery.
The link asks the broker for no larger packet (Maximum Packet Size in CONNECT); this module
also bounds the parser, for a broker that sends one anyway. Importing this module installs
the bound for the whole process; gateway/mqtt_link.py, gmqtt's only user here, imports it.
"""

from __future__ import annotations

import structlog
from gmqtt.mqtt.protocol import MQTTProtocol

from gateway.commands import MAX_PAYLOAD

MAX_PACKET_SIZE = MAX_PAYLOAD + 2048
"""The largest MQTT packet we take from the broker: a 64 KiB payload plus its topic and headers.

Sent as Maximum Packet Size in CONNECT (MQTT 5, 3.1.2.11.4): the broker must not send us a
larger packet and drops such a message for this client instead (MQTT 5, 3.1.2-25; Mosquitto
2.0.11 drops it and never sends it again, tests/integration/gateway/test_inbound_limits.py).
A broker that ignores it anyway is cut off by :func:`bounded_read_packet` after reading one
packet header. Without either, gmqtt would read the whole packet, at a cost that grows with the
square of its size (issue 18, finding 1: 64 MiB took 17.5 s of CPU on the event loop; measured
again here, 8 MiB 0.65 s and 32 MiB 5.7 s unbounded, under 0.01 s bounded)."""

_HEADER_MAX = 5
"""A fixed header: one type byte and at most four bytes of Remaining Length."""


def oversized(data: bytes, start: int) -> bool:
    """Whether the packet that starts at ``data[start]`` (not yet whole) is over our maximum."""
    if len(data) - start > MAX_PACKET_SIZE + _HEADER_MAX:
        return True
    length, shift = 0, 0
    for index in range(start + 1, min(len(data), start + _HEADER_MAX)):
        length |= (data[index] & 0x7F) << shift
        if not data[index] & 0x80:
            return length > MAX_PACKET_SIZE
        shift += 7
    return False  # the length is not all here yet


_gmqtt_read_packet = MQTTProtocol._read_packet  # noqa: SLF001
_oversize_log = structlog.get_logger(__name__)


def bounded_read_packet(self: MQTTProtocol, data: bytes) -> int:
    """The gmqtt parser, refusing a packet over :data:`MAX_PACKET_SIZE` as soon as its header is in.

    gmqtt's read loop appends 64 KiB reads to a bytes object until a packet is whole; a broker
    that ignores our Maximum Packet Size could make it read (and copy) hundreds of megabytes.
    Once the pending packet's Remaining Length says it is too big, the connection is aborted
    (``-1`` ends gmqtt's read loop): a protocol error by the broker (MQTT 5, 3.1.2-24).
    """
    parsed = int(_gmqtt_read_packet(self, data))
    if parsed >= 0 and parsed < len(data) and oversized(data, parsed):
        _oversize_log.warning("mqtt_packet_too_large", maximum=MAX_PACKET_SIZE)
        transport = getattr(self, "_transport", None)
        if transport is not None:
            transport.abort()
        return -1
    return parsed


MQTTProtocol._read_packet = bounded_read_packet  # noqa: SLF001
