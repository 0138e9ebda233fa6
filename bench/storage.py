"""Buffer file bytes per event against the payload bytes it holds (issue 8 target: <= 1.5x).

Stores realistic scan events (CloudEvents with UUIDv7 ids, GS1 data) through the buffer, closes
it (WAL checkpointed), and compares the file size with the payload bytes. Prints one JSON object.

    .venv/bin/python -m bench.storage [--events 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from bench import logs_to_stderr
from buffer.store import Buffer, NewEvent
from gateway.events import render_event, rfc3339_now, uuid7


def scan(device: str, n: int) -> NewEvent:
    """A GS1-128 carton scan as the serial driver reports it."""
    event_id, stamp = uuid7(), rfc3339_now()
    data = {
        "code": f"0109506000134352\x1d10LOT{n % 1000:04d}\x1d17261231",
        "symbology": "]C1",
        "symbology_name": "GS1-128",
        "gtin": "09506000134352",
        "lot": f"LOT{n % 1000:04d}",
        "expiry": "2026-12-31",
        "ais": {"01": "09506000134352", "10": f"LOT{n % 1000:04d}", "17": "261231"},
    }

    def render(seq: int) -> bytes:
        return render_event(
            event_id=event_id,
            source=f"/dc-east/gw-01/{device}",
            type_="warehouse.barcode.scanned.v1",
            time_=stamp,
            seq=seq,
            data=data,
        )

    return NewEvent(event_id, device, stamp, "warehouse.barcode.scanned.v1", False, render)


async def main(events: int) -> None:
    """Fill a buffer, close it, measure."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "buffer.db"
        buffer = await Buffer.open(path, max_bytes=2**34)
        for start in range(0, events, 1000):
            await asyncio.gather(
                *(buffer.append(scan(f"dock-{i % 8}", i)) for i in range(start, start + 1000))
            )
        payload = buffer.stored_bytes
        await buffer.close()
        size = path.stat().st_size
    print(
        json.dumps(
            {
                "benchmark": "storage",
                "events": events,
                "payload_bytes_per_event": round(payload / events, 1),
                "file_bytes_per_event": round(size / events, 1),
                "file_to_payload_ratio": round(size / payload, 3),
                "target_ratio": 1.5,
            }
        )
    )


if __name__ == "__main__":
    logs_to_stderr()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100000)
    asyncio.run(main(parser.parse_args().events))
