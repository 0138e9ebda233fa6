"""Central's verdicts on a real buffer file: what a batch reports back (issue 19, mutation run).

The counts in a SettleResult go into the gateway's confirm metrics and logs, and ``applied``
names the device and seq each verdict settled: all of it must be exact, for any batch size.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from buffer.store import Buffer, NewEvent


def make_event(device: str, n: int) -> NewEvent:
    def render(seq: int) -> bytes:
        return json.dumps({"device": device, "n": n, "seq": seq}).encode()

    return NewEvent(f"{device}-{n}", device, "t", "t", False, render)


@pytest.fixture
async def buf(tmp_path: Path):
    b = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**8)
    yield b
    await b.close()


async def test_applied_verdicts_name_their_device_and_seq(buf: Buffer) -> None:
    """Each applied verdict says which device's which seq it settled, as stored."""
    for i in range(3):
        await buf.append(make_event("reader-1", i))
    await buf.append(make_event("scale-2", 0))
    result = await buf.settle([("reader-1-2", True), ("scale-2-0", False)])
    assert [(s.id, s.device, s.seq) for s in result.applied] == [
        ("reader-1-2", "reader-1", 3),
        ("scale-2-0", "scale-2", 1),
    ]


async def test_every_repeated_verdict_in_a_batch_counts_as_a_duplicate(buf: Buffer) -> None:
    """Three verdicts for one event: one applied, two duplicates (the first one wins)."""
    await buf.append(make_event("a", 0))
    result = await buf.settle([("a-0", True), ("a-0", True), ("a-0", False)])
    assert [s.id for s in result.applied] == ["a-0"]
    assert (result.duplicate, result.unknown) == (2, 0)


async def test_duplicates_and_unknowns_are_counted_over_a_batch_of_any_size(buf: Buffer) -> None:
    """A batch larger than one SQL statement's id list still counts every duplicate."""
    await asyncio.gather(*(buf.append(make_event("a", i)) for i in range(1200)))
    ids = [f"a-{i}" for i in range(1200)]
    first = await buf.settle([(i, True) for i in ids])
    assert (len(first.applied), first.duplicate, first.unknown) == (1200, 0, 0)
    again = await buf.settle([(i, True) for i in ids] + [("never-stored", True)])
    assert (len(again.applied), again.duplicate, again.unknown) == (0, 1200, 1)


async def test_verdicts_commit_with_fsync_even_after_a_lazy_write(buf: Buffer) -> None:
    """A settled verdict is not asked for again: it must survive a power cut, so its commit
    runs with synchronous=FULL, checked on the statements SQLite really ran."""
    for i in range(3):
        await buf.append(make_event("a", i))
    statements: list[str] = []
    await buf._db.read(lambda conn: conn.set_trace_callback(statements.append))
    for i in range(3):
        await buf.release_in_flight()  # a non-durable write just before
        await buf.settle([(f"a-{i}", True)])
    await buf._db.read(lambda conn: conn.set_trace_callback(None))
    mode, settling, modes = "", False, []
    for sql in (s.strip().upper() for s in statements):
        if sql.startswith("PRAGMA SYNCHRONOUS="):
            mode = sql.split("=", 1)[1]
        elif sql.startswith("BEGIN"):
            settling = False
        elif sql.startswith("UPDATE EVENTS SET STATE =") and "SENT = COALESCE" in sql:
            settling = True
        elif sql == "COMMIT" and settling:
            modes.append(mode)
    assert modes == ["FULL"] * 3, statements[:20]


async def test_a_confirm_that_overtook_its_puback_counts_as_sent(buf: Buffer) -> None:
    """Central has it: the event is delivered, and retention takes it like any sent event,
    even if its PUBACK never comes (the connection dropped)."""
    await buf.append(make_event("a", 0))
    claimed = await buf.claim(1)
    assert [s.id for s in (await buf.settle([("a-0", True)])).applied] == ["a-0"]
    await buf.release(claimed)
    assert await buf.unsent_count() == 0
    assert await buf.prune(retention=-1) == 1
