"""Encodes the LLRP messages the driver sends, reusing sllurp's parameter encoders.

sllurp encodes the intricate parts well (AISpec with per-antenna RF settings, Impinj search mode,
report content selectors), so those come from it. Three things it gets wrong or lacks are ours:
the ``GPITriggerValue`` parameter (sllurp 3.0.5 gives it type 180, PeriodicTriggerValue's; LLRP
says 181), ``GPOWriteData`` (no encoder at all), and the message header, framed here so that the
same code builds standard and vendor (Impinj) messages.
"""

from __future__ import annotations

import struct
from typing import Any

from sllurp.llrp_proto import LLRPROSpec, encode_param

from drivers.rfid_llrp.plan import ROSPEC_ID, ReaderPlan

MSG_HEADER = struct.Struct("!HII")
CUSTOM_HEADER = struct.Struct("!HIIIB")
PARAM_HEADER = struct.Struct("!HH")
LLRP_VERSION = 1
TYPE_CUSTOM = 1023
VENDOR_IMPINJ = 25882

GET_READER_CAPABILITIES = 1
GET_READER_CONFIG = 2
SET_READER_CONFIG = 3
CLOSE_CONNECTION = 14
ADD_ROSPEC = 20
DELETE_ROSPEC = 21
START_ROSPEC = 22
STOP_ROSPEC = 23
ENABLE_ROSPEC = 24
DELETE_ACCESSSPEC = 41
ENABLE_EVENTS_AND_REPORTS = 64
KEEPALIVE_ACK = 72
IMPINJ_ENABLE_EXTENSIONS = 21

_START_TRIGGER = {"immediate": 1, "gpi": 3}
_STOP_TRIGGER = {"none": 0, "duration": 1, "gpi": 2}


def frame(msg_type: int, msg_id: int, body: bytes = b"") -> bytes:
    """One LLRP message: the 10-byte header (length = whole message) and ``body``."""
    return (
        MSG_HEADER.pack((LLRP_VERSION << 10) | msg_type, MSG_HEADER.size + len(body), msg_id) + body
    )


def custom_frame(vendor: int, subtype: int, msg_id: int, body: bytes = b"") -> bytes:
    """A vendor CUSTOM_MESSAGE (type 1023) with its vendor id and subtype."""
    length = CUSTOM_HEADER.size + len(body)
    head = CUSTOM_HEADER.pack((LLRP_VERSION << 10) | TYPE_CUSTOM, length, msg_id, vendor, subtype)
    return head + body


def param(param_type: int, body: bytes) -> bytes:
    """One TLV parameter."""
    return PARAM_HEADER.pack(param_type, PARAM_HEADER.size + len(body)) + body


def get_reader_capabilities(msg_id: int) -> bytes:
    """Ask for all capabilities (RequestedData 0)."""
    return frame(GET_READER_CAPABILITIES, msg_id, b"\x00")


def get_reader_identification(msg_id: int) -> bytes:
    """GET_READER_CONFIG for the Identification only (RequestedData 1).

    The smallest question every reader answers: asked to hear from a reader that was quiet.
    """
    return frame(GET_READER_CONFIG, msg_id, struct.pack("!HBHH", 0, 1, 0, 0))


def impinj_enable_extensions(msg_id: int) -> bytes:
    """Impinj readers ignore their vendor parameters (search mode) until this is sent."""
    return custom_frame(VENDOR_IMPINJ, IMPINJ_ENABLE_EXTENSIONS, msg_id, b"\x00\x00\x00\x00")


def set_reader_config(msg_id: int, plan: ReaderPlan) -> bytes:
    """Keepalives, the events we act on, and the GPI ports the triggers listen to."""
    events = {
        "HoppingEvent": False,
        "GPIEvent": bool(plan.gpi_ports),
        "ROSpecEvent": True,
        "ReportBufferFillWarning": True,
        "ReaderExceptionEvent": True,
        "RFSurveyEvent": False,
        "AISpecEvent": False,
        "AISpecEventWithSingulation": False,
        "AntennaEvent": True,
    }
    body = [
        b"\x00",  # ResetToFactoryDefaults = false
        encode_param("ReaderEventNotificationSpec", {"EventNotificationState": events}),
        encode_param(
            "KeepaliveSpec", {"KeepaliveTriggerType": 1, "TimeInterval": plan.keepalive_ms}
        ),
    ]
    body.extend(
        encode_param("GPIPortCurrentState", {"GPIPortNum": port, "GPIConfig": True})
        for port in plan.gpi_ports
    )
    return frame(SET_READER_CONFIG, msg_id, b"".join(body))


