"""The framer: same frames whatever the chunking, and every dropped frame counted."""

from __future__ import annotations

import random

import pytest

from drivers.barcode_common.framing import Framer

CASES = [
    # (mode, stream, frames)
    ("cr", b"ABC\rDEF\r", [b"ABC", b"DEF"]),
    ("lf", b"ABC\nDEF\n", [b"ABC", b"DEF"]),
    ("crlf", b"ABC\r\nDEF\r\n", [b"ABC", b"DEF"]),
    ("eol", b"A\r\nB\nC\r\r\nD\r\n\n", [b"A", b"B", b"C", b"D"]),
    ("eol", b"01095011010209171\x1d10LOT\r", [b"01095011010209171\x1d10LOT"]),
    ("eol", "caf\u00e9 \u2713\r".encode(), ["caf\u00e9 \u2713".encode()]),
    ("cr", b"A\r\nB\r", [b"A"]),  # a CRLF scanner on cr framing: the LF makes garbage
    ("crlf", b"A\rB\r\nC\r\n", [b"C"]),  # a lone CR is not a terminator in crlf
    ("stx-etx", b"\x02A\x03\r\n\x02B\x03", [b"A", b"B"]),
    ("stx-etx", b"\x02L1\r\nL2\tX\x03", [b"L1\r\nL2\tX"]),
    ("stx-etx", b"\x02AB\x02CD\x03", [b"CD"]),
    ("eol", b"\x00\x01junk\rGOOD\r\xff\xfe\rOK\r", [b"GOOD", b"OK"]),
]


def _chunks(data: bytes, rng: random.Random) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        size = rng.randint(1, 7)
        out.append(data[pos : pos + size])
        pos += size
    return out


def _run(mode: str, chunks: list[bytes], max_frame: int = 512) -> tuple[list[bytes], Framer]:
    framer = Framer(mode, max_frame)  # type: ignore[arg-type]
    frames: list[bytes] = []
    for chunk in chunks:
        frames += framer.feed(chunk)
    return frames, framer


@pytest.mark.parametrize(("mode", "stream", "expected"), CASES)
def test_frames_whole_stream(mode, stream, expected):
    """Fed in one piece, the stream gives exactly the expected frames."""
    frames, framer = _run(mode, [stream])
    assert frames == expected
    assert framer.frames == len(expected)


@pytest.mark.parametrize(("mode", "stream", "expected"), CASES)
def test_frames_independent_of_chunking(mode, stream, expected):
    """1-byte and random chunks give the same frames and counters: UARTs split anywhere."""
    whole, reference = _run(mode, [stream])
    single, by_byte = _run(mode, [stream[i : i + 1] for i in range(len(stream))])
    assert single == whole == expected
    assert (by_byte.garbage, by_byte.oversize) == (reference.garbage, reference.oversize)
    for seed in range(20):
        frames, framer = _run(mode, _chunks(stream, random.Random(seed)))
        assert frames == expected, seed
        assert framer.garbage == reference.garbage, seed


def test_garbage_counted_per_frame():
    """Control bytes and invalid UTF-8 drop the frame and count it; GS is data."""
    frames, framer = _run("eol", [b"\x00\x01junk\rGOOD\r\xff\xfe\r\x1bX\r01\x1d10A\r"])
    assert frames == [b"GOOD", b"01\x1d10A"]
    assert framer.garbage == 3
    assert framer.frames == 2


def test_oversize_dropped_and_resynced():
    """An over-long frame is counted once and skipped to its terminator; the next is fine."""
    frames, framer = _run("cr", [b"123456789", b"0123456789\rOK\r", b"12345678\r"], max_frame=8)
    assert frames == [b"OK", b"12345678"]
    assert framer.oversize == 1


def test_oversize_stx_etx():
    """In STX/ETX framing an over-long frame is skipped up to its ETX."""
    frames, framer = _run("stx-etx", [b"\x02" + b"9" * 40 + b"\x03\x02OK\x03"], max_frame=16)
    assert frames == [b"OK"]
    assert (framer.oversize, framer.garbage) == (1, 0)


def test_junk_outside_stx_etx_is_garbage():
    """Bytes outside STX...ETX other than whitespace are counted; CR/LF suffixes are not."""
    frames, framer = _run("stx-etx", [b"noise\x02A\x03\r\n"])
    assert frames == [b"A"]
    assert framer.garbage == 1


@pytest.mark.parametrize("mode", ["cr", "lf", "crlf", "eol", "stx-etx"])
def test_memory_bounded(mode):
    """A megabyte with no terminator never grows the buffer past max_frame."""
    framer = Framer(mode, 64)  # type: ignore[arg-type]
    prefix = b"\x02" if mode == "stx-etx" else b""
    framer.feed(prefix)
    for _ in range(256):
        assert framer.feed(b"x" * 4096) == []
        assert framer.buffered <= 64
    assert framer.oversize == 1
    end = {
        "cr": b"\rOK\r",
        "lf": b"\nOK\n",
        "crlf": b"\r\nOK\r\n",
        "eol": b"\r\nOK\r\n",
        "stx-etx": b"\x03\x02OK\x03",
    }[mode]
    assert framer.feed(end) == [b"OK"]


def test_split_crlf_waits_for_lf():
    """In crlf mode a trailing CR is held until the next chunk says whether LF follows."""
    framer = Framer("crlf")
    assert framer.feed(b"ABC\r") == []
    assert framer.feed(b"\n") == [b"ABC"]
    assert framer.feed(b"X\r") == []
    assert framer.feed(b"Y\r\n") == []
    assert framer.garbage == 1


def test_empty_frames_ignored():
    """Blank lines are not scans and not garbage."""
    frames, framer = _run("eol", [b"\r\n\r\n\n\rA\r\n"])
    assert frames == [b"A"]
    assert framer.garbage == 0
