"""The event pump's one-second recheck, the net under its wake-ups (issue 19, seventh round).

The pump sleeps until something can change what it would do: a commit (``Buffer.committed``),
a freed window slot (``Publisher._slot_freed``), a freed packet id (``MqttLink.ids_freed``).
Each wait also ends after ``PUMP_RECHECK_S``, so that a wake-up nobody thought of costs at most
that long instead of stalling delivery for good. A lost wake-up cannot be produced on demand
(the two known were fixed), so these tests inject one, and only one, of each kind, on a real
Mosquitto and a real buffer file: the event still goes out, a second later. Without the net the
pump would wait for ever; with a longer one, longer. A third checks the opposite: a freed slot
alone wakes the pump at once when the link's own "id freed" wake-up is lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from buffer.store import Buffer
from gateway import publisher as publisher_module
from gateway.mqtt_link import MqttLink
from gateway.publisher import Publisher
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker
from tests.integration.gateway.test_publisher import TOPICS, event
from tests.support import running_publisher


class _LostWakeups(asyncio.Event):
    """An injected fault: ``set()`` wakes nobody (a wake-up the code forgot to give)."""

    def set(self) -> None:
        return


async def _never(_link: MqttLink, armed: object = None) -> None:
    """``MqttLink.ids_freed`` that misses every PUBACK (injected)."""
    await asyncio.Event().wait()


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[Buffer]:
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**8)
    yield buf
    await buf.close()


@asynccontextmanager
async def publishing(
    buffer: Buffer, broker: MosquittoBroker, *, lose_slot_wakeups: bool = False
) -> AsyncIterator[list[float]]:
    """A connected publisher at ``max_inflight = 1``; yields the monotonic time at which each
    of its events was told delivered. ``lose_slot_wakeups``: its freed-slot wake-up is lost."""
    times: list[float] = []
    mqtt = MqttSection(host=broker.host, port=broker.port, max_inflight=1)

    def inject(pub: Publisher) -> None:
        if lose_slot_wakeups:
            pub._slot_freed = _LostWakeups()  # the injected fault

    async with running_publisher(
        mqtt,
        buffer,
        TOPICS,
        client_id="gw-pump-wakeups",
        on_delivered=lambda batch: times.extend(time.monotonic() for _ in batch),
        before_run=inject,
        stop_within=30,
    ):
        yield times


async def until(times: list[float], count: int) -> None:
    async with asyncio.timeout(10):
        while len(times) < count:
            await asyncio.sleep(0.005)


async def test_a_commit_whose_wakeup_is_lost_goes_out_at_the_recheck(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """The buffer's "committed" wake-up lost: the first event goes out at some recheck; the
    second, committed just after it (the pump has just begun a new wait), goes out one recheck
    later: about a second, not two, not never."""
    assert publisher_module.PUMP_RECHECK_S == 1.0
    buffer.committed = _LostWakeups()  # the injected fault
    async with publishing(buffer, broker) as times:
        await buffer.append(event("dock-1", 0))
        await until(times, 1)
        await buffer.append(event("dock-1", 1))
        await until(times, 2)
    waited = times[1] - times[0]
    assert 0.5 < waited < 1.5, f"sent {waited:.2f} s after the one before"


async def test_a_freed_slot_whose_wakeups_are_lost_is_used_at_the_recheck(
    buffer: Buffer, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Window of one, two events: the second waits for the first's PUBACK. Both its wake-ups
    (the freed slot, the freed packet id) lost: it goes out one recheck after the first."""
    monkeypatch.setattr(MqttLink, "ids_freed", _never)
    async with publishing(buffer, broker, lose_slot_wakeups=True) as times:
        await asyncio.gather(buffer.append(event("dock-1", 0)), buffer.append(event("dock-1", 1)))
        await until(times, 2)
    waited = times[1] - times[0]
    assert 0.5 < waited < 1.5, f"sent {waited:.2f} s after the one before"


async def test_a_freed_slot_wakes_the_pump_when_the_links_wakeup_is_lost(
    buffer: Buffer, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Window of one, five events, the link's "id freed" wake-up lost: each PUBACK's freed slot
    wakes the pump at once, so the five go out back to back, not one a second."""
    monkeypatch.setattr(MqttLink, "ids_freed", _never)
    async with publishing(buffer, broker) as times:
        await asyncio.gather(*(buffer.append(event("dock-1", n)) for n in range(5)))
        await until(times, 5)
    assert times[-1] - times[0] < 0.9, f"five events over {times[-1] - times[0]:.2f} s"
