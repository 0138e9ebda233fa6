"""Buffer file bytes per event against the payload bytes it holds (issue 8 target: <= 1.5x).

Stores realistic events of each kind the drivers make (CloudEvents with UUIDv7 ids: GS1 and
plain scans, RFID arrivals, conveyor readings), each kind in a buffer of its own, closes it (WAL
checkpointed), and compares the file size with the payload bytes. The fixed cost per row (its
id, device, seq and times, and two indexes) weighs most on the smallest payloads, so every kind
is reported. Prints one JSON object.

    .venv/bin/python -m bench.storage [--events 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import logs_to_stderr
from buffer.store import Buffer, NewEvent
from gateway.events import render_event, rfc3339_now, uuid7


def _event(device: str, type_: str, data: dict[str, Any], *, droppable: bool = False) -> NewEvent:
    event_id, stamp = uuid7(), rfc3339_now()
    source = f"/dc-east/gw-01/{device}"

    def render(seq: int) -> bytes:
        return render_event(
            event_id=event_id, source=source, type_=type_, time_=stamp, seq=seq, data=data
        )

    return NewEvent(event_id, device, stamp, type_, droppable, render)


def scan(device: str, n: int) -> NewEvent:
    """A GS1-128 carton scan as the serial driver reports it."""
    lot = f"LOT{n % 1000:04d}"
    data = {
        "code": f"0109506000134352\x1d10{lot}\x1d17261231",
        "symbology": "]C1",
        "symbology_name": "GS1-128",
        "gtin": "09506000134352",
        "lot": lot,
        "expiry": "2026-12-31",
        "ais": {"01": "09506000134352", "10": lot, "17": "261231"},
    }
    return _event(device, "warehouse.barcode.scanned.v1", data)


def plain_scan(device: str, n: int) -> NewEvent:
    """An EAN-13 scan: the smallest common payload, so the fixed per-row cost weighs most."""
    data = {"code": f"400638{n % 10**7:07d}", "symbology": "]E0", "symbology_name": "EAN-13"}
    return _event(device, "warehouse.barcode.scanned.v1", data)


def rfid_arrival(device: str, n: int) -> NewEvent:
    """A tag arriving at a portal, as the LLRP driver reports it (EPC decoded)."""
    stamp = rfc3339_now()
    data = {
        "epc": f"3074257bf7194e4000{n % 2**24:06x}",
        "zone": "dock-3",
        "antenna": 1 + n % 4,
        "peak_rssi": -50 - n % 20,
        "first_seen": stamp,
        "last_seen": stamp,
        "reads": 1,
        "reader_time": stamp,
        "scheme": "sgtin-96",
        "gtin": "00614141123452",
        "serial": str(n),
    }
    return _event(device, "warehouse.rfid.tag.arrived.v1", data)


def conveyor_reading(device: str, n: int) -> NewEvent:
    """A conveyor group's reading, as the Modbus driver reports it."""
    data = {
        "group": "belt",
        "reason": "change",
        "points": {
            "speed": {"value": round(1.2 + n % 7 / 100, 3), "unit": "m/s"},
            "motor_current": {"value": round(3.4 + n % 11 / 10, 2), "unit": "A"},
            "cartons": {"value": n, "delta": 1},
        },
    }
    return _event(device, "warehouse.conveyor.reading.v1", data, droppable=True)


KINDS: dict[str, Callable[[str, int], NewEvent]] = {
    "gs1_scan": scan,
    "plain_scan": plain_scan,
    "rfid_arrival": rfid_arrival,
    "conveyor_reading": conveyor_reading,
}


async def measure(make: Callable[[str, int], NewEvent], events: int) -> dict[str, float]:
    """Fill a fresh buffer with ``events`` of one kind, close it, compare sizes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "buffer.db"
        buffer = await Buffer.open(path, max_bytes=2**34)
        for start in range(0, events, 1000):
            await asyncio.gather(
                *(buffer.append(make(f"dock-{i % 8}", i)) for i in range(start, start + 1000))
            )
        payload = buffer.stored_bytes
        await buffer.close()
        size = path.stat().st_size
    return {
        "payload_bytes_per_event": round(payload / events, 1),
        "file_bytes_per_event": round(size / events, 1),
        "file_to_payload_ratio": round(size / payload, 3),
    }


async def main(events: int) -> None:
    """Each kind in a buffer of its own; the headline figure is the worst kind's."""
    kinds = {name: await measure(make, events) for name, make in KINDS.items()}
    print(
        json.dumps(
            {
                "benchmark": "storage",
                "events": events,
                "kinds": kinds,
                "worst_ratio": max(k["file_to_payload_ratio"] for k in kinds.values()),
                "target_ratio": 1.5,
            }
        )
    )


if __name__ == "__main__":
    logs_to_stderr()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100000)
    asyncio.run(main(parser.parse_args().events))
