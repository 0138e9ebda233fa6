"""Cut a scanner's byte stream into scan frames, for every barcode driver.

A serial port delivers whatever the UART had: half a code, three codes, or line noise; a
keyboard wedge delivers one keystroke at a time. The framer is pure and incremental so that it
can be tested byte by byte, and it never holds more than ``max_frame`` bytes, whatever is fed
to it: a scanner stuck sending junk must not grow the gateway's memory.
"""

from __future__ import annotations

import re
from typing import Literal

FrameMode = Literal["cr", "lf", "crlf", "eol", "stx-etx", "tab", "cr-tab"]
"""Every terminator style; ``tab`` and ``cr-tab`` are for keyboard wedges ending a code with
Tab (or either Enter or Tab), which serial scanners do not do."""

STX = 0x02
ETX = 0x03
GS = 0x1D
"""ASCII group separator: scanners send it in place of FNC1 in GS1 codes, so it is data."""

_LINE_CONTROLS = re.compile(rb"[\x00-\x1c\x1e\x1f]")
_STX_ETX_CONTROLS = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1c\x1e\x1f]")
"""Inside STX ... ETX the framing is unambiguous, so tab, CR and LF (multi-line 2D codes)
are data there, not terminators."""

_TERMINATORS: dict[str, re.Pattern[bytes]] = {
    "cr": re.compile(rb"\r"),
    "lf": re.compile(rb"\n"),
    "crlf": re.compile(rb"\r\n"),
    "eol": re.compile(rb"\r\n|\r|\n"),
    "tab": re.compile(rb"\t"),
    "cr-tab": re.compile(rb"\r|\t"),
}


class Framer:
    """Incremental framer: ``feed`` chunks as they arrive, get complete frames back.

    Dropped frames are counted, never raised: ``oversize`` for frames longer than
    ``max_frame`` (the rest is skipped up to the next terminator, where framing resyncs), and
    ``garbage`` for frames with control bytes other than GS or with invalid UTF-8 (a wrong
    baud rate or a noisy line looks like that). Empty frames are ignored silently.
    """

    def __init__(self, mode: FrameMode = "eol", max_frame: int = 512) -> None:
        if max_frame < 1:
            raise ValueError("max_frame must be >= 1")
        self.mode: FrameMode = mode
        self.max_frame = max_frame
        self.frames = 0
        self.oversize = 0
        self.garbage = 0
        self._buf = bytearray()
        self._skipping = False
        self._pending_cr = False
        self._in_frame = False

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (at most ``max_frame``)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data`` and return the frames it completed, in order."""
        if self.mode == "stx-etx":
            return self._feed_stx_etx(data)
        if self._pending_cr:
            data = b"\r" + data
            self._pending_cr = False
        if self.mode == "crlf" and data.endswith(b"\r"):
            # Maybe the first half of a CRLF split across chunks: decide when the next byte comes.
            data = data[:-1]
            self._pending_cr = True
        out: list[bytes] = []
        pos = 0
        for match in _TERMINATORS[self.mode].finditer(data):
            self._append(data[pos : match.start()])
            self._finish(out, _LINE_CONTROLS)
            pos = match.end()
        self._append(data[pos:])
        return out

    def _feed_stx_etx(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        pos = 0
        while pos < len(data):
            if not self._in_frame:
                start = data.find(STX, pos)
                junk = data[pos : len(data) if start < 0 else start]
                if junk.strip(b"\r\n\t "):
                    # Bytes outside a frame: a suffix the scanner adds is fine, anything else not.
                    self.garbage += 1
                if start < 0:
                    break
                self._in_frame = True
                self._buf.clear()
                self._skipping = False
                pos = start + 1
                continue
            end = data.find(ETX, pos)
            restart = data.find(STX, pos)
            if restart >= 0 and (end < 0 or restart < end):
                # A new STX before ETX: the old frame was cut short; count it and resync.
                if not self._skipping:
                    self.garbage += 1
                self._buf.clear()
                self._skipping = False
                pos = restart + 1
                continue
            if end < 0:
                self._append(data[pos:])
                break
            self._append(data[pos:end])
            self._finish(out, _STX_ETX_CONTROLS)
            self._in_frame = False
            pos = end + 1
        return out

    def _append(self, part: bytes) -> None:
        if self._skipping or not part:
            return
        if len(self._buf) + len(part) > self.max_frame:
            self.oversize += 1
            self._skipping = True
            self._buf.clear()
            return
        self._buf += part

    def _finish(self, out: list[bytes], controls: re.Pattern[bytes]) -> None:
        frame = bytes(self._buf)
        self._buf.clear()
        if self._skipping:
            self._skipping = False
            return
        if not frame:
            return
        if controls.search(frame) or not _is_utf8(frame):
            self.garbage += 1
            return
        self.frames += 1
        out.append(frame)


def _is_utf8(frame: bytes) -> bool:
    try:
        frame.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
