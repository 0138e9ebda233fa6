"""Quick figures for the foundation: durable end-to-end events/s, and scan -> feedback latency.

Prints one JSON object. Not the full benchmark suite (that is its own issue): a fixed-size run on
real parts (private Mosquitto, SQLite file with synchronous=FULL, a pty scanner).

    .venv/bin/python -m bench.quick [--events 20000] [--scans 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from pathlib import Path

from bench import logs_to_stderr, private_broker
from bench.confirm_latency import latency
from buffer.store import Buffer
from drivers.base import DeviceConfig, DeviceEvent, EventFeedback, Outcome
from gateway.confirmations import Confirmations
from gateway.feedback_policy import FeedbackPolicy
from gateway.pipeline import Pipeline
from gateway.publisher import Publisher
from gateway.settings import MqttSection
from gateway.topics import Topics
from simulators.broker import MosquittoBroker

PRODUCERS = 50
"""Concurrent emitters, each awaiting its own event's commit as a driver does: 50 busy devices.
Group commit batches what arrives during a commit, so this also bounds the batch size."""


async def throughput(
    root: Path, broker: MosquittoBroker, events: int, producers: int = PRODUCERS
) -> dict[str, float]:
    """Emit -> group commit -> QoS 1 publish -> PUBACK -> marked sent, for ``events`` events."""
    buffer = await Buffer.open(root / "tp.db", max_bytes=2**32)

    def no_feedback(_device: str, _outcome: Outcome) -> None:
        """A device with nothing to send, like a keyboard-wedge scanner."""

    confirmations = Confirmations(no_feedback)
    pipeline = Pipeline(buffer, confirmations, site="bench", gateway_id="gw")
    sent = 0
    done = asyncio.Event()

    def delivered(batch: object) -> None:
        nonlocal sent
        sent += len(batch)  # type: ignore[arg-type]
        if sent >= events:
            done.set()

    mqtt = MqttSection(host=broker.host, port=broker.port, max_inflight=200)
    publisher = Publisher(
        mqtt, buffer, Topics("edge/bench/gw"), client_id="bench", on_delivered=delivered
    )
    pub_task = asyncio.create_task(publisher.run())
    await publisher.connected.wait()
    devices = [DeviceConfig(id=f"dev{i}", driver="bench") for i in range(10)]
    kinds = {"warehouse.barcode.scanned.v1": EventFeedback.CONFIRM}
    emitters = [pipeline.emitter(d, FeedbackPolicy(d.id, "stored", 3.0, kinds)) for d in devices]
    cpu0, t0 = time.process_time(), time.perf_counter()

    async def producer(n: int) -> None:
        emit = emitters[n % len(emitters)]
        for i in range(events // producers):
            await emit(DeviceEvent("warehouse.barcode.scanned.v1", {"code": f"{n:02d}{i:08d}"}))

    await asyncio.gather(*(producer(n) for n in range(producers)))
    stored_s = time.perf_counter() - t0
    await asyncio.wait_for(done.wait(), 300)
    # Delivered is told at the PUBACK; the run ends with the last sent mark, as it did when
    # the publisher told delivered only after it.
    while await buffer.unsent_count():  # noqa: ASYNC110 - the buffer has no "all sent" event
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    publisher.stop()
    await pub_task
    await buffer.close()
    return {
        "events": events,
        "stored_per_s": round(events / stored_s),
        "end_to_end_per_s": round(events / elapsed),
        "cpu_s_per_1k_events": round(cpu / events * 1000, 4),
        "commits": buffer.commits,
    }


async def main(events: int, scans: int) -> None:
    """Run both measurements against one private broker."""
    with private_broker() as (root, broker):
        result = {
            "throughput": await throughput(root, broker, events),
            "latency_stored": await latency(root, broker, scans, "stored", load=0),
            "latency_delivered": await latency(root, broker, scans, "delivered", load=0),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    logs_to_stderr()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--scans", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.scans))
