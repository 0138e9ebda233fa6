"""The reconnect loop stops when cancelled, even if a session swallowed the cancellation."""

from __future__ import annotations

import asyncio

from drivers.base import Outcome
from drivers.reconnecting import ReconnectConfig, ReconnectingDriver


class SwallowingDriver(ReconnectingDriver[ReconnectConfig]):
    """A session whose library turns a cancellation into an ordinary failure."""

    config_model = ReconnectConfig

    def __init__(self) -> None:
        config = ReconnectConfig(id="dev", driver="test", reconnect_min=0.01, reconnect_max=0.02)
        super().__init__(config, emit=_no_emit, report_status=lambda _up, _detail: None)
        self.sessions = 0
        self.started = asyncio.Event()

    async def _session(self) -> str:
        self.sessions += 1
        self.started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return "request failed"  # what a library swallowing the cancel looks like
        return "unreachable"

    async def feedback(self, outcome: Outcome) -> None:
        del outcome


async def _no_emit(_event: object) -> None:
    return None


async def test_a_swallowed_cancellation_still_stops_the_driver() -> None:
    """Without re-raising, run() would open a new session and never end."""
    driver = SwallowingDriver()
    task = asyncio.create_task(driver.run())
    await driver.started.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2.0)
    assert task in done
    assert task.cancelled()
    assert driver.sessions == 1
    assert driver.health().detail == "stopped"
