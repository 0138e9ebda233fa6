"""Review of issue 16's PUBACK read path (gateway/mqtt_packets.py ``_leading_pubacks``).

Suspect: a PUBACK misparsed, skipped or handled twice, or another packet swallowed, by the run
of leading PUBACKs taken before gmqtt's parser, would mark an event sent that is not, or never
mark it. DISMISSED: random streams of well-formed and malformed packets (PUBACKs of every
Remaining Length class, zero to multi-byte, with flags, PUBLISH up to 20 kB, PINGRESP, SUBACK,
odd types), cut into random reads, reach the handler exactly as through gmqtt's parser alone,
in the same order, with the same bytes left over."""

from __future__ import annotations

import contextlib
import random
import struct
from typing import Any

from gmqtt.mqtt.utils import pack_variable_byte_integer

from gateway.mqtt_packets import _gmqtt_read_packet, bounded_read_packet
from tests.unit.gateway.test_mqtt_read import Link as _Link


class Link(_Link):
    """The test link, with the real handler's failure on a short PUBACK, caught as gmqtt's
    dispatch and the fast path both catch it (logged, the next packets go on)."""

    def _puback(self, cmd: int, packet: bytes) -> None:
        self.seen.append((cmd, packet))
        struct.unpack_from("!H", packet)

    def _put(self, package: Any) -> None:
        with contextlib.suppress(struct.error):
            super()._put(package)


def _packet(rng: random.Random) -> bytes:
    kind = rng.choice(["puback"] * 6 + ["flagged", "publish", "ping", "suback", "other"])
    if kind == "puback":
        size = rng.choice([0, 1, 2, 2, 2, 3, 3, 4, 5, 50, 126, 127, 128, 129, 300])
        body = rng.randbytes(size)
        return b"\x40" + bytes(pack_variable_byte_integer(size)) + body
    if kind == "flagged":  # a PUBACK type with reserved flags set: gmqtt's to judge
        return bytes([0x40 | rng.randrange(1, 16), 2]) + struct.pack("!H", rng.randrange(65536))
    if kind == "publish":
        size = rng.choice([5, 20, 200, 20_000])
        return b"\x32" + bytes(pack_variable_byte_integer(size)) + rng.randbytes(size)
    if kind == "ping":
        return b"\xd0\x00"
    if kind == "suback":
        return b"\x90\x04\x00\x01\x00\x00"
    size = rng.choice([0, 1, 2, 3])
    return bytes([rng.choice([0x20, 0x50, 0x60, 0x70, 0xB0, 0xE0]), size]) + bytes(size)


def test_random_streams_in_random_reads_give_what_gmqtt_gives() -> None:
    rng = random.Random(16)
    for _ in range(2_000):
        data = b"".join(_packet(rng) for _ in range(rng.randrange(1, 12)))
        reference = Link()
        rest = reference.feed([data], read=_gmqtt_read_packet)
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randrange(1, 6))))
        reads = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        link = Link()
        assert link.feed(reads, read=bounded_read_packet) == rest
        assert link.seen == reference.seen, data.hex()
