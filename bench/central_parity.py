"""``edge-central parity`` time over 100 devices holding 10,000,000 events between them.

Parity reads only the per-device range table, the devices and the checkpoints, never the
events themselves, so this bench fills those (100,000 seqs per device, 10 gaps each) and leaves
``events`` empty: the figure is the same with 10M rows there (the query does not touch them).
It times the CLI as cron would run it, process start included, ``--runs`` times each way
(``python -m central`` and the ``edge-central`` console script), and the report query alone.
``python_start_ms`` is the floor no import work can go below: ``python -c pass`` in the same venv.

    .venv/bin/python -m bench.central_parity [--runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench import logs_to_stderr
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


def timed(
    command: list[str], runs: int
) -> tuple[dict[str, float], subprocess.CompletedProcess[str]]:
    """Wall time of ``runs`` runs of a process: median, p95, min (ms); the last run's result."""
    samples = []
    done = None
    for _ in range(runs):
        t = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        samples.append((time.perf_counter() - t) * 1000)
    assert done is not None
    samples.sort()
    figures = {
        "median": round(statistics.median(samples), 1),
        "p95": round(samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))], 1),
        "min": round(samples[0], 1),
    }
    return figures, done


def main(runs: int) -> dict[str, Any]:
    logs_to_stderr()
    server = PostgresServer(durable=True)
    server.start()
    try:
        asyncio.run(fill(server.dsn))
        best, _, held = asyncio.run(query_ms(server.dsn))
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "c.toml"
            config.write_text(f'[central]\ninstance = "b"\n[database]\ndsn = "{server.dsn}"\n')
            args = ["parity", "--json", "--config", str(config)]
            script = Path(sys.executable).parent / "edge-central"
            module_ms, done = timed([sys.executable, "-m", "central", *args], runs)
            script_ms, _ = timed([str(script), *args], runs)
            start_ms, _ = timed([sys.executable, "-c", "pass"], runs)
        report = json.loads(done.stdout)
        return {
            "bench": "central_parity",
            "devices": len(report["devices"]),
            "held_events": held,
            "gaps": sum(d["missing_count"] for d in report["devices"]),
            "runs": runs,
            "report_query_ms": round(best, 1),
            "cli_ms_python_m_central": module_ms,
            "cli_ms_edge_central_script": script_ms,
            "python_start_ms": start_ms,
            "cli_exit": done.returncode,
            "target_ms": 100,
        }
    finally:
        server.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    print(json.dumps(main(parser.parse_args().runs)))
