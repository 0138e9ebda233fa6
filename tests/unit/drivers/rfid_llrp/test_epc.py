"""SGTIN-96 and SSCC-96 decoding against the GS1 Tag Data Standard's own examples."""

from __future__ import annotations

import pytest

from drivers.rfid_llrp.epc import decode_epc, gs1_check_digit


def test_sgtin96_tds_example():
    """TDS: 3074257BF7194E4000001A85 is urn:epc:id:sgtin:0614141.812345.6789."""
    assert decode_epc("3074257bf7194e4000001a85") == {
        "epc_scheme": "sgtin-96",
        "gtin": "80614141123458",
        "serial": "6789",
        "epc_filter": 3,
    }


def test_sscc96_tds_example():
    """TDS: 3174257BF4499602D2000000 is urn:epc:id:sscc:0614141.1234567890."""
    assert decode_epc("3174257BF4499602D2000000") == {
        "epc_scheme": "sscc-96",
        "sscc": "106141412345678908",
        "epc_filter": 3,
    }


@pytest.mark.parametrize(
    "epc",
    ["e2801160600002", "3574257bf7194e4000001a85", "303c257bf7194e4000001a85", "zz" * 12, ""],
)
def test_other_epcs_decode_to_nothing(epc):
    """Other lengths, other headers (GID-96), partition 7 and non-hex give no GS1 fields."""
    assert decode_epc(epc) == {}


def test_check_digit():
    """The GS1 mod-10 check digit of a known GTIN body."""
    assert gs1_check_digit("0950600013435") == "2"
