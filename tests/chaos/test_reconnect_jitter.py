"""Reconnect jitter: a fleet that lost the same broker at the same instant must not retry in step.

The Backoff class is the one every reconnect loop uses (publisher and drivers). It is measured
twice: driven directly for many simulated gateways (exact, instant), and inside 100 real MQTT
clients that lose one real broker to a restart and timestamp every connection attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
from pathlib import Path

import aiomqtt

from drivers.backoff import Backoff
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker
from tests.chaos.conftest import ChaosReport, ChaosRow, Stopwatch, knob

GATEWAYS = knob("EDGE_CHAOS_GATEWAYS", 100)


def peak_share(instants: list[float], window: float) -> float:
    """The largest fraction of ``instants`` that fall inside any one ``window``."""
    ordered = sorted(instants)
    best, lo = 0, 0
    for hi, t in enumerate(ordered):
        while t - ordered[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best / len(ordered) if ordered else 0.0


def simulate_fleet(rng: random.Random, gateways: int, outage: float) -> dict[str, list[float]]:
    """Each gateway retries on its own Backoff (production defaults) until the broker is back."""
    defaults = MqttSection()
    first: list[float] = []
    connected: list[float] = []
    attempts: list[float] = []
    for _ in range(gateways):
        backoff = Backoff(defaults.reconnect_min, defaults.reconnect_max)
        random.seed(rng.random())  # Backoff draws from the module RNG: seed it per gateway
        t = backoff.next()
        first.append(t)
        attempts.append(t)
        while t < outage:
            t += backoff.next()
            attempts.append(t)
        connected.append(t)
    return {"first": first, "connected": connected, "attempts": attempts}


def test_simulated_fleet_reconnects_are_spread_once_the_broker_is_back(
    chaos_rng: random.Random,
) -> None:
    """100 gateways, a 10 s outage: their successful reconnects are spread, not one spike."""
    fleet = simulate_fleet(chaos_rng, 100, outage=10.0)
    assert len(fleet["connected"]) == 100
    assert statistics.pstdev(fleet["connected"]) > 1.0
    assert peak_share(fleet["connected"], 0.1) <= 0.2


def test_first_retry_after_a_common_drop_is_jittered(chaos_rng: random.Random) -> None:
    """The first retry of 100 gateways dropped together is spread over at least reconnect_min/4."""
    fleet = simulate_fleet(chaos_rng, 100, outage=10.0)
    low = MqttSection().reconnect_min
    assert max(fleet["first"]) - min(fleet["first"]) >= low / 4
    assert peak_share(fleet["first"], 0.01) <= 0.2


async def _client_loop(
    broker: MosquittoBroker,
    index: int,
    attempts: list[float],
    connected: list[float],
    stop: asyncio.Event,
) -> None:
    """One gateway's reconnect loop, shaped like Publisher.run: reset on connect, back off."""
    backoff = Backoff(0.2, 2.0)
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        attempts.append(loop.time())
        try:
            async with aiomqtt.Client(
                broker.host, broker.port, identifier=f"jitter-{index}", timeout=5
            ) as client:
                backoff.reset()
                connected.append(loop.time())
                async for _ in client.messages:
                    pass
        except aiomqtt.MqttError:
            pass
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(backoff.next()):
                await stop.wait()


async def test_real_fleet_reconnects_after_a_broker_restart(
    tmp_path: Path,
    broker: MosquittoBroker,
    chaos_report: ChaosReport,
    stopwatch: Stopwatch,
) -> None:
    """EDGE_CHAOS_GATEWAYS real clients lose one broker (restart, 1 s down): all come back; the
    spread of their retry and reconnect instants goes into the summary table."""
    stop = asyncio.Event()
    attempts: list[float] = []
    connected: list[float] = []
    tasks = [
        asyncio.create_task(_client_loop(broker, i, attempts, connected, stop))
        for i in range(GATEWAYS)
    ]
    try:
        async with asyncio.timeout(20):
            while len(connected) < GATEWAYS:
                await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        attempts_before = len(attempts)
        dropped_at = loop.time()
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(broker.start)
        async with asyncio.timeout(30):
            while len(connected) < 2 * GATEWAYS:
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    retries = [t - dropped_at for t in attempts[attempts_before:]]
    first_wave = sorted(retries)[:GATEWAYS]
    back = [t - dropped_at for t in connected[GATEWAYS:]]
    note = (
        f"first retries span {max(first_wave) - min(first_wave):.3f}s"
        f" (peak {peak_share(first_wave, 0.01):.0%} in 10 ms); reconnects span"
        f" {max(back) - min(back):.2f}s (peak {peak_share(back, 0.1):.0%} in 100 ms)"
    )
    chaos_report.add(
        ChaosRow(
            f"reconnect jitter, {GATEWAYS} clients",
            faults=1,
            at_risk=0,
            lost=0,
            new_id_duplicates=0,
            seconds=stopwatch.elapsed,
            note=note,
        )
    )
    assert len(back) >= GATEWAYS
    assert peak_share(back, 0.1) <= 0.5, note
