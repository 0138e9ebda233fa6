"""Register decoding for every type and word order, against known images and against pymodbus."""

from __future__ import annotations

import math
import struct

import pytest
from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus.config import PointConfig
from drivers.modbus.decode import decode_point, decode_raw, encode_raw, scaled

ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")

# (type, value, big-endian ABCD image): the image is what a device's manual would print.
KNOWN = [
    ("int16", -2, [0xFFFE]),
    ("uint16", 0xABCD, [0xABCD]),
    ("int32", -123456789, [0xF8A4, 0x32EB]),
    ("uint32", 0x01020304, [0x0102, 0x0304]),
    ("float32", 12.5, [0x4148, 0x0000]),
    ("int64", -2, [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]),
    ("uint64", 0x0102030405060708, [0x0102, 0x0304, 0x0506, 0x0708]),
    ("float64", 1.5, [0x3FF8, 0x0000, 0x0000, 0x0000]),
]

# The same 32-bit value 0x01020304 (bytes A=01 B=02 C=03 D=04) in each order, as printed in
# PLC manuals: the ground truth the order names stand for.
ORDER_IMAGES_32 = {
    "ABCD": [0x0102, 0x0304],
    "CDAB": [0x0304, 0x0102],
    "BADC": [0x0201, 0x0403],
    "DCBA": [0x0403, 0x0201],
}
ORDER_IMAGES_64 = {
    "ABCD": [0x0102, 0x0304, 0x0506, 0x0708],
    "CDAB": [0x0708, 0x0506, 0x0304, 0x0102],
    "BADC": [0x0201, 0x0403, 0x0605, 0x0807],
    "DCBA": [0x0807, 0x0605, 0x0403, 0x0201],
}

PYMODBUS_TYPES = {
    "int16": AsyncModbusTcpClient.DATATYPE.INT16,
    "uint16": AsyncModbusTcpClient.DATATYPE.UINT16,
    "int32": AsyncModbusTcpClient.DATATYPE.INT32,
    "uint32": AsyncModbusTcpClient.DATATYPE.UINT32,
    "float32": AsyncModbusTcpClient.DATATYPE.FLOAT32,
    "int64": AsyncModbusTcpClient.DATATYPE.INT64,
    "uint64": AsyncModbusTcpClient.DATATYPE.UINT64,
    "float64": AsyncModbusTcpClient.DATATYPE.FLOAT64,
}
SAMPLES = {
    "int16": [0, 1, -1, -32768, 32767, 1234],
    "uint16": [0, 1, 65535, 0x8001],
    "int32": [0, -1, -(2**31), 2**31 - 1, 305419896],
    "uint32": [0, 2**32 - 1, 0x80000001, 123456789],
    "float32": [0.0, -1.0, 3.5, 1e-3, -123.25, float("inf")],
    "int64": [0, -1, -(2**63), 2**63 - 1, 1234567890123],
    "uint64": [0, 2**64 - 1, 2**63 + 5],
    "float64": [0.0, -2.5, math.pi, 1e300, -1e-300],
}


def point(**fields):
    return PointConfig.model_validate({"name": "p", "address": 0, **fields})


@pytest.mark.parametrize(("type_", "value", "image"), KNOWN)
def test_known_images_abcd(type_, value, image):
    """Each type decodes its documented big-endian image and encodes back to it."""
    assert decode_raw(image, type_, "ABCD") == value
    assert encode_raw(value, type_, "ABCD") == image


@pytest.mark.parametrize("order", ORDERS)
def test_order_names_match_manual_images_32(order):
    """0x01020304 laid out per order name decodes to the same number, uint32 and int32."""
    assert decode_raw(ORDER_IMAGES_32[order], "uint32", order) == 0x01020304
    assert decode_raw(ORDER_IMAGES_32[order], "int32", order) == 0x01020304
    assert encode_raw(0x01020304, "uint32", order) == ORDER_IMAGES_32[order]


@pytest.mark.parametrize("order", ORDERS)
def test_order_names_match_manual_images_64(order):
    """The 64-bit layouts (GHEFCDAB for CDAB and so on) decode to the same number."""
    assert decode_raw(ORDER_IMAGES_64[order], "uint64", order) == 0x0102030405060708
    assert encode_raw(0x0102030405060708, "uint64", order) == ORDER_IMAGES_64[order]


@pytest.mark.parametrize("order", ORDERS)
def test_float32_in_every_order(order):
    """12.5 (0x41480000) in each order: 4148 0000 / 0000 4148 / 4841 0000 / 0000 4841."""
    images = {
        "ABCD": [0x4148, 0x0000],
        "CDAB": [0x0000, 0x4148],
        "BADC": [0x4841, 0x0000],
        "DCBA": [0x0000, 0x4841],
    }
    assert decode_raw(images[order], "float32", order) == 12.5


def _pymodbus_image(value, type_, order):
    """pymodbus knows word order only; a byte swap is applied on top for BADC and DCBA."""
    word_order = "little" if order in ("CDAB", "DCBA") else "big"
    regs = AsyncModbusTcpClient.convert_to_registers(value, PYMODBUS_TYPES[type_], word_order)
    if order in ("BADC", "DCBA"):
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    return regs


def _pymodbus_value(regs, type_, order):
    if order in ("BADC", "DCBA"):
        regs = [((r & 0xFF) << 8) | (r >> 8) for r in regs]
    word_order = "little" if order in ("CDAB", "DCBA") else "big"
    return AsyncModbusTcpClient.convert_from_registers(regs, PYMODBUS_TYPES[type_], word_order)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_", sorted(PYMODBUS_TYPES))
def test_agrees_with_pymodbus_converter(type_, order):
    """Both directions agree with pymodbus's own convert_to/from_registers for every sample."""
    for value in SAMPLES[type_]:
        image = _pymodbus_image(value, type_, order)
        assert encode_raw(value, type_, order) == image, value
        ours = decode_raw(image, type_, order)
        theirs = _pymodbus_value(image, type_, order)
        if type_.startswith("float"):
            assert struct.pack(">d", ours) == struct.pack(">d", theirs), value
        else:
            assert ours == theirs == value


def test_nan_survives():
    """A NaN (a device's "no reading") decodes as NaN, not as an exception."""
    assert math.isnan(decode_raw([0x7FC0, 0x0000], "float32", "ABCD"))


@pytest.mark.parametrize(("bit", "expected"), [(0, True), (1, False), (2, True), (15, True)])
def test_bit_in_register(bit, expected):
    """Bit 0 is the least significant bit of the register."""
    assert decode_raw([0b1000_0000_0000_0101], "bit", "ABCD", bit) is expected
    assert decode_point([0b1000_0000_0000_0101], point(type="bit", bit=bit)) is expected


def test_scale_and_offset():
    """value = raw * scale + offset; neutral scaling keeps exact ints."""
    assert decode_point([250], point(scale=0.1, offset=-20)) == pytest.approx(5.0)
    assert decode_point([0xFFFF, 0xFFFF], point(type="uint32")) == 2**32 - 1
    assert isinstance(scaled(7, point()), int)
    assert decode_point([1], point(table="coil", type="bool")) is True


def test_scaled_values_carry_no_binary_representation_noise() -> None:
    """51 raw at scale 0.1 reads 5.1, not 5.1000000000000005, in the event central receives."""
    point = PointConfig(name="current", table="input", address=1, type="int16", scale=0.1)
    assert scaled(51, point) == 5.1
    assert repr(scaled(51, point)) == "5.1"
    assert scaled(-3, point) == -0.3
