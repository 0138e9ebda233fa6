"""Register images to numbers and back, for every type and word/byte order.

Devices disagree on how a 32- or 64-bit value is laid over 16-bit registers. The order names
follow Telegraf and most PLC manuals, written for a 32-bit value whose big-endian bytes are
A B C D:

- ``ABCD``: registers big-endian, bytes big-endian (the Modbus spec's own order)
- ``CDAB``: registers little-endian ("word swap"), bytes big-endian
- ``BADC``: registers big-endian, bytes swapped in each register
- ``DCBA``: fully little-endian

For 64-bit values the same two swaps apply (``CDAB`` is GH EF CD AB). Pure functions with no
pymodbus, so they are cheap to test against known images and against pymodbus's own converter.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from drivers.modbus.config import PointConfig, PointType, WordOrder

STRUCT_CODES: dict[str, str] = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "float32": "f",
    "int64": "q",
    "uint64": "Q",
    "float64": "d",
}
"""``struct`` format characters of the numeric types."""

Number = int | float | bool


def _swap_bytes(word: int) -> int:
    return ((word & 0xFF) << 8) | (word >> 8)


def to_canonical(registers: Sequence[int], order: WordOrder) -> list[int]:
    """Rearrange registers as read into ABCD order (big-endian words of big-endian bytes)."""
    words = list(registers)
    if order in ("CDAB", "DCBA"):
        words.reverse()
    if order in ("BADC", "DCBA"):
        words = [_swap_bytes(word) for word in words]
    return words


def from_canonical(registers: Sequence[int], order: WordOrder) -> list[int]:
    """Lay ABCD-ordered registers out in ``order``; both swaps are their own inverse."""
    return to_canonical(registers, order)


def decode_raw(
    registers: Sequence[int], type_: PointType, order: WordOrder, bit: int = 0
) -> Number:
    """The unscaled value a point's registers hold."""
    if type_ == "bit":
        return bool((registers[0] >> bit) & 1)
    if type_ == "bool":
        return bool(registers[0])
    words = to_canonical(registers, order)
    packed = b"".join(word.to_bytes(2, "big") for word in words)
    value: int | float = struct.unpack(">" + STRUCT_CODES[type_], packed)[0]
    return value


def encode_raw(value: Number, type_: PointType, order: WordOrder, bit: int = 0) -> list[int]:
    """The registers a device would hold for ``value``: the simulator's half of the contract."""
    if type_ == "bit":
        return [(1 << bit) if value else 0]
    if type_ == "bool":
        return [1 if value else 0]
    packed = struct.pack(">" + STRUCT_CODES[type_], value)
    words = [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]
    return from_canonical(words, order)


def scaled(raw: Number, point: PointConfig) -> Number:
    """Engineering value: ``raw * scale + offset``; ints stay ints when the scaling is neutral.

    Keeping ints exact matters for counters and status words, which a float would round above
    2**53 and print as ``12.0``.
    """
    if isinstance(raw, bool):
        return raw
    if point.scale == 1.0 and point.offset == 0.0:
        return raw
    # 51 * 0.1 is 5.1000000000000005 in binary floating point: round off the representation
    # error (12 significant digits is far beyond any sensor's precision) so central sees 5.1.
    return float(f"{raw * point.scale + point.offset:.12g}")


def decode_point(registers: Sequence[int], point: PointConfig) -> Number:
    """A point's engineering value from exactly its registers (or its one bit)."""
    return scaled(decode_raw(registers, point.type, point.order, point.bit or 0), point)
