"""Decodes reader messages with sllurp and pulls out what the driver acts on.

sllurp's decoder handles every standard and Impinj parameter; on bad input it raises a mix of
``LLRPError``, ``struct.error``, ``KeyError`` and friends, and logs each failure with a
traceback. Here all of those become one ``MalformedMessageError`` that the driver counts and logs
once per burst, and sllurp's own logger is quietened so a reader spewing garbage cannot flood
the journal.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import Any

from sllurp.llrp import LLRPMessage
from sllurp.llrp_errors import LLRPError

logging.getLogger("sllurp").setLevel(logging.CRITICAL)

_DECODE_ERRORS = (LLRPError, struct.error, KeyError, IndexError, ValueError, TypeError)


class MalformedMessageError(ValueError):
    """A whole, well-framed message whose body does not decode."""


@dataclass(frozen=True, slots=True)
class TagRead:
    """One TagReportData entry: a tag seen ``count`` times on one antenna."""

    epc: str
    antenna: int
    rssi: int | None
    count: int
    reader_us: int | None
    """The reader's UTC timestamp (microseconds) of the read, if it sent one."""


def decode(raw: bytes) -> tuple[str, int, dict[str, Any]]:
    """Return (message name, message id, body) of one complete message."""
    try:
        msg = LLRPMessage(msgbytes=raw)
        name = msg.getName()
        body = msg.msgdict[name]
    except _DECODE_ERRORS as exc:
        raise MalformedMessageError(
            f"undecodable LLRP message: {exc or type(exc).__name__}"
        ) from exc
    return str(name), int(body.get("ID", 0)), body


def status(body: dict[str, Any]) -> tuple[bool, str]:
    """A response's LLRPStatus as (success, human text)."""
    llrp_status = body.get("LLRPStatus") or {}
    code = str(llrp_status.get("StatusCode", "unknown status"))
    if code == "Success":
        return True, code
    text = llrp_status.get("ErrorDescription", b"")
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return False, f"{code}: {text}" if text else code


def _epc_text(value: Any) -> str:  # noqa: ANN401 - sllurp hands bytes of hex text, or raw bytes
    if isinstance(value, bytes):
        try:
            text = value.decode("ascii")
            int(text, 16)
        except ValueError:
            return value.hex()
        return text.lower()
    if isinstance(value, str):
        return value.lower()
    raise MalformedMessageError(f"EPC of unexpected type {type(value).__name__}")


def tag_reads(body: dict[str, Any]) -> list[TagRead]:
    """Every tag in an RO_ACCESS_REPORT; entries without an EPC or antenna are malformed."""
    reads: list[TagRead] = []
    for entry in body.get("TagReportData") or ():
        epc = entry.get("EPC")
        if epc is None:
            raise MalformedMessageError("TagReportData without an EPC")
        stamp = entry.get("LastSeenTimestampUTC") or entry.get("FirstSeenTimestampUTC")
        rssi = entry.get("PeakRSSI")
        reads.append(
            TagRead(
                epc=_epc_text(epc),
                antenna=int(entry.get("AntennaID", 0)),
                rssi=None if rssi is None else int(rssi),
                count=max(1, int(entry.get("TagSeenCount", 1))),
                reader_us=None if stamp is None else int(stamp),
            )
        )
    return reads


def connection_attempt(body: dict[str, Any]) -> str | None:
    """The ConnectionAttemptEvent status of a READER_EVENT_NOTIFICATION, if it has one."""
    data = body.get("ReaderEventNotificationData") or {}
    event = data.get("ConnectionAttemptEvent")
    return None if event is None else str(event.get("Status"))


def notification_summary(body: dict[str, Any]) -> dict[str, Any]:
    """The events of a READER_EVENT_NOTIFICATION, minus timestamps, for logging."""
    data = body.get("ReaderEventNotificationData") or {}
    return {k: v for k, v in data.items() if "Timestamp" not in k and k != "Uptime"}
