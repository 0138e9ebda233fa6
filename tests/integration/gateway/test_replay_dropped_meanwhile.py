"""Found by the second review of issue 13 (fixed; the text says what went wrong before): pending telemetry dropped at the size cap while a replay runs is reported "unsent".

The range check counts seqs 4..5 (pending conveyor readings) as ``unsent``: "on their way through
the normal path". While the replay publishes 1..3, a commit makes room and drops 4..5 on purpose
(buffer/eviction.py, recorded in ``dropped``). ``replay_lost`` (buffer/replay_reads.py
``lost_in_gaps``) counts a dropped seq as covered, so the answer is ``ok: true`` with ``unsent: 2``
and no ``dropped``: central waits for two events that will never come.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from buffer.store import Buffer, NewEvent
from gateway.commands import ReplayCommand
from gateway.events import render_event
from gateway.replay import ReplayWorker
from gateway.topics import Topics


def reading(n: int, size: int, *, droppable: bool = True, device: str = "conv") -> NewEvent:
    event_id = f"{device}-{n:04d}"

    def render(seq: int) -> bytes:
        return render_event(
            event_id=event_id,
            source=f"/s/g/{device}",
            type_="warehouse.conveyor.reading.v1",
            time_="2026-11-24T00:00:00.000000Z",
            seq=seq,
            data={"v": "x" * size},
        )

    return NewEvent(event_id, device, "t", "warehouse.conveyor.reading.v1", droppable, render)


async def test_telemetry_dropped_mid_replay_is_not_reported_unsent(tmp_path: Path) -> None:
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=6000)
    for n in range(1, 4):
        await buf.append(reading(n, 100))
    # 1..3 delivered; a claim of exactly 3 leaves the publisher no room, so the next commits
    # go in pending (a claim that found fewer would let them be claimed ahead, in flight).
    await buf.mark_sent(await buf.claim(3))
    for n in range(4, 6):
        await buf.append(reading(n, 1500))  # 4..5 pending (the broker is slow)
    answers: list[dict[str, Any]] = []
    sent: list[int] = []

    async def send(_topic: str, payload: bytes) -> None:
        sent.append(json.loads(payload)["seq"])
        if len(sent) == 3:  # while the replay runs, a scan needs room
            await buf.append(reading(1, 4800, droppable=False, device="scanner"))

    async def connected() -> None:
        return None

    worker = ReplayWorker(
        buf,
        Topics("edge/s/g"),
        send=send,
        connected=connected,
        answer=lambda body: answers.append(json.loads(body)),
        rate=500.0,
    )
    task = asyncio.create_task(worker.run())
    try:
        worker.submit(ReplayCommand(request_id="r", device="conv", from_seq=1, to_seq=5))
        async with asyncio.timeout(10):
            while not answers:
                await asyncio.sleep(0.02)
        stats = await buf.stats()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await buf.close()
    dropped_now = stats.devices["conv"].dropped_ranges
    assert dropped_now == [(4, 5)], f"precondition: 4..5 dropped on purpose, got {dropped_now}"
    answer = answers[0]
    assert not (answer["ok"] and answer.get("unsent") and "dropped" not in answer), (
        f"answer {answer}: seqs 4..5 were dropped for good during the replay, yet they are"
        " reported unsent (still to come) and not dropped"
    )
