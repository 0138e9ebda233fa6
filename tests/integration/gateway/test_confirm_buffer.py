"""The buffer side of confirms: early confirms, duplicates, retention of unconfirmed events."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from buffer.event_ids import id_key
from buffer.schema import STATE_CONFIRMED, STATE_REJECTED, STATE_SENT
from buffer.store import Buffer, NewEvent
from gateway.events import render_event


def event(device: str, n: int) -> NewEvent:
    event_id = f"{device}-{n:06d}"

    def render(seq: int) -> bytes:
        return render_event(
            event_id=event_id, source=f"/s/g/{device}", type_="t", time_="t", seq=seq, data={"n": n}
        )

    return NewEvent(event_id, device, "t", "t", False, render)


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[Buffer]:
    buf = await Buffer.open(
        tmp_path / "buffer.db", max_bytes=2**20, keep_unconfirmed=frozenset({"acc"})
    )
    yield buf
    await buf.close()


async def state_of(buf: Buffer, event_id: str) -> int | None:
    row = await buf._db.read(
        lambda conn: conn.execute(
            "SELECT state FROM events WHERE id = ?", (id_key(event_id),)
        ).fetchone()
    )
    return None if row is None else int(row[0])


async def test_confirm_overtaking_puback_is_not_downgraded(buffer: Buffer) -> None:
    """A confirm for an in-flight event sticks; the later PUBACK does not turn it back into sent."""
    await buffer.append(event("acc", 1))
    claimed = await buffer.claim(10)
    result = await buffer.settle([("acc-000001", True)])
    assert [s.id for s in result.applied] == ["acc-000001"]
    await buffer.mark_sent(claimed)
    assert await state_of(buffer, "acc-000001") == STATE_CONFIRMED
    again = await buffer.settle(
        [("acc-000001", False), ("acc-000001", True), ("other-gw-id", True)]
    )
    assert (again.applied, again.duplicate, again.unknown) == ([], 2, 1)
    assert await state_of(buffer, "acc-000001") == STATE_CONFIRMED, "first verdict wins"
    assert (await buffer.stats()).devices["acc"].last_sent_seq == 1


async def test_retention_keeps_unconfirmed_events_of_accepted_devices(buffer: Buffer) -> None:
    """Past retention: confirmed and other devices' sent events go; accepted-level unconfirmed stay."""
    for device in ("acc", "plain"):
        for n in range(3):
            await buffer.append(event(device, n))
    await buffer.mark_sent(await buffer.claim(10))
    await buffer.settle([("acc-000000", True), ("acc-000001", False)])
    assert await buffer.prune(retention=60, now=time.time() + 3600) == 5
    assert await state_of(buffer, "acc-000002") == STATE_SENT
    await buffer.settle([("acc-000002", True)])
    assert await buffer.prune(retention=60, now=time.time() + 3600) == 1
    assert await state_of(buffer, "acc-000001") is None


async def test_cap_evicts_settled_before_unconfirmed(buffer: Buffer) -> None:
    """Under the size cap, confirmed events go first, then unconfirmed ones (counted), scans never."""
    big = b"x" * 250_000

    def large(device: str, n: int) -> NewEvent:
        return NewEvent(f"{device}-{n}", device, "t", "t", False, lambda _seq: b"{" + big + b"}")

    for n in range(4):
        await buffer.append(large("acc", n))
    await buffer.mark_sent(await buffer.claim(10))
    await buffer.settle([("acc-3", True)])
    await buffer.append(large("acc", 4))
    assert buffer.transitions["evicted_sent"] == 1
    assert await state_of(buffer, "acc-3") is None
    assert await state_of(buffer, "acc-0") == STATE_SENT
    await buffer.append(large("acc", 5))
    assert buffer.transitions["evicted_unconfirmed"] == 1
    assert await state_of(buffer, "acc-0") is None
    assert STATE_REJECTED not in {await state_of(buffer, f"acc-{n}") for n in range(1, 6)}
