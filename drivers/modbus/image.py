"""A read's last answer, kept to find the points whose registers (or bits) changed since.

At 10 Hz most registers read the same as 100 ms ago, and decoding a point, scaling it and
checking its deadband cost several times more Python than reading it. So a poll compares the
answer's bytes with the previous answer's first: equal answers decode nothing; otherwise the
changed registers are found from the XOR of the two answers taken as integers (cost in the
number of changed registers, not the read's size) and only the points that use them are
decoded. What is skipped would have decoded to the value already offered, so reports by
exception, counters and alarms see the same sequence of values as a full decode would; the
driver offers every point again when a heartbeat falls due (``ReadingFilter.next_heartbeat``).
"""

from __future__ import annotations

import struct

from drivers.modbus.config import BIT_TABLES, PointConfig
from drivers.modbus.decode import STRUCT_CODES, Number, decode_point, scaled
from drivers.modbus.plan import Request

_WORDS = {n: struct.Struct(f">{n}H") for n in (1, 2, 4)}


def _direct(point: PointConfig) -> struct.Struct | None:
    """A ``struct`` that reads the point straight from the answer's bytes, if its order allows.

    ABCD is big-endian throughout and DCBA little-endian throughout; for a one-register value
    only the byte swap matters. CDAB and BADC of wider values go through ``decode_point``.
    """
    code = STRUCT_CODES.get(point.type)
    if code is None:
        return None
    order = point.order
    if order == "ABCD" or (point.words == 1 and order == "CDAB"):
        return struct.Struct(">" + code)
    if order == "DCBA" or (point.words == 1 and order == "BADC"):
        return struct.Struct("<" + code)
    return None


class RequestImage:
    """One planned read and its previous answer (``None``: decode everything next time)."""

    __slots__ = ("_bits", "_direct", "_offsets", "_users", "non_finite", "previous", "request")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.previous: bytes | None = None
        self.non_finite: set[int] = set()
        """Points (indexes) whose last decoded value was a NaN or an infinity."""
        self._bits = request.table in BIT_TABLES
        users: list[list[int]] = [[] for _ in range(request.count)]
        self._offsets: list[int] = []
        self._direct = [None if self._bits else _direct(p) for p in request.points]
        for index, point in enumerate(request.points):
            offset = point.address - request.start
            self._offsets.append(offset)
            for unit in range(offset, offset + point.words):
                users[unit].append(index)
        self._users = tuple(tuple(u) for u in users)
        """Per register (or bit) of the read: the indexes of the points that use it."""

    def forget(self) -> None:
        """The read failed: its points' next good answer is decoded whole."""
        self.previous = None
        self.non_finite.clear()

    def changed(self, data: bytes) -> list[int]:
        """Indexes (into ``request.points``) of the points ``data`` changed; all the first time."""
        previous = self.previous
        self.previous = data
        if previous is None:
            return list(range(len(self.request.points)))
        if data == previous:
            return []
        diff = int.from_bytes(data, "little") ^ int.from_bytes(previous, "little")
        # "little": byte k of the answer is bits 8k..8k+7, so register n is bits 16n..16n+15
        # and bit n of a bit table (packed least significant first) is bit n.
        shift = 0 if self._bits else 4
        users = self._users
        found: dict[int, None] = {}
        base = 0
        while diff:
            low = ((diff & -diff).bit_length() - 1) >> shift
            for index in users[base + low]:
                found[index] = None
            diff >>= (low + 1) << shift
            base += low + 1
        return list(found)

    def decode(self, data: bytes, index: int) -> Number:
        """Point ``index``'s engineering value from an answer."""
        point: PointConfig = self.request.points[index]
        offset = self._offsets[index]
        if self._bits:
            return bool((data[offset >> 3] >> (offset & 7)) & 1)
        direct = self._direct[index]
        if direct is not None:
            raw: Number = direct.unpack_from(data, offset << 1)[0]
            return scaled(raw, point)
        return decode_point(_WORDS[point.words].unpack_from(data, offset << 1), point)
