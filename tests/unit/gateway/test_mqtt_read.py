"""Leading PUBACKs bypass gmqtt's per-packet dispatch (gateway/mqtt_packets.py): the handler
sees what gmqtt's own path would give it, in the same order, however the bytes are split."""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any

from gmqtt.mqtt.utils import pack_variable_byte_integer

from gateway import mqtt_packets
from gateway.mqtt_packets import _gmqtt_read_packet, bounded_read_packet

PINGRESP = b"\xd0\x00"


def puback(mid: int, reason: int | None = None) -> bytes:
    body = struct.pack("!H", mid) + (b"" if reason is None else bytes([reason]))
    return bytes([0x40, len(body)]) + body


def publish(mid: int) -> bytes:
    """A QoS 1 MQTT 5 PUBLISH of 200 bytes: a Remaining Length of two bytes."""
    topic = b"edge/confirm"
    body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", mid) + b"\x00" + b"x" * 200
    return b"\x32" + bytes(pack_variable_byte_integer(len(body))) + body


class Link:
    """gmqtt's protocol as the parser sees it: its connection, the connection's handler."""

    def __init__(self, *, current: bool = True) -> None:
        self.seen: list[tuple[int, bytes]] = []
        """What reached the handler, in order: PUBACKs by either path, the rest via gmqtt."""
        self.connection = SimpleNamespace(_last_data_in=0.0, put_package=self._put)
        self.handler = SimpleNamespace(
            current_connection=self.connection if current else object(),
            _handle_puback_packet=self._puback,
            _last_msg_in=0.0,
        )
        self.connection._handler = self.handler
        self.protocol: Any = SimpleNamespace(_connection=self.connection, _transport=None)
        self.fail_on: set[int] = set()

    def _puback(self, cmd: int, packet: bytes) -> None:
        self.seen.append((cmd, packet))
        if struct.unpack_from("!H", packet)[0] in self.fail_on:
            raise ValueError("handler bug")

    def _put(self, package: Any) -> None:
        """gmqtt's put_package and dispatch, reduced to what the handler would be given."""
        if self.handler.current_connection is not self.connection:
            return  # a superseded connection: gmqtt drops its packets
        if package.cmd & 0xF0 == 0x40:
            self.handler._handle_puback_packet(package.cmd, package.data)
        else:
            self.seen.append((package.cmd, package.data))

    def feed(self, chunks: list[bytes], read: Any = bounded_read_packet) -> bytes:
        """gmqtt's read loop over ``chunks``; what is left unparsed at the end."""
        buf = b""
        for chunk in chunks:
            buf += chunk
            parsed = read(self.protocol, buf)
            assert parsed >= 0
            buf = buf[parsed:]
        return buf


STREAM = [
    puback(1),
    puback(2, 0x10),
    puback(3, 0x87),
    publish(9),
    puback(4),
    PINGRESP,
    puback(5),
    puback(65535, 0),
]


def test_every_split_gives_what_gmqtt_gives() -> None:
    """The stream cut at every byte into two reads, and one byte per read: the handler sees
    the same packets in the same order as through gmqtt's parser alone, and nothing is left."""
    data = b"".join(STREAM)
    reference = Link()
    assert reference.feed([data], read=_gmqtt_read_packet) == b""
    assert len(reference.seen) == len(STREAM)
    splits = [[data[:cut], data[cut:]] for cut in range(len(data) + 1)]
    for chunks in [*splits, [data[i : i + 1] for i in range(len(data))]]:
        link = Link()
        assert link.feed(chunks) == b""
        assert link.seen == reference.seen, chunks


def test_leading_pubacks_are_taken_and_note_the_time() -> None:
    """Only the run of whole PUBACKs at the start is taken by the fast path (the clocks gmqtt
    keeps for keepalive are set); an incomplete one is left for the next read."""
    link = Link()
    data = puback(1) + puback(2, 0x97) + puback(3)[:3]
    used = mqtt_packets._leading_pubacks(link.protocol, data)
    assert used == len(puback(1) + puback(2, 0x97))
    assert link.seen == [(0x40, puback(1)[2:]), (0x40, puback(2, 0x97)[2:])]
    assert link.connection._last_data_in > 0 and link.handler._last_msg_in > 0
    assert mqtt_packets._leading_pubacks(link.protocol, publish(4) + puback(5)) == 0


def test_a_superseded_connection_is_left_to_gmqtt() -> None:
    """gmqtt drops what a superseded connection still delivers; the fast path takes none."""
    link = Link(current=False)
    assert link.feed([puback(1) + puback(2)]) == b""
    assert link.seen == []


def test_a_failing_handler_is_logged_and_the_rest_handled() -> None:
    """As gmqtt's dispatch does: a handler's exception is logged, the next packets go on."""
    link = Link()
    link.fail_on = {2}
    assert link.feed([puback(1) + puback(2) + puback(3)]) == b""
    assert [struct.unpack_from("!H", p)[0] for _c, p in link.seen] == [1, 2, 3]
