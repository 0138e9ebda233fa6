"""The reader's side of LLRP on the wire: encoders for what a reader sends, parsers for requests.

sllurp encodes only client messages, so a simulated reader needs its own. Written from the LLRP
1.0.1 spec with struct, deliberately independent of the driver's code, so that a bug shared by
both cannot hide itself in the tests; the recorded vectors in ``tests/vectors/llrp/`` check
these encoders against bytes a real Impinj reader produced.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

HEADER = struct.Struct("!HII")
VERSION_BITS = 1 << 10
TYPE_CUSTOM = 1023
VENDOR_IMPINJ = 25882

# message types (LLRP 1.0.1 section 16)
GET_READER_CAPABILITIES, GET_READER_CAPABILITIES_RESPONSE = 1, 11
GET_READER_CONFIG, GET_READER_CONFIG_RESPONSE = 2, 12
SET_READER_CONFIG, SET_READER_CONFIG_RESPONSE = 3, 13
CLOSE_CONNECTION, CLOSE_CONNECTION_RESPONSE = 14, 4
ADD_ROSPEC, DELETE_ROSPEC, START_ROSPEC, STOP_ROSPEC, ENABLE_ROSPEC, DISABLE_ROSPEC = range(20, 26)
RESPONSE_OF = {1: 11, 2: 12, 3: 13, 14: 4, 20: 30, 21: 31, 22: 32, 23: 33, 24: 34, 25: 35, 41: 51}
DELETE_ACCESSSPEC = 41
RO_ACCESS_REPORT, KEEPALIVE, READER_EVENT_NOTIFICATION = 61, 62, 63
ENABLE_EVENTS_AND_REPORTS, KEEPALIVE_ACK, ERROR_MESSAGE = 64, 72, 100

M_SUCCESS, M_FIELD_ERROR, M_UNSUPPORTED_MESSAGE = 0, 101, 109
CONN_SUCCESS, CONN_CLIENT_EXISTS = 0, 4


def frame(msg_type: int, msg_id: int, body: bytes = b"") -> bytes:
    """A message: header (length = whole message) and body."""
    return HEADER.pack(VERSION_BITS | msg_type, HEADER.size + len(body), msg_id) + body


def custom_frame(subtype: int, msg_id: int, body: bytes, vendor: int = VENDOR_IMPINJ) -> bytes:
    """A vendor CUSTOM_MESSAGE."""
    head = struct.pack(
        "!HIIIB", VERSION_BITS | TYPE_CUSTOM, 15 + len(body), msg_id, vendor, subtype
    )
    return head + body


def param(param_type: int, body: bytes) -> bytes:
    """A TLV parameter."""
    return struct.pack("!HH", param_type, 4 + len(body)) + body


def llrp_status(code: int = M_SUCCESS, text: str = "") -> bytes:
    """LLRPStatus: a status code and a description."""
    raw = text.encode()
    return param(287, struct.pack("!HH", code, len(raw)) + raw)


def response(msg_type: int, msg_id: int, code: int = M_SUCCESS, text: str = "") -> bytes:
    """A *_RESPONSE (or ERROR_MESSAGE) echoing the request's message id."""
    return frame(msg_type, msg_id, llrp_status(code, text))


def now_us() -> int:
    """The reader's clock: UTC microseconds."""
    return time.time_ns() // 1000


def reader_event(msg_id: int, *events: bytes, clock_us: int | None = None) -> bytes:
    """READER_EVENT_NOTIFICATION with a UTCTimestamp and the given event parameters."""
    stamp = param(128, struct.pack("!Q", clock_us if clock_us is not None else now_us()))
    return frame(READER_EVENT_NOTIFICATION, msg_id, param(246, stamp + b"".join(events)))


def connection_event(status: int = CONN_SUCCESS) -> bytes:
    """ConnectionAttemptEvent: the first thing a reader says to a new client."""
    return param(256, struct.pack("!H", status))


def gpi_event(port: int, state: bool) -> bytes:
    """GPIEvent: an input changed."""
    return param(248, struct.pack("!HB", port, 0x80 if state else 0))


def rospec_event(kind: int, rospec_id: int) -> bytes:
    """ROSpecEvent: 0 start, 1 end."""
    return param(249, struct.pack("!BII", kind, rospec_id, 0))


def tag_report_data(  # noqa: PLR0917 - mirrors the wire fields in order
    epc_hex: str,
    antenna: int,
    rssi: int,
    first_us: int,
    last_us: int,
    count: int = 1,
    rospec_id: int = 1,
) -> bytes:
    """One TagReportData, field order as an Impinj reader sends it (TV-encoded fields)."""
    raw = bytes.fromhex(epc_hex)
    # EPC-96 (TV type 13) when it fits, else the general EPCData parameter.
    epc = b"\x8d" + raw if len(raw) == 12 else param(241, struct.pack("!H", len(raw) * 8) + raw)
    fields = struct.pack(
        "!BIBHBbBQBQBH",
        0x89,  # ROSpecID
        rospec_id,
        0x81,  # AntennaID
        antenna,
        0x86,  # PeakRSSI
        max(-128, min(127, rssi)),
        0x82,  # FirstSeenTimestampUTC
        first_us,
        0x84,  # LastSeenTimestampUTC
        last_us,
        0x88,  # TagSeenCount
        count,
    )
    return param(240, epc + fields)


