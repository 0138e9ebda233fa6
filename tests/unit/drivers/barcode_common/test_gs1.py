"""GS1 element strings parsed into event fields, never raising."""

from __future__ import annotations

import random
import string
import subprocess
import sys
from pathlib import Path

import biip.gs1_prefixes
import pytest

from drivers.barcode_common.gs1 import gs1_check_digit, parse_gs1, sniff_gs1

GS = "\x1d"
ROOT = Path(__file__).resolve().parents[4]


def test_gtin_lot_expiry():
    """GTIN + lot + GS + expiry, the common carton label."""
    assert parse_gs1(f"010950110102091710ABC123{GS}17310131") == {
        "gtin": "09501101020917",
        "lot": "ABC123",
        "expiry": "2031-01-31",
        "ais": {"01": "09501101020917", "10": "ABC123", "17": "310131"},
    }


def test_sscc():
    """An SSCC pallet label."""
    assert parse_gs1("00376104250021234569") == {
        "sscc": "376104250021234569",
        "ais": {"00": "376104250021234569"},
    }


def test_serial_and_expiry_day_zero():
    """Serial (21) comes through; expiry day 00 means the last day of that month."""
    fields = parse_gs1(f"010950110102091717250200{GS}21SN-42")
    assert fields["serial"] == "SN-42"
    assert fields["expiry"] == "2025-02-28"
    assert fields["gtin"] == "09501101020917"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0109501101020918", "check digit"),
        ("00376104250021234568", "check digit"),
        ("010950110102091717311399", "17"),
        ("hello", "hello"),
        ("", "no GS1"),
    ],
)
def test_invalid_gives_error_only(text, fragment):
    """Invalid GS1 yields only gs1_error, naming the problem."""
    fields = parse_gs1(text)
    assert list(fields) == ["gs1_error"]
    assert fragment in fields["gs1_error"]


def test_never_raises():
    """Random junk never raises, whatever it is."""
    rng = random.Random(7)
    alphabet = string.printable + GS + "\u00e9\u2713"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        fields = parse_gs1(text)
        assert "gs1_error" in fields or "ais" in fields


@pytest.mark.parametrize(
    ("text", "gs1"),
    [
        ("4006381333931", False),  # an EAN-13 is a GTIN, not AI (400)
        ("10ABC", False),  # parses as lot ABC, but nothing says it is GS1
        ("HELLO", False),
        (f"10ABC{GS}21X", True),  # a GS separator does
        ("0109501101020917", True),  # a checked GTIN does
        ("0109501101020918", False),  # a wrong check digit does not
    ],
)
def test_sniff_without_aim(text, gs1):
    """Without an AIM id, only convincing GS1 is parsed, and failures are silent."""
    result = sniff_gs1(text)
    assert (result is not None) == gs1
    if result is not None:
        assert "gs1_error" not in result


def test_check_digit():
    """The mod-10 check digit of known numbers."""
    assert gs1_check_digit("400638133393") == 1
    assert gs1_check_digit("0950110102091") == 7
    assert gs1_check_digit("37610425002123456") == 9


def test_company_prefix_table_is_not_kept_and_checks_still_hold():
    """biip's 12 MB company prefix table is dropped; GTIN and SSCC checks do not need it."""
    assert biip.gs1_prefixes._GS1_COMPANY_PREFIX_TRIE == {}
    assert parse_gs1("0109501101020917")["gtin"] == "09501101020917"
    assert "check digit" in parse_gs1("0109501101020918")["gs1_error"]
    assert "check digit" in parse_gs1("00376104250021234568")["gs1_error"]


def test_biip_imported_alone_reads_its_tables_without_importlib_resources():
    """In a fresh interpreter (as the daemon imports it): importlib.metadata and .resources, and
    the zipfile and tempfile they bring, stay out; the GS1 prefix and AI tables are read from
    the package's files; the company prefix table is never read (it would be ~12 MB)."""
    probe = (
        "import sys\n"
        "from drivers.barcode_common.gs1 import parse_gs1\n"
        "import biip.gs1_prefixes as p, biip.gs1_application_identifiers as ai\n"
        "print(sorted(m for m in ('importlib.metadata', 'importlib.resources', 'zipfile',"
        " 'tempfile') if m in sys.modules))\n"
        "print(len(p._GS1_PREFIX_TRIE) > 0, p._GS1_COMPANY_PREFIX_TRIE == {},"
        " len(ai._GS1_APPLICATION_IDENTIFIERS) > 100)\n"
        "print(parse_gs1('0109501101020917')['gtin'])\n"
        "print(type(p.GS1Prefix.extract('9501101020917')).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.splitlines()
    assert out == ["[]", "True True True", "09501101020917", "GS1Prefix"]
