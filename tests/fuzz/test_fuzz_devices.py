"""Device protocol decoders on arbitrary input: Modbus register images, LLRP frames and EPCs."""

from __future__ import annotations

import itertools
import math
import struct
from typing import get_args

from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.config import WORDS, PointType, WordOrder
from drivers.modbus.decode import decode_raw, encode_raw, from_canonical, to_canonical
from drivers.rfid_llrp.decode import MalformedMessageError, decode, tag_reads
from drivers.rfid_llrp.epc import decode_epc
from drivers.rfid_llrp.framing import HEADER, Framer, FramingError
from tests.fuzz.budget import FUZZ

TYPES: tuple[str, ...] = get_args(PointType)
ORDERS: tuple[str, ...] = get_args(WordOrder)
REGISTER = st.integers(0, 0xFFFF)


@FUZZ
@given(
    type_=st.sampled_from(TYPES),
    order=st.sampled_from(ORDERS),
    registers=st.lists(REGISTER, min_size=4, max_size=4),
    bit=st.integers(0, 15),
)
def test_modbus_decode_is_total_and_encode_inverts_it(
    type_: str, order: str, registers: list[int], bit: int
) -> None:
    """Any register image a device may answer: decoding never raises, and encoding the value
    gives the same registers back (bit-exact, NaN payloads included)."""
    words = registers[: WORDS[type_]]
    value = decode_raw(words, type_, order, bit)  # type: ignore[arg-type]
    assert isinstance(value, int | float | bool)
    if type_ in ("bit", "bool"):
        return
    again = encode_raw(value, type_, order)  # type: ignore[arg-type]
    if isinstance(value, float) and math.isnan(value) and type_ == "float32":
        # float32 NaN -> Python float -> float32 may quieten a signalling NaN: compare as NaN.
        assert math.isnan(decode_raw(again, type_, order))  # type: ignore[arg-type]
        return
    assert again == words


@FUZZ
@given(order=st.sampled_from(ORDERS), registers=st.lists(REGISTER, max_size=8))
def test_word_order_swaps_are_involutions(order: str, registers: list[int]) -> None:
    """Reordering to canonical and back is the identity, for any length."""
    assert from_canonical(to_canonical(registers, order), order) == registers  # type: ignore[arg-type]


def llrp_message(msg_type: int, body: bytes, msg_id: int) -> bytes:
    """A well-framed LLRP v1 message around any body."""
    return HEADER.pack((1 << 10) | (msg_type & 0x3FF), 10 + len(body), msg_id) + body


MESSAGES = st.builds(
    llrp_message,
    st.one_of(st.sampled_from([61, 63, 56, 11, 12, 21, 1023, 100, 30]), st.integers(0, 1023)),
    st.binary(max_size=120),
    st.integers(0, 2**32 - 1),
)


@FUZZ
@given(
    stream=st.lists(st.one_of(MESSAGES, st.binary(max_size=30)), max_size=8).map(b"".join),
    cuts=st.lists(st.integers(0, 1000), max_size=10),
)
def test_llrp_framer_only_raises_framing_error_and_is_bounded(
    stream: bytes, cuts: list[int]
) -> None:
    """Any byte stream, cut anywhere: whole messages or FramingError, never another error,
    and never more held than one maximal message."""
    framer = Framer(max_message=4096)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    edges = [0, *points, len(stream)]
    try:
        for a, b in itertools.pairwise(edges):
            for message in framer.feed(stream[a:b]):
                _, length, _ = HEADER.unpack_from(message)
                assert length == len(message) >= 10
            assert framer.pending < 4096 + len(stream)
    except FramingError:
        pass


def _frame_all(framer: Framer, chunks: list[bytes]) -> tuple[list[bytes], bool]:
    """The messages ``framer`` gives for ``chunks`` fed in turn, and whether it lost sync."""
    got: list[bytes] = []
    try:
        for chunk in chunks:
            got += framer.feed(chunk)
    except FramingError:
        return got, True
    return got, False


@FUZZ
@given(
    stream=st.lists(MESSAGES, max_size=8).map(b"".join),
    tail=st.one_of(st.just(b""), st.binary(max_size=30)),
    cuts=st.lists(st.integers(0, 1000), max_size=10),
)
def test_llrp_framer_gives_the_same_messages_whole_and_split(
    stream: bytes, tail: bytes, cuts: list[int]
) -> None:
    """Well-formed messages then anything, cut anywhere: the same messages, the same bytes held
    and the same loss of sync as when the stream comes in one read; split, no message is lost
    for a loss of sync after it."""
    data = stream + tail
    whole = Framer(max_message=4096)
    expected, whole_lost = _frame_all(whole, [data])
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    split = Framer(max_message=4096)
    got, split_lost = _frame_all(split, [data[a:b] for a, b in itertools.pairwise(edges)])
    assert split_lost == whole_lost
    if not whole_lost:
        assert got == expected
        assert split.pending == whole.pending
    else:
        assert expected == [], "one read: what it completed is lost with the connection"
        assert len(got) <= len(Framer(max_message=4096).feed(stream))


@FUZZ
@given(raw=st.one_of(MESSAGES, st.binary(max_size=200)))
def test_llrp_decode_only_raises_malformed_message(raw: bytes) -> None:
    """Any framed message (or junk): decoded, or MalformedMessageError; tag reads never raise."""
    try:
        name, msg_id, body = decode(raw)
    except MalformedMessageError:
        return
    assert isinstance(name, str) and isinstance(msg_id, int)
    try:
        reads = tag_reads(body)
    except MalformedMessageError:
        return
    for read in reads:
        assert isinstance(read.epc, str)


@FUZZ
@given(epc=st.one_of(st.text("0123456789abcdefABCDEF", max_size=26), st.text(max_size=26)))
def test_epc_decoding_is_total(epc: str) -> None:
    """Any text as an EPC: a dict, with a valid GS1 check digit whenever a GTIN/SSCC appears."""
    fields = decode_epc(epc)
    assert isinstance(fields, dict)
    for key in ("gtin", "sscc"):
        if key in fields:
            digits = str(fields[key])
            total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(digits[-2::-1]))
            assert (10 - total % 10) % 10 == int(digits[-1])


def test_sanity_header_layout() -> None:
    """The helper above builds what the framer expects (guards the fuzz strategy itself)."""
    message = llrp_message(61, b"", 7)
    assert Framer().feed(message) == [message]
    assert struct.unpack("!HII", message) == ((1 << 10) | 61, 10, 7)