def ro_access_report(msg_id: int, entries: list[bytes]) -> bytes:
    """RO_ACCESS_REPORT holding ``entries``."""
    return frame(RO_ACCESS_REPORT, msg_id, b"".join(entries))


def iter_params(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, body) of each TLV parameter in ``data``; stops at TV-encoded or broken ones."""
    pos = 0
    while pos + 4 <= len(data):
        kind, length = struct.unpack_from("!HH", data, pos)
        if kind & 0x8000 or length < 4 or pos + length > len(data):
            return
        yield kind & 0x3FF, data[pos + 4 : pos + length]
        pos += length


def find(data: bytes, kind: int) -> bytes | None:
    """The body of the first parameter of ``kind`` at this level."""
    return next((body for k, body in iter_params(data) if k == kind), None)


@dataclass
class SimRoSpec:
    """What the simulator needs from an ADD_ROSPEC."""

    rospec_id: int
    start: str = "immediate"
    start_gpi: tuple[int, bool] | None = None
    stop: str = "none"
    stop_ms: int = 0
    stop_gpi: tuple[int, bool] | None = None
    antennas: list[int] = field(default_factory=list)
    report_n: int = 0
    report_ms: int = 0
    enabled: bool = False


def _gpi(body: bytes) -> tuple[int, bool] | None:
    trigger = find(body, 181)
    if trigger is None or len(trigger) < 3:
        return None
    port, flags = struct.unpack_from("!HB", trigger)
    return port, bool(flags & 0x80)


def parse_rospec(body: bytes) -> SimRoSpec:
    """Parse the ROSpec parameter body of an ADD_ROSPEC (only the parts a simulator uses)."""
    rospec = find(body, 177)
    if rospec is None or len(rospec) < 6:
        raise ValueError("ADD_ROSPEC without a ROSpec")
    spec = SimRoSpec(rospec_id=struct.unpack_from("!I", rospec)[0])
    inner = rospec[6:]
    boundary = find(inner, 178) or b""
    start = find(boundary, 179) or b"\x01"
    spec.start = {1: "immediate", 2: "periodic", 3: "gpi"}.get(start[0], "null")
    spec.start_gpi = _gpi(start[1:])
    stop = find(boundary, 182) or b"\x00\x00\x00\x00\x00"
    spec.stop = {0: "none", 1: "duration", 2: "gpi"}.get(stop[0], "none")
    spec.stop_ms = struct.unpack_from("!I", stop, 1)[0]
    spec.stop_gpi = _gpi(stop[5:])
    for kind, ai in iter_params(inner):
        if kind == 183:
            count = struct.unpack_from("!H", ai)[0]
            spec.antennas += list(struct.unpack_from(f"!{count}H", ai, 2))
            ai_stop = find(ai[2 + 2 * count :], 184)
            if ai_stop and ai_stop[0] == 1:
                spec.report_ms = struct.unpack_from("!I", ai_stop, 1)[0]
    report = find(inner, 237)
    if report is not None:
        spec.report_n = struct.unpack_from("!H", report, 1)[0]
    return spec


def parse_gpo_writes(body: bytes) -> list[tuple[int, bool]]:
    """GPOWriteData entries of a SET_READER_CONFIG body."""
    out = []
    for kind, data in iter_params(body[1:]):
        if kind == 219 and len(data) >= 3:
            port, flags = struct.unpack_from("!HB", data)
            out.append((port, bool(flags & 0x80)))
    return out


def parse_keepalive_ms(body: bytes) -> int | None:
    """The periodic keepalive interval a SET_READER_CONFIG asks for, if any."""
    spec = find(body[1:], 220)
    if spec is None or len(spec) < 5 or spec[0] != 1:
        return None
    return int(struct.unpack_from("!I", spec, 1)[0])


def with_msg_id(message: bytes, msg_id: int) -> bytes:
    """A recorded message re-stamped with a new message id."""
    return message[:6] + struct.pack("!I", msg_id) + message[10:]


def patch_antenna_count(caps: bytes, antennas: int, gpis: int, gpos: int) -> bytes:
    """A recorded capabilities response, claiming ``antennas`` antennas and GPIO counts."""
    out = bytearray(caps)
    pos = 10 + struct.unpack_from("!H", caps, 12)[0]  # skip LLRPStatus
    while pos + 4 <= len(out):
        kind, length = struct.unpack_from("!HH", out, pos)
        if kind & 0x3FF == 137:  # GeneralDeviceCapabilities
            struct.pack_into("!H", out, pos + 4, antennas)
            firmware = struct.unpack_from("!H", out, pos + 4 + 12)[0]
            sub = pos + 4 + 14 + firmware
            while sub + 4 <= pos + length:
                sub_kind, sub_length = struct.unpack_from("!HH", out, sub)
                if sub_kind & 0x3FF == 141:  # GPIOCapabilities
                    struct.pack_into("!HH", out, sub + 4, gpis, gpos)
                sub += max(4, sub_length)
        pos += max(4, length)
    return bytes(out)
