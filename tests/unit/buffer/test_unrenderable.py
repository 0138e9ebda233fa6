"""An event whose payload cannot be rendered is refused alone (found by the review of issue 16).

The buffer renders each payload when it commits a group of appends, possibly from several
devices at once. A render that raised (a driver put bytes in its data) failed the whole group's
commit: a good scan from another device, committed at the same moment, was refused too.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from buffer.store import Buffer, EventRenderError, NewEvent, StoredEvent


def event(device: str, n: int, data: object, *, droppable: bool = False) -> NewEvent:
    def render(seq: int) -> bytes:
        return json.dumps({"device": device, "n": n, "seq": seq, "data": data}).encode()

    return NewEvent(f"{device}-{n}", device, "t", "t", droppable, render)


def size(ev: NewEvent) -> int:
    return len(ev.render(1))


@pytest.mark.parametrize("full", [False, True], ids=["fits", "making-room"])
async def test_an_unrenderable_event_is_refused_alone_and_takes_no_seq(
    tmp_path: Path, full: bool
) -> None:
    """Committed in one group with good events of two devices: they are stored, it is refused,
    and its device's next event gets the seq it would have had. ``making-room``: the buffer is
    full of telemetry, so the group takes the slower path that evicts event by event."""
    fillers = [event("tele", n, "x", droppable=True) for n in range(3)]
    good = size(event("dock", 1, "A")) + size(event("belt", 2, "B"))
    cap = sum(map(size, fillers)) + good - 1 if full else 10**9
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=cap)
    try:
        for filler in fillers:
            await buf.append(filler)
        results = await asyncio.gather(
            buf.append(event("dock", 1, "A")),
            buf.append(event("belt", 1, b"\x01")),  # bytes: json cannot write it
            buf.append(event("belt", 2, "B")),
            return_exceptions=True,
        )
        assert isinstance(results[0], StoredEvent) and results[0].seq == 1
        assert isinstance(results[1], EventRenderError), results[1]
        assert isinstance(results[2], StoredEvent) and results[2].seq == 1, "no seq taken"
        later = await buf.append(event("belt", 3, "C"))
        assert later.seq == 2
        stats = await buf.stats()
        assert stats.devices["belt"].last_seq == 2 and stats.devices["dock"].last_seq == 1
        assert buf.transitions["dropped"] == (2 if full else 0), "the slow path ran"
    finally:
        await buf.close()


@pytest.mark.parametrize("full", [False, True], ids=["fits", "making-room"])
async def test_an_unrenderable_event_is_logged_once_and_says_why(
    tmp_path: Path, full: bool
) -> None:
    """The refusal names the error, cut to 300 characters; the failure is logged once, even
    when the full buffer's slower path renders the group a second time."""

    def raising(seq: int) -> bytes:
        raise ValueError("bad data " + "y" * 400)

    filler = event("tele", 0, "x" * 50, droppable=True)
    cap = size(filler) + size(event("dock", 1, "A")) - 1 if full else 10**9
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=cap)
    try:
        await buf.append(filler)
        with capture_logs() as logs:
            results = await asyncio.gather(
                buf.append(event("dock", 1, "A")),
                buf.append(NewEvent("bad-1", "belt", "t", "t.v1", False, raising)),
                return_exceptions=True,
            )
        assert isinstance(results[0], StoredEvent)
        refusal = results[1]
        assert isinstance(refusal, EventRenderError), refusal
        assert str(refusal).startswith("event cannot be rendered: ValueError: bad data yyy")
        assert len(str(refusal)) == 300
        failed = [e for e in logs if e["event"] == "event_render_failed"]
        assert [(e["device"], e["type"]) for e in failed] == [("belt", "t.v1")]
        assert buf.transitions["dropped"] == (1 if full else 0), "the slow path ran"
    finally:
        await buf.close()
