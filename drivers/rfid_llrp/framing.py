"""Cuts an LLRP byte stream into whole messages, whatever sizes the bytes arrive in.

TCP gives no message boundaries: one ``read()`` may hold half a header or forty reports. Each
LLRP message starts with a 10-byte header ``!HII`` (reserved/version/type, total length, message
id) and the length covers the whole message, so the stream is self-delimiting as long as every
length is sane. A length that is not (shorter than a header, longer than any real message, or a
version other than 1) means we lost sync; there is no marker to resync on, so the caller must
drop the connection and start clean.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("!HII")
HEADER_LEN = HEADER.size
MAX_MESSAGE = 4 * 1024 * 1024
"""Larger than any real reader message (a capabilities response is ~1.5 kB; a report of
thousands of tags a few hundred kB), small enough that a corrupt length cannot eat the heap."""
LLRP_VERSION = 1


class FramingError(ValueError):
    """The stream is out of sync; the connection must be dropped.

    ``complete`` holds the messages the same bytes completed before the bad header: they
    arrived whole (a tag report among them is a read that happened), so the caller handles
    them before it drops the connection.
    """

    def __init__(self, message: str, complete: list[bytes]) -> None:
        super().__init__(message)
        self.complete = complete


class Framer:
    """Accumulates bytes and yields complete LLRP messages (header included)."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._max = max_message

    @property
    def pending(self) -> int:
        """Bytes held while waiting for the rest of a message."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add ``chunk``; return every message it completed, in order.

        Raises ``FramingError`` on an impossible header, carrying the messages completed before
        it: the reader never sends a report again, so dropping them with the connection would
        lose reads that arrived whole.
        """
        buf = self._buf
        buf += chunk
        out: list[bytes] = []
        start = 0
        end = len(buf)
        while end - start >= HEADER_LEN:
            first, length, _ = HEADER.unpack_from(buf, start)
            version = (first >> 10) & 0x7
            if version != LLRP_VERSION or length < HEADER_LEN or length > self._max:
                self._buf = bytearray()
                raise FramingError(
                    f"bad LLRP header (version {version}, length {length}): stream out of sync",
                    out,
                )
            if end - start < length:
                break
            out.append(bytes(buf[start : start + length]))
            start += length
        if start:
            del buf[:start]
        return out
