"""Review of da6b91b (an RFID arrival in flight when its device stops is decided at once):
the stop decision racing the commit's result and a level change, on a real buffer file, with
the daemon's wiring (test_feedback_pipeline's Rig). Suspects dismissed, kept as tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from buffer.store import Buffer, CommitFuture, NewEvent
from drivers.base import DeviceEvent, Outcome
from tests.integration.gateway.test_feedback_pipeline import ARRIVED, Rig
from tests.integration.gateway.test_review16_append_future import LockHold


@pytest.fixture(name="rig")
async def a_rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(await Buffer.open(tmp_path / "buffer.db", max_bytes=2**20))
    yield rig
    rig.confirmations.close()
    await rig.buffer.close()


@pytest.mark.parametrize("stop_first", [True, False])
async def test_a_stop_landing_between_the_commit_and_the_emits_wakeup_decides_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, *, stop_first: bool
) -> None:
    """Suspect: ``device_stopped`` landing after the writer settled the arrival's future but
    before the RFID task resumed (or just after it resumed) gives two answers, or a good-read
    at the later PUBACK. DISMISSED: whichever runs first, one answer: stop first, ``stored``
    finds the instance no longer live (``self._live.get(policy.device, policy) is not
    policy``) and gives pending without a waiter; stored first, the waiter is taken by
    ``device_stopped`` (``del self._waiting[event_id]``) and gets pending. The PUBACK then
    finds no waiter (``if waiter is None: continue``)."""
    real = rig.buffer.append_nowait

    def stop_when_settled(event: NewEvent) -> CommitFuture:
        future = real(event)
        if stop_first:  # registered before the task's wake-up: runs in the window
            future.add_done_callback(lambda _f: rig.confirmations.device_stopped("portal"))
        return future

    monkeypatch.setattr(rig.buffer, "append_nowait", stop_when_settled)
    emit = rig.emit("portal", "rfid-llrp", "delivered")
    stored = await asyncio.create_task(emit(DeviceEvent(ARRIVED, {"epc": "e1"})))
    assert stored is not None
    if not stop_first:
        assert rig.confirmations.waiting == 1
        rig.confirmations.device_stopped("portal")
    rig.confirmations.delivered([stored.id])
    rig.confirmations.settled(stored.id, "portal", accepted=True, reason=None)
    assert rig.given == [("portal", Outcome.PENDING)]
    assert rig.confirmations.waiting == 0


async def test_a_level_change_decides_the_old_arrival_by_its_own_level_and_the_new_by_theirs(
    rig: Rig,
) -> None:
    """Suspect: a reload that changes the portal's level (stored -> delivered) while an old
    arrival commits has the old arrival judged by the new policy (a wait whose PUBACK blinks
    the new driver) or a new arrival judged as the stopped instance's. DISMISSED: each emitter
    closes over its own policy (``policy = policy or FeedbackPolicy.for_device(device)``) and
    ``stored`` compares identity with the live one: the old arrival gets good at stored (its
    level, and it is committed), the new one waits for its PUBACK, each exactly once."""
    hold = LockHold(rig)
    old = rig.emit("portal", "rfid-llrp", "stored")
    in_flight = asyncio.create_task(old(DeviceEvent(ARRIVED, {"epc": "e1"})))
    await asyncio.sleep(0.05)
    rig.confirmations.device_stopped("portal")
    new = rig.emit("portal", "rfid-llrp", "delivered")
    fresh = asyncio.create_task(new(DeviceEvent(ARRIVED, {"epc": "e2"})))
    hold.release()
    late, young = await in_flight, await fresh
    assert late is not None and young is not None
    assert (late.seq, young.seq) == (1, 2), "one device, one sequence across the two drivers"
    assert rig.given == [("portal", Outcome.GOOD)] and rig.confirmations.waiting == 1
    rig.confirmations.delivered([late.id, young.id])
    rig.confirmations.delivered([young.id])
    assert rig.given == [("portal", Outcome.GOOD), ("portal", Outcome.GOOD)]
    assert rig.confirmations.waiting == 0


async def test_a_refused_arrival_of_a_stopped_instance_is_told_bad_once(rig: Rig) -> None:
    """Suspect: the stop check covers ``stored`` only; an old instance's arrival refused by the
    cap after the stop could be left without an answer, or answered twice. DISMISSED: a refusal
    never waits (``refused`` gives the policy's REFUSED answer, bad: not stored, present the
    tag again), which is right whoever holds the device now, and nothing is stored."""
    rig.buffer.max_bytes = 1
    hold = LockHold(rig)
    emit = rig.emit("portal", "rfid-llrp", "delivered")
    in_flight = asyncio.create_task(emit(DeviceEvent(ARRIVED, {"epc": "e1"})))
    await asyncio.sleep(0.05)
    assert not in_flight.done(), "still committing when the stop comes"
    rig.confirmations.device_stopped("portal")
    hold.release()
    assert await in_flight is None
    assert rig.given == [("portal", Outcome.BAD)] and rig.confirmations.waiting == 0
    assert rig.stored_ids() == 0
