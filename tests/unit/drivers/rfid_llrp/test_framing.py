"""LLRP framing and decoding against the 45 recorded RO_ACCESS_REPORTs of a real Impinj reader."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from drivers.rfid_llrp.decode import MalformedMessageError, TagRead, decode, status, tag_reads
from drivers.rfid_llrp.framing import Framer, FramingError

VECTORS = Path(__file__).resolve().parents[3] / "vectors" / "llrp"
STREAM = (VECTORS / "ro_access_report_stream_45msgs.bin").read_bytes()


def _tags(chunk_size: int) -> tuple[int, list[TagRead]]:
    framer = Framer()
    messages: list[bytes] = []
    for start in range(0, len(STREAM), chunk_size):
        messages += framer.feed(STREAM[start : start + chunk_size])
    assert framer.pending == 0
    reads: list[TagRead] = []
    for raw in messages:
        name, _, body = decode(raw)
        assert name == "RO_ACCESS_REPORT"
        reads += tag_reads(body)
    return len(messages), reads


@pytest.mark.parametrize("chunk_size", [1, 7, len(STREAM)])
def test_45_reports_decode_to_the_same_tags_whatever_the_chunking(chunk_size):
    """1-byte, 7-byte and whole-stream feeds give 45 reports and identical tag reads."""
    count, reads = _tags(chunk_size)
    assert count == 45
    assert reads == _tags(len(STREAM))[1]
    assert len(reads) == 45
    assert reads[0] == TagRead(
        epc="3005fb63ac1f3841ec880467", antenna=1, rssi=-50, count=1, reader_us=1385585041558537
    )
    assert {r.epc for r in reads} >= {"3005fb63ac1f3841ec880467", "300833b2ddd906c000000000"}
    assert sorted({len(r.epc) for r in reads}) == [24, 36], "44 EPC-96 and one 144-bit EPCData"
    assert all(r.antenna == 1 and r.rssi is not None for r in reads)


def test_bad_header_is_a_framing_error():
    """A length shorter than a header cannot be resynchronised: the caller must reconnect."""
    framer = Framer()
    with pytest.raises(FramingError, match="out of sync"):
        framer.feed(struct.pack("!HII", (1 << 10) | 61, 3, 1))
    with pytest.raises(FramingError):
        Framer(max_message=100).feed(struct.pack("!HII", (1 << 10) | 61, 101, 1))
    with pytest.raises(FramingError, match="version 2"):
        Framer().feed(struct.pack("!HII", (2 << 10) | 61, 10, 1))


def test_partial_message_waits_for_the_rest():
    """Half a message yields nothing and is held; the rest completes it."""
    framer = Framer()
    first = STREAM[:44]
    assert framer.feed(first[:20]) == []
    assert framer.pending == 20
    assert framer.feed(first[20:]) == [first]


def test_undecodable_body_is_malformed_not_a_crash():
    """A well-framed report with a truncated parameter raises MalformedMessageError only."""
    raw = bytearray(STREAM[:44])
    raw[10:12] = b"\x00\x00"  # the TagReportData's parameter type becomes 0
    with pytest.raises(MalformedMessageError):
        decode(bytes(raw))
    with pytest.raises(MalformedMessageError, match="without an EPC"):
        tag_reads({"TagReportData": [{"AntennaID": 1}]})
    with pytest.raises(MalformedMessageError):
        decode(struct.pack("!HII", (1 << 10) | 999, 10, 1))


def test_status_text():
    """Non-success statuses carry the reader's description."""
    assert status({"LLRPStatus": {"StatusCode": "Success"}}) == (True, "Success")
    ok, text = status({"LLRPStatus": {"StatusCode": "FieldError", "ErrorDescription": b"dup"}})
    assert not ok
    assert text == "FieldError: dup"


def test_messages_completed_before_a_bad_header_come_with_the_error() -> None:
    """The stream is dropped at the bad header; what arrived whole before it is not."""
    first = struct.pack("!HII", (1 << 10) | 61, 14, 1) + b"abcd"
    second = struct.pack("!HII", (1 << 10) | 62, 10, 2)
    framer = Framer()
    with pytest.raises(FramingError) as caught:
        framer.feed(first + second + b"\xff" * 10)
    assert caught.value.complete == [first, second]
    assert framer.pending == 0
