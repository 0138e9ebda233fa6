"""Change detection between two answers, and decoding straight from an answer's bytes.

Both are checked against the plain way: decode every point of both answers with
``decode_point`` and compare. Whatever ``RequestImage`` skips must be a point whose value the
full decode says did not change, and whatever it decodes must equal ``decode_point``'s value.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.config import PointConfig
from drivers.modbus.decode import decode_point
from drivers.modbus.image import RequestImage
from drivers.modbus.plan import plan

ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
TYPES = ("int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64")


def register_points() -> list[PointConfig]:
    """Every type in every order, some scaled, and bits of one shared register."""
    points: list[dict[str, Any]] = []
    address = 0
    for type_ in TYPES:
        for order in ORDERS:
            scale = {"scale": 0.1, "offset": -3.0} if type_.startswith("int") else {}
            points.append(
                {"name": f"{type_}_{order}", "address": address, "type": type_, "order": order}
                | scale
            )
            address += {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}.get(
                type_, 4
            )
    points.extend(
        {"name": f"bit{bit}", "address": address, "type": "bit", "bit": bit} for bit in (0, 7, 15)
    )
    return [PointConfig.model_validate({"table": "holding", **p}) for p in points]


POINTS = register_points()
WORDS = max(p.address + p.words for p in POINTS)
[REQUEST] = plan(POINTS, max_gap=8, max_registers=125, max_bits=2000)


def words(point: PointConfig, image: list[int]) -> list[int]:
    return image[point.address : point.address + point.words]


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b)


registers = st.lists(st.integers(0, 0xFFFF), min_size=WORDS, max_size=WORDS)


@settings(max_examples=300, deadline=None)
@given(old=registers, changes=st.dictionaries(st.integers(0, WORDS - 1), st.integers(0, 0xFFFF)))
def test_only_changed_points_are_decoded_and_they_decode_as_decode_point(old, changes):
    new = list(old)
    for address, value in changes.items():
        new[address] = value
    image = RequestImage(REQUEST)
    first = struct.pack(f">{WORDS}H", *old)
    assert image.changed(first) == list(range(len(POINTS))), "the first answer decodes all"
    found = {REQUEST.points[i].name for i in image.changed(struct.pack(f">{WORDS}H", *new))}
    expected = {p.name for p in POINTS if words(p, old) != words(p, new)}
    assert found == expected
    data = struct.pack(f">{WORDS}H", *new)
    for index, point in enumerate(REQUEST.points):
        assert same(image.decode(data, index), decode_point(words(point, new), point)), point.name


@settings(max_examples=200, deadline=None)
@given(
    count=st.integers(1, 40),
    data=st.data(),
)
def test_bits_changed_and_decoded(count, data):
    points = [
        PointConfig.model_validate(
            {"name": f"b{a}", "table": "coil", "address": 100 + a, "type": "bool"}
        )
        for a in range(count)
    ]
    [request] = plan(points, max_gap=8, max_registers=125, max_bits=2000)
    old = data.draw(st.lists(st.booleans(), min_size=count, max_size=count))
    new = data.draw(st.lists(st.booleans(), min_size=count, max_size=count))

    def packed(bits: list[bool]) -> bytes:
        out = bytearray((count + 7) // 8)
        for index, bit in enumerate(bits):
            out[index // 8] |= bit << (index % 8)
        return bytes(out)

    image = RequestImage(request)
    image.changed(packed(old))
    found = [request.points[i].address - 100 for i in image.changed(packed(new))]
    assert found == [a for a in range(count) if old[a] != new[a]]
    for index, point in enumerate(request.points):
        assert image.decode(packed(new), index) is new[point.address - 100]


def test_a_failed_read_forgets_the_previous_answer():
    image = RequestImage(REQUEST)
    data = bytes(2 * WORDS)
    image.changed(data)
    assert image.changed(data) == []
    image.forget()
    assert image.changed(data) == list(range(len(POINTS)))
