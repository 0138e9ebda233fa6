"""Builds the ``warehouse.rfid.tag.*`` event bodies from a tag's presence.

Times are the gateway's (receipt), because reader clocks drift and are often never set; the
reader's own timestamp travels along as ``reader_time`` for forensics.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from drivers.base import DeviceEvent
from drivers.rfid_llrp.epc import decode_epc
from drivers.rfid_llrp.smoothing import Presence

ARRIVED = "warehouse.rfid.tag.arrived.v1"
DEPARTED = "warehouse.rfid.tag.departed.v1"


def rfc3339(seconds: float) -> str:
    """UTC, microseconds, ``Z``: the same shape as the CloudEvents ``time``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _reader_time(micros: int | None) -> str | None:
    if micros is None or micros <= 0:
        return None
    try:
        return rfc3339(micros / 1_000_000)
    except (OverflowError, OSError, ValueError):  # a reader clock set to nonsense
        return None


def tag_event(presence: Presence, *, departed: bool, decode: bool) -> DeviceEvent:
    """The arrival (first read) or departure (after ``departure_s`` unseen) of one tag."""
    data: dict[str, Any] = {
        "epc": presence.epc,
        "zone": presence.zone,
        "antenna": presence.antenna,
        "peak_rssi": presence.peak_rssi,
        "first_seen": rfc3339(presence.first_wall),
        "last_seen": rfc3339(presence.last_wall),
        "reads": presence.reads,
        "reader_time": _reader_time(
            presence.reader_last_us if departed else presence.reader_first_us
        ),
    }
    if departed:
        data["dwell_s"] = round(max(0.0, presence.last_wall - presence.first_wall), 3)
    if decode:
        data.update(decode_epc(presence.epc))
    return DeviceEvent(type=DEPARTED if departed else ARRIVED, data=data, droppable=False)
