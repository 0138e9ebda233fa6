"""``edge-central parity`` time over 100 devices holding 10,000,000 events between them.

Parity reads only the per-device range table, the devices and the checkpoints, never the
events themselves, so this bench fills those (100,000 seqs per device, 10 gaps each) and leaves
``events`` empty: the figure is the same with 10M rows there (the query does not touch them).
It times the CLI as cron would run it (process start included) and the report query alone.

    .venv/bin/python -m bench.central_parity
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from central.parity import parity_report
from central.schema import migrate
from simulators.postgres import PostgresServer

DEVICES, PER_DEVICE, GAPS = 100, 100_000, 10


async def fill(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    await migrate(conn)
    ranges, devices, bodies = [], [], {}
    for d in range(DEVICES):
        source = f"/site/gw{d // 10}/dev{d}"
        step = PER_DEVICE // GAPS
        ranges += [(source, g * step + 2, (g + 1) * step) for g in range(GAPS)]  # seq g*step+1 gone
        devices.append((source, f"edge/site/gw{d // 10}", f"dev{d}"))
        bodies.setdefault(f"edge/site/gw{d // 10}", {})[f"dev{d}"] = {
            "last_seq": PER_DEVICE,
            "last_sent_seq": PER_DEVICE,
        }
    await conn.executemany("INSERT INTO seq_ranges VALUES ($1, $2, $3)", ranges)
    await conn.executemany(
        "INSERT INTO devices (source, root, device) VALUES ($1, $2, $3)", devices
    )
    await conn.executemany(
        "INSERT INTO checkpoints (root, body) VALUES ($1, $2::jsonb)",
        [(root, json.dumps({"devices": figures})) for root, figures in bodies.items()],
    )
    await conn.close()


async def query_ms(dsn: str) -> tuple[float, int, int]:
    conn = await asyncpg.connect(dsn)
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        report = await parity_report(conn)
        samples.append((time.perf_counter() - t) * 1000)
    await conn.close()
    return min(samples), len(report), sum(r.held for r in report)


def main() -> dict[str, Any]:
    server = PostgresServer(durable=True)
    server.start()
    try:
        asyncio.run(fill(server.dsn))
        best, devices, held = asyncio.run(query_ms(server.dsn))
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "c.toml"
            config.write_text(f'[central]\ninstance = "b"\n[database]\ndsn = "{server.dsn}"\n')
            t = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "central", "parity", "--json", "--config", str(config)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            cli_ms = (time.perf_counter() - t) * 1000
        return {
            "bench": "central_parity",
            "devices": devices,
            "held_events": held,
            "gaps": DEVICES * GAPS,
            "report_query_ms": round(best, 1),
            "cli_ms_with_process_start": round(cli_ms, 1),
            "cli_exit": done.returncode,
            "target_ms": 100,
        }
    finally:
        server.cleanup()


if __name__ == "__main__":
    print(json.dumps(main()))
