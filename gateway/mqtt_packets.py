"""The largest MQTT packet the gateway takes from the broker, and gmqtt's parser held to it.

Issue 18, finding 1: gmqtt reads a whole packet before any check of ours can run, appending
64 KiB reads to a bytes object, so one oversized ``confirm`` or ``cmd`` message cost CPU
growing with the square of its size and, redelivered on every reconnect, stopped all delivery.
The link asks the broker for no larger packet (Maximum Packet Size in CONNECT); this module
also bounds the parser, for a broker that sends one anyway. Importing this module installs
the bound for the whole process; gateway/mqtt_link.py, gmqtt's only user here, imports it.
"""

from __future__ import annotations

import time

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
_log = structlog.get_logger(__name__)


_PUBACK = 0x40
"""A PUBACK's first byte (type 4, no flags: MQTT 5, 3.4.1)."""


def _leading_pubacks(self: MQTTProtocol, data: bytes) -> int:
    """Hand the whole PUBACKs at the start of ``data`` to the handler gmqtt would; bytes used.

    What a read holds while events flow is mostly PUBACKs. gmqtt gives each one a ``Package``,
    its connection's ``put_package`` (a superseded-connection check, a clock read), its
    handler's ``__call__`` and ``_handle_packet`` (a debug log call with ``hex()``, the handler
    lookup, another clock read) before the PUBACK handler (gateway/mqtt_link.py's) runs: about
    5 % of an event's instructions end to end. Here the same handler is called directly, in
    order, with the same arguments; the clocks are set once per read, and a handler's exception
    is logged as gmqtt logs it. Only a run at the start is taken: the first other packet (or an
    incomplete one) and all after it go through gmqtt's parser, so the order is kept. A
    superseded connection's packets (gmqtt drops them) are left to gmqtt.
    """
    connection = self._connection
    handler = connection._handler  # noqa: SLF001
    if handler.current_connection is not connection:
        return 0
    handle = handler._handle_puback_packet  # noqa: SLF001
    end, start = len(data), 0
    while start + 4 <= end and data[start] == _PUBACK:
        length = data[start + 1]
        if length & 0x80 or start + 2 + length > end:
            break  # a PUBACK with properties of 128 bytes or more, or not all here: gmqtt's
        try:
            handle(_PUBACK, data[start + 2 : start + 2 + length])
        except Exception:
            _log.exception("mqtt_puback_handler_failed")
        start += 2 + length
    if start:
        now = time.monotonic()
        connection._last_data_in = now  # noqa: SLF001 - what put_package notes, for keepalive
        handler._last_msg_in = now  # noqa: SLF001 - what _handle_packet notes
    return start


def bounded_read_packet(self: MQTTProtocol, data: bytes) -> int:
    """The gmqtt parser, refusing a packet over :data:`MAX_PACKET_SIZE` as soon as its header is in.

    gmqtt's read loop appends 64 KiB reads to a bytes object until a packet is whole; a broker
    that ignores our Maximum Packet Size could make it read (and copy) hundreds of megabytes.
    Once the pending packet's Remaining Length says it is too big, the connection is aborted
    (``-1`` ends gmqtt's read loop): a protocol error by the broker (MQTT 5, 3.1.2-24). Leading
    PUBACKs skip gmqtt's per-packet dispatch (:func:`_leading_pubacks`).
    """
    fast = _leading_pubacks(self, data)
    if fast == len(data):
        return fast
    parsed = int(_gmqtt_read_packet(self, data[fast:] if fast else data))
    if parsed < 0:
        return parsed
    parsed += fast
    if parsed >= 0 and parsed < len(data) and oversized(data, parsed):
        _log.warning("mqtt_packet_too_large", maximum=MAX_PACKET_SIZE)
        transport = getattr(self, "_transport", None)
        if transport is not None:
            transport.abort()
        return -1
    return parsed


MQTTProtocol._read_packet = bounded_read_packet  # noqa: SLF001
