"""Review of the fifth performance round (issue 16): the way into the buffer, end to end.

The pipeline now hands the buffer each id as the UUID's bytes beside its text, and renders
payloads with a ``SourceRenderer`` per device. Pinned here through the real pipeline on a real
SQLite file, for the group commit that fits and the one that must make room (the other
``_insert`` path, which reads ``NewEvent.key`` on its own): every stored row's id is the
payload's id and the ``StoredEvent``'s, its seq the payload's, its payload the bytes
``render_event`` gives for every data shape; an event whose type JSON cannot carry, emitted in
the same group, is refused alone and takes no seq; ``Pipeline.stored`` counts what was stored.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from buffer.event_ids import id_text
from buffer.store import Buffer
from drivers.base import DeviceConfig, DeviceEvent, Outcome, StoredEvent
from gateway.confirmations import Confirmations
from gateway.events import render_event
from gateway.pipeline import Pipeline

SCAN = "warehouse.barcode.scanned.v1"
READING = "warehouse.conveyor.reading.v1"

DATA: list[dict[Any, Any]] = [
    {"code": "A"},
    {"f": 1.5e-05, "big": 1e300, "neg0": -0.0, "third": 1 / 3},
    {"nan": math.nan, "inf": math.inf, "ninf": -math.inf},
    {"big": 2**64, "neg": -(2**70), "nan": math.nan},  # orjson refuses: json, NaN as null
    {1: "int key", 2.5: "float key", None: "none key", False: "bool key"},
    {"u": 'é漢字🙂\u2028\u2029\x00\x1f"\\/', "émoji🙂": ["\u0301", {"k": "v"}]},
    {"deep": [[[[{"a": [1, 2.0, None, True, False, ""]}]]]]},
]


@pytest.mark.parametrize("making_room", [False, True], ids=["fits", "making-room"])
async def test_stored_rows_carry_the_payloads_id_and_seq_and_render_events_bytes(
    tmp_path: Path, making_room: bool
) -> None:
    buffer = await Buffer.open(tmp_path / "buffer.db", max_bytes=2**24)
    given: list[tuple[str, Outcome]] = []
    confirmations = Confirmations(lambda d, o: given.append((d, o)))
    pipeline = Pipeline(buffer, confirmations, site="site", gateway_id="gw")
    try:
        scanner = pipeline.emitter(DeviceConfig(id="dock-1", driver="barcode-serial"))
        conveyor = pipeline.emitter(DeviceConfig(id="belt", driver="modbus"))
        fillers = 0
        if making_room:
            for n in range(30):
                pad = {"points": {"pad": "x" * 2000, "n": n}}
                assert await conveyor(DeviceEvent(READING, pad, droppable=True)) is not None
                fillers += 1
            buffer.max_bytes = buffer.stored_bytes + 200  # the group below cannot fit as is
        events = [DeviceEvent(SCAN, data) for data in DATA]
        events.insert(3, DeviceEvent("warehouse.\ud800.v1", {"code": "lone surrogate type"}))
        outcomes = await asyncio.gather(*(scanner(e) for e in events))
        assert outcomes[3] is None, "refused alone"
        stored = [o for o in outcomes if o is not None]
        assert all(isinstance(s, StoredEvent) for s in stored)
        assert [s.seq for s in stored] == list(range(1, len(DATA) + 1)), "the refusal took none"
        assert pipeline.refused == 1
        if making_room:
            assert buffer.transitions["dropped"] > 0, "the making-room path ran"
        with sqlite3.connect(buffer.path) as conn:
            rows = conn.execute(
                "SELECT id, seq, payload FROM events WHERE device = 'dock-1' ORDER BY rowid"
            ).fetchall()
        assert len(rows) == len(DATA)
        for (key, seq, payload), event, s in zip(rows, DATA, stored, strict=True):
            assert isinstance(key, bytes) and len(key) == 16
            body = json.loads(payload)
            assert id_text(key) == body["id"] == s.id
            assert seq == body["seq"] == s.seq
            assert body["time"] == s.time and body["source"] == "/site/gw/dock-1"
            assert bytes(payload) == render_event(
                event_id=s.id,
                source="/site/gw/dock-1",
                type_=SCAN,
                time_=s.time,
                seq=s.seq,
                data=event,
            )
        assert len({s.id for s in stored}) == len(stored)
        expected = {("dock-1", SCAN): len(DATA)} | ({("belt", READING): fillers} if fillers else {})
        assert pipeline.stored == expected
        assert given == [("dock-1", Outcome.GOOD)] * len(DATA), "a good read per stored scan"
        after = await scanner(DeviceEvent(SCAN, {"code": "next"}))
        assert after is not None and after.seq == len(DATA) + 1
    finally:
        confirmations.close()
        await buffer.close()
