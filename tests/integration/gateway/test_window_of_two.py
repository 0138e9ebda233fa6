"""A broker Receive Maximum of 2 (Mosquitto ``max_inflight_messages 2``), found by the second
review: gmqtt then has one packet id. The pump and the other publishes (checkpoint, status, a
replay) used to ask for two, so a checkpoint while an event was in flight raised OverflowError
and tore the session down, again and again. Now they share the one id: the pump keeps a claimed
batch until an id frees up, other publishes wait for one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from buffer.store import Buffer
from gateway.publisher import LIVE_FIRST_BACKLOG
from tests.integration.gateway.test_publisher import TOPICS, event
from tests.integration.gateway.test_small_broker_window import run_with_window, small_window_broker
from tests.support import publisher_and_central, wait_until


async def test_broker_receive_maximum_two_does_not_churn_sessions(tmp_path: Path) -> None:
    await run_with_window(tmp_path, inflight=2, replay=False)


async def test_broker_receive_maximum_two_with_a_replay_running(tmp_path: Path) -> None:
    await run_with_window(tmp_path, inflight=2, replay=True)


async def test_live_events_overtaking_a_backlog_flag_it_historical_with_one_packet_id(
    tmp_path: Path,
) -> None:
    """With one packet id a checkpoint can take the id between a claim and its write, and the
    claimed events are kept for later (a cut claim). Live events overtook a large backlog: every
    backlog event sent after the first of them must still say historical, whatever cut claims
    came between (``_send`` returning from a cut without the flag lost it for the rest)."""
    backlog = LIVE_FIRST_BACKLOG + 500
    buffer = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**9)
    await asyncio.gather(*(buffer.append(event("a", i)) for i in range(backlog)))
    await buffer.close()
    broker = small_window_broker(tmp_path, 2)
    async with publisher_and_central(tmp_path, broker, TOPICS, name="one-id") as rig:

        async def checkpoints() -> None:  # housekeeping's, more often: they take the one id
            while True:
                await rig.publisher.publish_checkpoint({"devices": {}})
                await asyncio.sleep(0.02)

        helper = asyncio.create_task(checkpoints())
        try:
            await wait_until(lambda: len(rig.central.messages) >= 50, timeout=10)
            for i in range(backlog, backlog + 3):
                await rig.buffer.append(event("a", i))
            assert await rig.central.wait_for(backlog + 3, timeout=60)
        finally:
            helper.cancel()
        order = [m["seq"] for m in rig.central.messages]
        first_live = min(i for i, seq in enumerate(order) if seq > backlog)
        after_live = [m for m in rig.central.messages[first_live:] if m["seq"] <= backlog]
        assert len(after_live) > 100, f"the live events did not overtake the backlog: {order}"
        unflagged = [m["seq"] for m in after_live if not m.get("historical")]
        assert not unflagged, f"backlog sent after a live event without historical: {unflagged}"
