"""Fixtures on real parts: a private Mosquitto, a simulated central subscriber."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector


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