def gpo_write(msg_id: int, port: int, state: bool) -> bytes:
    """SET_READER_CONFIG carrying only a GPOWriteData: sets one output high or low."""
    data = param(219, struct.pack("!HB", port, 0x80 if state else 0))
    return frame(SET_READER_CONFIG, msg_id, b"\x00" + data)


def simple(msg_type: int, msg_id: int) -> bytes:
    """Messages without a body: ENABLE_EVENTS_AND_REPORTS, KEEPALIVE_ACK, CLOSE_CONNECTION."""
    return frame(msg_type, msg_id)


def with_id(msg_type: int, msg_id: int, spec_id: int) -> bytes:
    """Messages whose body is one ROSpec/AccessSpec id (0 = all)."""
    return frame(msg_type, msg_id, struct.pack("!I", spec_id))


def _gpi_trigger(port: int, state: bool, timeout_ms: int) -> bytes:
    return param(181, struct.pack("!HBI", port, 0x80 if state else 0, timeout_ms))


def _boundary(plan: ReaderPlan) -> bytes:
    start_kind = "gpi" if plan.start_gpi else "immediate"
    start = struct.pack("!B", _START_TRIGGER[start_kind])
    if plan.start_gpi:
        start += _gpi_trigger(*plan.start_gpi, 0)
    duration = plan.stop_timeout_ms if plan.stop_kind != "none" else 0
    stop = struct.pack("!BI", _STOP_TRIGGER[plan.stop_kind], duration)
    if plan.stop_gpi:
        stop += _gpi_trigger(*plan.stop_gpi, plan.stop_timeout_ms)
    return param(178, param(179, start) + param(182, stop))


def rospec_dict(plan: ReaderPlan) -> dict[str, Any]:
    """The ROSpec dict from sllurp for the AISpec and report parts, adjusted to the plan."""
    mode = None if plan.mode_identifier is None else {"ModeIdentifier": plan.mode_identifier}
    if mode is not None:
        mode["MaxTari"] = 0
    spec: dict[str, Any] = LLRPROSpec(
        mode,
        ROSPEC_ID,
        antennas=plan.antennas,
        tx_power=dict.fromkeys(plan.antennas, plan.power_index),
        session=plan.session,
        tag_population=plan.tag_population,
        impinj_search_mode=plan.search_mode,
        tag_content_selector={"EnableFirstSeenTimestamp": True, "EnableLastSeenTimestamp": True},
    )
    if plan.report_every_ms:
        # The AISpec ends every N ms; its end flushes a report and the ROSpec loops into it again.
        spec["AISpec"][0]["AISpecStopTrigger"] = {
            "AISpecStopTriggerType": "Duration",
            "DurationTriggerValue": plan.report_every_ms,
        }
    spec["ROReportSpec"]["N"] = plan.report_every_tags
    return spec


def rospec_param(plan: ReaderPlan) -> bytes:
    """The ROSpec parameter, disabled (ENABLE_ROSPEC arms it)."""
    spec = rospec_dict(plan)
    parts = [struct.pack("!IBB", ROSPEC_ID, 0, 0), _boundary(plan)]
    parts.extend(encode_param("AISpec", ai) for ai in spec["AISpec"])
    parts.append(encode_param("ROReportSpec", spec["ROReportSpec"]))
    return param(177, b"".join(parts))


def add_rospec(msg_id: int, plan: ReaderPlan) -> bytes:
    """ADD_ROSPEC with our single ROSpec."""
    return frame(ADD_ROSPEC, msg_id, rospec_param(plan))
