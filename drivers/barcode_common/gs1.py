"""GS1 element strings (``01...10...<GS>17...``) parsed with biip into flat event fields.

Central systems want the GTIN, SSCC, lot, expiry and serial without each re-implementing
GS1 parsing, and with check digits verified once, at the edge. Parsing never raises: a scan is
stored whatever its content, with ``gs1_error`` telling why the fields are missing.
"""

from __future__ import annotations

from typing import Any

from drivers.barcode_common.lean_biip import GS1Message

GS = "\x1d"

_FIELDS = {"00": "sscc", "01": "gtin", "10": "lot", "17": "expiry", "21": "serial"}
_CHECKED_KEYS = ("00", "01", "02")
"""AIs with a check digit: one of these makes a scan without an AIM identifier credibly GS1."""
_GTIN_LENGTHS = (8, 12, 13, 14)


def parse_gs1(text: str) -> dict[str, Any]:
    """Parse ``text`` as GS1 element strings with GS as FNC1.

    Returns the fields found (``gtin``, ``sscc``, ``lot``, ``expiry`` as an ISO date,
    ``serial``) and every AI's raw value under ``ais``; or only ``gs1_error`` when the text is
    not valid GS1 (unknown AI, bad length or date, wrong check digit).
    """
    try:
        message = GS1Message.parse(text)
    except Exception as exc:  # biip raises ParseError, or ValueError on odd input
        return {"gs1_error": str(exc) or type(exc).__name__}
    fields: dict[str, Any] = {}
    ais: dict[str, str] = {}
    for element in message.element_strings:
        error = element.gtin_error or element.sscc_error or element.gln_error
        if error:
            return {"gs1_error": error}
        ai = element.ai.ai
        ais[ai] = element.value
        name = _FIELDS.get(ai)
        if name is None:
            continue
        if name == "expiry":
            if element.date is None:
                return {"gs1_error": f"AI (17) {element.value!r} is not a date"}
            fields[name] = element.date.isoformat()
        else:
            fields[name] = element.value
    if not ais:
        return {"gs1_error": "no GS1 element strings"}
    fields["ais"] = ais
    return fields


def sniff_gs1(text: str) -> dict[str, Any] | None:
    """Parse ``text`` as GS1 only if it clearly is, for scanners that send no AIM identifier.

    Plain codes often look like GS1 by accident ("10ABC" reads as lot ABC), so this asks for
    more than a clean parse: a GS separator, or an AI that carries a check digit (SSCC, GTIN).
    A bare EAN/UPC/ITF-14 number is a GTIN, not an element string, and is left alone.
    """
    if (
        text.isascii()
        and text.isdigit()
        and len(text) in _GTIN_LENGTHS
        and _valid_check_digit(text)
    ):
        return None
    fields = parse_gs1(text)
    if "gs1_error" in fields:
        return None
    if GS in text or any(ai in fields["ais"] for ai in _CHECKED_KEYS):
        return fields
    return None


def gs1_check_digit(payload: str) -> int:
    """Compute the GS1 mod-10 check digit of ``payload`` (digits, check digit excluded)."""
    total = sum(int(digit) * (3 if i % 2 == 0 else 1) for i, digit in enumerate(reversed(payload)))
    return (10 - total % 10) % 10


def _valid_check_digit(number: str) -> bool:
    return gs1_check_digit(number[:-1]) == int(number[-1])
