"""Fixtures on real parts: a private Mosquitto, a simulated central subscriber."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a non-daemon thread behind: it would keep the daemon from exiting.

    (An unclosed aiosqlite connection is the classic one.)
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        leaked = [
            t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto of our own on a free port; tests may stop, kill and restart it."""
    mosquitto = MosquittoBroker(tmp_path / "broker")
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
async def central(broker: MosquittoBroker) -> AsyncIterator[CentralCollector]:
    """A central subscriber in a persistent session, connected before the test starts."""
    collector = CentralCollector(broker.host, broker.port, client_id=f"central-{broker.port}")
    task = asyncio.create_task(collector.run())
    async with asyncio.timeout(10):
        await collector.connected.wait()
    yield collector
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
