"""A broker with a small Receive Maximum (Mosquitto ``max_inflight_messages``).

Found by the issue 13 review: the event pump's window plus what ``publish`` allowed asked gmqtt
for more packet ids than it had (the broker's Receive Maximum - 1), so a checkpoint or a status
while events were in flight raised OverflowError, the session was torn down, and so on at every
session (for ever while a replay ran). Now the pump keeps to the window minus a reserve and
other publishes keep to the reserve.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from simulators.broker import MosquittoBroker
from tests.integration.gateway.test_publisher import TOPICS, event
from tests.support import broker_configured, publisher_and_central


def small_window_broker(tmp_path: Path, inflight: int) -> MosquittoBroker:
    return broker_configured(
        tmp_path / "small",
        lambda text: text.replace("max_inflight_messages 100", f"max_inflight_messages {inflight}"),
    )


async def run_with_window(tmp_path: Path, *, inflight: int, replay: bool) -> None:
    """2,000 events, device statuses, a checkpoint every 0.25 s (and replay windows of 10)."""
    broker = small_window_broker(tmp_path, inflight)
    helpers: list[asyncio.Task[None]] = []
    async with publisher_and_central(tmp_path, broker, TOPICS, name="small") as rig:
        pub = rig.publisher
        for i in range(5):
            pub.device_status(f"dev{i}", {"state": "up", "since": "x", "detail": ""})

        async def housekeeping() -> None:  # what gateway/housekeeping.py does every 0.25 s
            while True:
                await pub.publish_checkpoint({"devices": {}})
                await asyncio.sleep(0.25)

        async def replay_windows() -> None:
            # What gateway/replay.py's _publish_range does without end: windows of 10, paced by
            # the worker's token bucket at the default replay_rate (500 events/s).
            while True:
                await pub.connected.wait()
                try:
                    await asyncio.gather(*(pub.publish("edge/x/replayed", b"r") for _ in range(10)))
                except ConnectionError:
                    await asyncio.sleep(0.1)
                await asyncio.sleep(10 / 500)

        helpers.append(asyncio.create_task(housekeeping()))
        if replay:
            helpers.append(asyncio.create_task(replay_windows()))
        try:
            await asyncio.gather(*(rig.buffer.append(event("a", i)) for i in range(2000)))
            # A generous bound: with a window of 2 a loaded box is slow, and it returns once all arrive.
            delivered = await rig.central.wait_for(2000, timeout=60)
            assert delivered, f"{rig.central.unique_count()} of 2000, {pub.reconnects} lost"
            assert pub.reconnects == 0, f"{pub.reconnects} sessions torn down by the window"
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)


async def test_small_broker_receive_maximum_does_not_churn_sessions(tmp_path: Path) -> None:
    """Receive Maximum 3: the pump, the checkpoint and device statuses share 2 packet ids."""
    await run_with_window(tmp_path, inflight=3, replay=False)


async def test_small_broker_receive_maximum_replay_does_not_wedge_delivery(tmp_path: Path) -> None:
    """Receive Maximum 5 with a replay running (10 publishes at once)."""
    await run_with_window(tmp_path, inflight=5, replay=True)
