"""``status``, checkpoint and metrics figures with millions of rows held (issue 16).

Fills a buffer file with events written straight into the table (20 devices, nearly all sent
and kept for replay, a backlog pending, one ``accepted``-level device with events awaiting
central's verdict), has the buffer count them once (as the schema v4 migration does), then
times, at each size in ``--rows``:

* ``status_ms``: ``edge-gateway status --json``'s read (a read-only connection of its own,
  opened for the call, as the CLI does from another process);
* ``stats_ms``: ``Buffer.stats()``, what every checkpoint and metrics sample call;
* ``scan_ms``: the same figures counted from the events table (what all three did before
  schema v4), once, for comparison;
* ``write_cpu_us_per_event``: process CPU per event for append (group commit, 50 at a time)
  -> claim -> mark sent on that file, which is where keeping the counts costs.

Median of ``--repeat`` runs; wall and CPU time (the reads run on SQLite's thread, so process
CPU counts them). Prints one JSON object.

    .venv/bin/python -m bench.buffer_counts [--rows 200000,2000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import logs_to_stderr
from buffer import counts
from buffer.connection import run_in_transaction
from buffer.stats import read_stats, reader, scan_figures
from buffer.store import Buffer, NewEvent

DEVICES = [f"dev{i:02d}" for i in range(20)]
ACCEPTED = frozenset({"dev00"})
PAYLOAD = b'{"specversion":"1.0","data":{"code":"' + b"7" * 330 + b'"}}'


def fill(path: Path, upto: int) -> None:
    """Add events (rowid order) until the file holds ``upto`` rows, then recount once."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        held = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
        seqs = dict(conn.execute("SELECT device, last_seq FROM devices").fetchall())
        now = time.time()
        chunk = 100_000
        for start in range(held, upto, chunk):
            rows = []
            for n in range(start, min(start + chunk, upto)):
                device = DEVICES[n % len(DEVICES)]
                seq = seqs.get(device, 0) + 1
                seqs[device] = seq
                # Every 200th event still pending; dev00's newest ones await a verdict.
                state = 0 if n % 200 == 7 else (2 if device != "dev00" or n % 3 else 3)
                rows.append(
                    (os.urandom(16), device, seq, state, n % 5 == 4, now - 86400 + n / 1e4, now)
                )
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO events (id, device, seq, state, droppable, created, sent, payload)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(*r, PAYLOAD) for r in rows],
            )
            conn.executemany(
                "INSERT INTO devices (device, last_seq) VALUES (?, ?) ON CONFLICT (device)"
                " DO UPDATE SET last_seq = excluded.last_seq",
                list(seqs.items()),
            )
            conn.execute("COMMIT")
        run_in_transaction(conn, counts.rebuild, durable=True)
    finally:
        conn.close()


async def timed(fn: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, float]:
    """Median wall and process-CPU milliseconds of ``fn``."""
    walls, cpus = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        await fn()
        walls.append((time.perf_counter() - t0) * 1000)
        cpus.append((time.process_time() - c0) * 1000)
    return round(statistics.median(walls), 2), round(statistics.median(cpus), 2)


async def write_cost(buffer: Buffer, events: int) -> float:
    """Process CPU µs per event: 50 emitters appending, claims of 200 marked sent."""
    counter = 0

    def make(device: str) -> NewEvent:
        nonlocal counter
        counter += 1
        return NewEvent(
            f"w-{os.getpid()}-{time.time_ns()}-{counter}",
            device,
            "t",
            "t",
            False,
            lambda _seq: PAYLOAD,
        )

    async def producer(k: int) -> None:
        for _ in range(events // 50):
            await buffer.append(make(DEVICES[k % len(DEVICES)]))

    async def consumer() -> None:
        done = 0
        while done < events:
            claimed = await buffer.claim(200)
            if not claimed:
                await asyncio.sleep(0)
                continue
            await buffer.mark_sent(claimed)
            done += len(claimed)

    cpu0 = time.process_time()
    await asyncio.gather(consumer(), *(producer(k) for k in range(50)))
    return round((time.process_time() - cpu0) / events * 1e6, 2)


async def measure(path: Path, rows: int, repeat: int) -> dict[str, Any]:
    """Every figure at ``rows`` rows held."""
    status_ms = await timed(lambda: read_stats(path, awaiting_verdict=ACCEPTED), repeat)
    buffer = await Buffer.open(path, max_bytes=2**40, keep_unconfirmed=ACCEPTED)
    try:
        stats_ms = await timed(buffer.stats, repeat)
        stats = await buffer.stats()
        write = await write_cost(buffer, 20_000)
    finally:
        await buffer.close()
    async with reader(path) as conn:
        now = time.time()
        scan_ms = await timed(
            lambda: conn._execute(scan_figures, conn._conn, now, ACCEPTED),  # type: ignore[no-untyped-call]  # noqa: SLF001
            1,
        )
    return {
        "rows": rows,
        "status_wall_ms": status_ms[0],
        "status_cpu_ms": status_ms[1],
        "stats_wall_ms": stats_ms[0],
        "stats_cpu_ms": stats_ms[1],
        "scan_wall_ms": scan_ms[0],
        "scan_cpu_ms": scan_ms[1],
        "write_cpu_us_per_event": write,
        "pending": stats.unsent,
        "unconfirmed_dev00": stats.devices["dev00"].unconfirmed,
    }


async def main(sizes: list[int], repeat: int) -> None:
    """Grow one file through ``sizes`` and measure at each."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "buffer.db"
        await (await Buffer.open(path, max_bytes=2**40)).close()
        results = []
        for rows in sizes:
            started = time.perf_counter()
            await asyncio.to_thread(fill, path, rows)
            results.append(
                {
                    **await measure(path, rows, repeat),
                    "fill_s": round(time.perf_counter() - started, 1),
                }
            )
    print(
        json.dumps(
            {
                "benchmark": "buffer_counts",
                "sizes": results,
                "box": "2 shared cores: other agents' tests and mutation runs may load it",
                "targets": {"status_wall_ms": 50, "stats_wall_ms": 50},
            }
        )
    )


if __name__ == "__main__":
    logs_to_stderr()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", default="200000,2000000", help="sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main([int(r) for r in args.rows.split(",")], args.repeat))
