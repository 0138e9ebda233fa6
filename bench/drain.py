"""Drain a big backlog while live events keep coming (issue 8: >= 15k/s, RSS <= 80 MB, p99 50 ms).

Fills the buffer with ``--backlog`` events while the broker is down, starts the publisher, and
keeps storing ``--live`` events/s on another device meanwhile. Reports the drain rate, time to
empty, RSS at start/peak/end, and the live events' commit -> PUBACK latency during the drain.
Prints one JSON object.

    .venv/bin/python -m bench.drain [--backlog 1000000] [--live 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

from bench import logs_to_stderr
from bench.storage import scan
from buffer.rows import OutgoingEvent
from buffer.store import Buffer
from gateway.publisher import Publisher
from gateway.settings import MqttSection
from gateway.topics import Topics
from simulators.broker import MosquittoBroker


def rss_mb() -> float:
    """Current resident set size of this process."""
    with Path("/proc/self/statm").open() as statm:
        pages = int(statm.read().split()[1])
    return round(pages * resource.getpagesize() / 2**20, 1)


async def live_ingest(
    buffer: Buffer, rate: float, stop: asyncio.Event, times: dict[str, float]
) -> None:
    """Store ``rate`` events/s on a live device, remembering when each was committed."""
    n, started = 0, time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - started) * rate)
        for _ in range(n, due):
            stored = await buffer.append(scan("live", n))
            times[stored.id] = time.monotonic()
            n += 1
        await asyncio.sleep(0.005)


async def main(backlog: int, live: float) -> None:
    """Fill, drain, measure."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        buffer = await Buffer.open(root / "buffer.db", max_bytes=2**35)
        for start in range(0, backlog, 2000):
            await asyncio.gather(
                *(
                    buffer.append(scan(f"dock-{i % 8}", i))
                    for i in range(start, min(backlog, start + 2000))
                )
            )
        backlog_end = await buffer.last_rowid()
        broker = MosquittoBroker(root / "broker")
        broker.start()
        live_times: dict[str, float] = {}
        latencies: list[float] = []

        def delivered(batch: list[OutgoingEvent]) -> None:
            now = time.monotonic()
            latencies.extend(now - live_times.pop(e.id) for e in batch if e.id in live_times)

        mqtt = MqttSection(host=broker.host, port=broker.port, max_inflight=200)
        publisher = Publisher(
            mqtt, buffer, Topics("edge/bench/gw"), client_id="drain", on_delivered=delivered
        )
        stop = asyncio.Event()
        rss = {"start": rss_mb(), "peak": rss_mb()}
        started = time.monotonic()
        tasks = [
            asyncio.create_task(publisher.run()),
            asyncio.create_task(live_ingest(buffer, live, stop, live_times)),
        ]
        try:
            # Live events keep arriving, so "empty" means: nothing of the backlog left unsent.
            while await buffer.unsent_count(backlog_end, at_most=1):
                rss["peak"] = max(rss["peak"], rss_mb())
                await asyncio.sleep(1.0)
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            publisher.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            rss["end"] = rss_mb()
            broker.stop()
            sent = buffer.transitions["sent"]
            await buffer.close()
    latencies.sort()
    print(
        json.dumps(
            {
                "benchmark": "drain",
                "backlog": backlog,
                "live_per_s": live,
                "events_sent": sent,
                "live_sent": sent - backlog,
                "drain_per_s": round(sent / elapsed),
                "time_to_empty_s": round(elapsed, 1),
                "rss_mb": rss,
                "live_latency_ms": {
                    "count": len(latencies),
                    "p50": round(statistics.median(latencies) * 1000, 1) if latencies else None,
                    "p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1)
                    if latencies
                    else None,
                },
                "targets": {"drain_per_s": 15000, "rss_peak_mb": 80, "live_p99_ms": 50},
            }
        )
    )


if __name__ == "__main__":
    logs_to_stderr()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument("--live", type=float, default=1000.0)
    args = parser.parse_args()
    asyncio.run(main(args.backlog, args.live))
