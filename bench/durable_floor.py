"""The floor of a durable pipeline on our dependencies: what it costs with none of our Python.

``bench.throughput``'s pipeline is measured against issue 16's targets (>= 25,000 events/s at <=
30 µs of CPU per event). This bench runs the least any gateway on the same parts can do for the
same guarantee, in the same shape, so the targets can be read against it:

- 50 producers, each awaiting its own event's commit (as the pipeline's bench);
- a group commit of whatever queued during the previous one: one ``executemany`` INSERT into
  the buffer's own ``events`` table (its indexes included) and a ``COMMIT`` with
  ``synchronous=FULL`` in WAL mode, on one thread of its own (one round trip per transaction);
- every committed event published at once from memory at QoS 1 through the same client
  (gateway/mqtt_link.py, gmqtt), within the broker's window (no claim transaction at all: the
  rows go in already in flight);
- the PUBACKs gathered while the previous mark ran, marked sent in one ``synchronous=NORMAL``
  transaction.

Left out, and what they are for in the gateway: ids, capture times and the CloudEvent render
(a constant payload here), the kept counts, the sequence numbers' bookkeeping, feedback, the
claim order across restarts, releases, holds, the size cap, metrics and logs. So this is a
floor, not a design: it is not durable across a restart's replay, it only measures.

    .venv/bin/python -m bench.durable_floor [--events 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from bench import BARE_PAYLOAD, BARE_TOPIC, BARE_WINDOW, logs_to_stderr, private_broker
from bench.quick import PRODUCERS
from buffer.store import Buffer
from gateway.mqtt_link import MqttLink
from gateway.settings import MqttSection

if TYPE_CHECKING:
    from collections.abc import Callable

    from simulators.broker import MosquittoBroker

_INSERT = (
    "INSERT INTO events (rowid, id, device, seq, state, droppable, created, payload)"
    " VALUES (?, ?, ?, ?, 1, 0, ?, ?)"
)


async def durable_floor(
    root: Path, broker: MosquittoBroker, events: int, producers: int = PRODUCERS
) -> dict[str, float]:
    """Run the floor pipeline for ``events`` events; events/s and CPU per event, both threads."""
    path = root / "floor.db"
    await (await Buffer.open(path, max_bytes=2**32)).close()  # the buffer's schema, empty
    sqlite = ThreadPoolExecutor(max_workers=1, thread_name_prefix="floor-sqlite")
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    loop = asyncio.get_running_loop()

    def on_thread(work: Callable[[list[int]], None], rowids: list[int]) -> asyncio.Future[None]:
        """One transaction: one round trip to the SQLite thread."""
        return loop.run_in_executor(sqlite, work, rowids)

    await loop.run_in_executor(sqlite, conn.execute, "PRAGMA journal_mode=WAL")
    queued: deque[tuple[int, asyncio.Future[None]]] = deque()
    outgoing: deque[int] = deque()
    acked: list[int] = []
    wake_writer = asyncio.Event()
    wake_marker = asyncio.Event()
    all_sent = asyncio.Event()
    next_rowid = 0
    sent_total = 0
    in_flight: dict[int, int] = {}  # packet id -> rowid

    async def producer(count: int) -> None:
        nonlocal next_rowid
        for _ in range(count):
            next_rowid += 1
            future = loop.create_future()
            queued.append((next_rowid, future))
            wake_writer.set()
            await future

    def commit(rowids: list[int]) -> None:
        now = time.time()
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            _INSERT,
            [(r, r.to_bytes(16, "big"), "dev0", r, now, BARE_PAYLOAD) for r in rowids],
        )
        conn.execute("COMMIT")

    def mark(rowids: list[int]) -> None:
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        # One statement: the PUBACKs of one mark's wait, far below SQLite's 32,766 variables.
        marks = ",".join("?" * len(rowids))
        conn.execute(f"UPDATE events SET state = 2 WHERE rowid IN ({marks})", rowids)
        conn.execute("COMMIT")

    def publish() -> None:
        with link.batch():
            while outgoing and len(in_flight) < window:
                rowid = outgoing.popleft()
                in_flight[link.send(BARE_TOPIC, BARE_PAYLOAD)] = rowid

    def on_ack(mid: int) -> None:
        acked.append(in_flight.pop(mid))
        wake_marker.set()
        publish()

    async def writer() -> None:
        while True:
            await wake_writer.wait()
            wake_writer.clear()
            batch = list(queued)
            queued.clear()
            await on_thread(commit, [rowid for rowid, _ in batch])
            for rowid, future in batch:
                future.set_result(None)
                outgoing.append(rowid)
            publish()

    async def marker() -> None:
        nonlocal sent_total
        while sent_total < done:
            await wake_marker.wait()
            wake_marker.clear()
            batch = acked[:]
            acked.clear()
            await on_thread(mark, batch)
            sent_total += len(batch)
        all_sent.set()

    link = MqttLink(
        MqttSection(host=broker.host, port=broker.port, max_inflight=BARE_WINDOW),
        "floor",
        on_ack=on_ack,
    )
    await link.connect()
    window = min(BARE_WINDOW, link.send_quota)
    done = events // producers * producers
    tasks = [asyncio.create_task(writer()), asyncio.create_task(marker())]
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(producer(events // producers) for _ in range(producers)))
        await asyncio.wait_for(all_sent.wait(), 300)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await link.close()
        await loop.run_in_executor(sqlite, conn.close)
        sqlite.shutdown()
    return {
        "events": done,
        "end_to_end_per_s": round(done / wall),
        "cpu_s_per_1k_events": round(cpu / done * 1000, 4),
    }


async def main(events: int) -> None:
    """One run against a private broker; one JSON object."""
    with private_broker() as (root, broker):
        result = await durable_floor(root, broker, events)
    print(json.dumps({"benchmark": "durable_floor", "producers": PRODUCERS, **result}))


if __name__ == "__main__":
    logs_to_stderr()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50000)
    args = parser.parse_args()
    asyncio.run(main(args.events))
