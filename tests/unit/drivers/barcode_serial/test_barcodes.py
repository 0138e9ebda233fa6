"""The simulator's generators make codes that biip accepts, check digits included."""

from __future__ import annotations

import random

import pytest
from biip.gs1_messages import GS1Message
from biip.gtin import Gtin
from biip.sscc import Sscc

from simulators.barcodes import GENERATORS, check_digit, ean13, generate, gs1_128, sscc


def test_check_digit_known_values():
    """Known EAN-13 and SSCC check digits."""
    assert check_digit("400638133393") == "1"
    assert check_digit("37610425002123456") == "9"


def test_ean13_valid():
    """EAN-13s are 13 digits and parse as GTINs with biip (which verifies the check digit)."""
    rng = random.Random(1)
    for _ in range(200):
        code, aim = ean13(rng)
        assert aim == "]E0"
        assert len(code) == 13
        assert Gtin.parse(code).value.endswith(code)


def test_gs1_128_valid():
    """GS1-128s hold a valid GTIN, a lot ended by GS, and a real expiry date."""
    rng = random.Random(2)
    for _ in range(200):
        code, aim = gs1_128(rng)
        assert aim == "]C1"
        assert "\x1d" in code
        strings = GS1Message.parse(code).element_strings
        assert [s.ai.ai for s in strings] == ["01", "10", "17"]
        assert strings[0].gtin is not None
        assert strings[0].gtin_error is None
        assert strings[2].date is not None


def test_sscc_valid():
    """SSCCs are AI 00 + 18 digits with a check digit biip accepts."""
    rng = random.Random(3)
    for _ in range(200):
        code, aim = sscc(rng)
        assert aim == "]C1"
        assert code.startswith("00")
        assert len(code) == 20
        Sscc.parse(code[2:])


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_generate_count_and_repeatable(kind):
    """generate() yields count codes, the same ones for the same seed."""
    first = list(generate(kind, random.Random(5), count=10))
    again = list(generate(kind, random.Random(5), count=10))
    assert len(first) == 10
    assert first == again
