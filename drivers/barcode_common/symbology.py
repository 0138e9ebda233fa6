"""AIM symbology identifiers (ISO/IEC 15424): the ``]C1`` a scanner may put before the data.

The identifier is what tells a GS1-128 apart from a plain Code 128 that happens to hold digits,
so it decides whether the text is parsed as GS1 element strings. Kept apart from ``gs1.py`` so
that it needs no third-party library.
"""

from __future__ import annotations

import re

_AIM_RE = re.compile(r"\]([A-Za-z])([0-9A-Za-z])")

GS1_SYMBOLOGIES = frozenset({"]C1", "]e0", "]d2", "]Q3", "]J1"})
"""Identifiers whose data is, by definition, GS1 element strings with FNC1 sent as GS."""

_BY_ID = {
    "]A0": "Code 39",
    "]C0": "Code 128",
    "]C1": "GS1-128",
    "]C2": "Code 128 (AIM)",
    "]E0": "EAN-13",
    "]E1": "EAN-13 2-digit add-on",
    "]E2": "EAN-13 5-digit add-on",
    "]E3": "EAN-13 with add-on",
    "]E4": "EAN-8",
    "]I0": "ITF",
    "]I1": "ITF-14",
    "]d1": "Data Matrix",
    "]d2": "GS1 DataMatrix",
    "]Q1": "QR Code",
    "]Q3": "GS1 QR Code",
    "]e0": "GS1 DataBar",
    "]e1": "GS1 Composite",
    "]e2": "GS1 Composite",
    "]J1": "GS1 DotCode",
}

_BY_LETTER = {
    "A": "Code 39",
    "B": "Telepen",
    "C": "Code 128",
    "D": "Code One",
    "E": "EAN/UPC",
    "F": "Codabar",
    "G": "Code 93",
    "H": "Code 11",
    "I": "ITF",
    "J": "DotCode",
    "K": "Code 16K",
    "L": "PDF417",
    "M": "MSI",
    "N": "Anker",
    "O": "Codablock",
    "P": "Plessey",
    "Q": "QR Code",
    "R": "Straight 2 of 5 (2-bar start/stop)",
    "S": "Straight 2 of 5 (3-bar start/stop)",
    "T": "Code 49",
    "U": "MaxiCode",
    "X": "Other barcode",
    "Z": "Non-barcode",
    "c": "Channel Code",
    "d": "Data Matrix",
    "e": "GS1 DataBar",
    "z": "Aztec Code",
}


def symbology_name(aim: str) -> str | None:
    """Name the symbology of an identifier; None when its code character is unknown."""
    return _BY_ID.get(aim) or _BY_LETTER.get(aim[1:2])


def split_aim(text: str) -> tuple[str | None, str | None, str]:
    """Split a leading AIM identifier off ``text``: (identifier, name, the rest).

    Without one, returns (None, None, text) unchanged. Any ``]`` + letter + modifier is taken
    as an identifier, known or not, because scanners only send ``]`` first when prefixing.
    """
    match = _AIM_RE.match(text)
    if match is None:
        return None, None, text
    aim = match.group(0)
    return aim, symbology_name(aim), text[match.end() :]


def is_gs1(aim: str | None) -> bool:
    """Whether the identifier says the data is GS1 element strings."""
    return aim in GS1_SYMBOLOGIES
