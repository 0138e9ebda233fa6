"""Serial/HID barcode parsers on arbitrary bytes: framing, AIM identifiers, GS1 element strings."""

from __future__ import annotations

import itertools
import re
from typing import get_args

from hypothesis import example, given
from hypothesis import strategies as st

from drivers.barcode_common.framing import FrameMode, Framer
from drivers.barcode_common.gs1 import gs1_check_digit, parse_gs1, sniff_gs1
from drivers.barcode_common.symbology import is_gs1, split_aim, symbology_name
from tests.fuzz.budget import FUZZ

MODES: tuple[str, ...] = get_args(FrameMode)
TERMINATOR = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n", "eol": b"\r\n", "tab": b"\t"}
# Serial lines are mostly printable text with a few control bytes: bias towards them.
ALPHABET = st.sampled_from(
    [b"\r", b"\n", b"\t", b"\x02", b"\x03", b"\x1d", b"\x00", b"\xff", b"\xc3", b"A", b"0", b"]"]
)
LINE_NOISE = st.one_of(
    st.binary(max_size=400),
    st.lists(st.one_of(ALPHABET, st.binary(max_size=8)), max_size=120).map(b"".join),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the given offsets (as a UART read would)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@FUZZ
@given(
    mode=st.sampled_from(MODES),
    max_frame=st.integers(1, 64),
    data=LINE_NOISE,
    cuts=st.lists(st.integers(0, 400), max_size=12),
)
def test_framer_never_raises_never_grows_and_ignores_chunking(
    mode: str, max_frame: int, data: bytes, cuts: list[int]
) -> None:
    """Any bytes, cut anywhere: no exception, at most max_frame held, the same frames as one
    read, and every frame is valid UTF-8 within max_frame without terminators."""
    whole = Framer(mode, max_frame)  # type: ignore[arg-type]
    expected = whole.feed(data)
    split = Framer(mode, max_frame)  # type: ignore[arg-type]
    got: list[bytes] = []
    for chunk in chunked(data, cuts):
        got += split.feed(chunk)
        assert split.buffered <= max_frame
    assert got == expected
    for frame in got:
        assert 0 < len(frame) <= max_frame
        frame.decode("utf-8")
        assert b"\x00" not in frame and b"\x02" not in frame


@FUZZ
@given(
    mode=st.sampled_from([m for m in MODES if m in TERMINATOR]),
    codes=st.lists(
        st.text(
            st.characters(
                blacklist_categories=("Cs",), min_codepoint=0x20, blacklist_characters="\x7f"
            ),
            min_size=1,
            max_size=40,
        ),
        max_size=20,
    ),
)
def test_framer_round_trips_clean_codes(mode: str, codes: list[str]) -> None:
    """Printable codes joined by the mode's terminator come back exactly, in order."""
    framer = Framer(mode, 512)  # type: ignore[arg-type]
    data = b"".join(code.encode() + TERMINATOR[mode] for code in codes)
    assert [f.decode() for f in framer.feed(data)] == codes
    assert framer.garbage == 0 and framer.oversize == 0


@FUZZ
@given(text=st.text(max_size=60) | st.from_regex(r"\A\][A-Za-z][0-9A-Za-z].{0,20}\Z"))
def test_split_aim_is_total_and_lossless(text: str) -> None:
    """Any text: the identifier and the rest put back together are the input; names never
    raise; GS1 only for a known GS1 identifier."""
    aim, name, rest = split_aim(text)
    assert (aim or "") + rest == text
    if aim is None:
        assert name is None and not is_gs1(aim)
    else:
        assert re.fullmatch(r"\][A-Za-z][0-9A-Za-z]", aim)
        assert name == symbology_name(aim)


GS1_PIECES = st.sampled_from(
    ["01", "00", "02", "10", "17", "21", "11", "15", "310", "3103", "8020", "\x1d", "(", ")"]
)
GS1_LIKE = st.lists(
    st.one_of(GS1_PIECES, st.text("0123456789", max_size=18), st.text(max_size=6)), max_size=10
).map("".join)


@FUZZ
@given(text=st.one_of(GS1_LIKE, st.text(max_size=80)))
@example(text="0101310\u00b2")  # found by the 100k run: "²" is a digit to isdigit(), not to int()
def test_gs1_parsing_never_raises_and_reports_valid_fields(text: str) -> None:
    """Any text: parse_gs1 returns fields or only ``gs1_error``; sniff_gs1 returns None or
    fields; a GTIN or SSCC reported has a correct check digit, an expiry is an ISO date."""
    fields = parse_gs1(text)
    if "gs1_error" in fields:
        assert set(fields) == {"gs1_error"} and isinstance(fields["gs1_error"], str)
    else:
        assert fields["ais"]
        for key, size in (("gtin", 14), ("sscc", 18)):
            if key in fields:
                value = fields[key]
                assert len(value) == size and value.isdigit()
                assert gs1_check_digit(value[:-1]) == int(value[-1])
        if "expiry" in fields:
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", fields["expiry"])
    sniffed = sniff_gs1(text)
    assert sniffed is None or "gs1_error" not in sniffed
