"""AIM identifier splitting."""

from __future__ import annotations

import pytest

from drivers.barcode_common.symbology import GS1_SYMBOLOGIES, is_gs1, split_aim


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("]E04006381333931", ("]E0", "EAN-13", "4006381333931")),
        ("]C1010950110102091710ABC", ("]C1", "GS1-128", "010950110102091710ABC")),
        ("]d2010950110102091710ABC", ("]d2", "GS1 DataMatrix", "010950110102091710ABC")),
        ("]Q3010950110102091710ABC", ("]Q3", "GS1 QR Code", "010950110102091710ABC")),
        ("]A0CODE39", ("]A0", "Code 39", "CODE39")),
        ("]C0HELLO", ("]C0", "Code 128", "HELLO")),
        ("]e00109501101020917", ("]e0", "GS1 DataBar", "0109501101020917")),
        ("]I112345678901231", ("]I1", "ITF-14", "12345678901231")),
        ("]E4", ("]E4", "EAN-8", "")),
        ("]L2PDF", ("]L2", "PDF417", "PDF")),  # unknown modifier: named by its letter
        ("]W0X", ("]W0", None, "X")),  # unknown code character: split, no name
        ("4006381333931", (None, None, "4006381333931")),
        ("]", (None, None, "]")),
        ("]E", (None, None, "]E")),
        ("]1AB", (None, None, "]1AB")),
        ("A]E0", (None, None, "A]E0")),
        ("", (None, None, "")),
    ],
)
def test_split_aim(text, expected):
    """A leading ] + letter + modifier is split off and named; anything else is left alone."""
    assert split_aim(text) == expected


def test_gs1_symbologies():
    """Exactly the GS1 symbologies trigger GS1 parsing."""
    assert {"]C1", "]e0", "]d2", "]Q3", "]J1"} == GS1_SYMBOLOGIES
    assert is_gs1("]C1")
    assert not is_gs1("]C0")
    assert not is_gs1(None)
