"""PostgreSQL goes away under edge-central during traffic: a fast restart, a kill -9 of the
postmaster, and a kill -9 of the postmaster with edge-central killed too while it is down.

What must hold (issue 15): ingest pauses (nothing is confirmed that did not commit, nothing is
acknowledged to the broker that did not commit), resumes by itself when the database is back
(the same edge-central process, no restart), and nothing is lost. Replay is off, so the broker's
redelivery is the only way back for an event: an event PUBACKed before its commit by the
instance killed in the third outage would be missing from the ledger at the end.

"Confirmed during an outage" is checked exactly: no commit can happen while the postmaster is
down, so every event the gateway saw confirmed between the moment it was down (stopped or
killed, and waited for) and its start must be a row the ledger received before that moment (a
verdict for a commit just before may still be on its way: that one is fine).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
import time
from pathlib import Path

import asyncpg
import pytest

from buffer.event_ids import id_text
from buffer.schema import STATE_CONFIRMED
from simulators.broker import MosquittoBroker
from simulators.postgres import PostgresServer
from simulators.scanner import ScannerSimulator
from tests.integration.central.conftest import CentralProcess, write_central_config
from tests.integration.central.helpers import gateway_config
from tests.support import device_figures, running_gateway, wait_until

from .conftest import ChaosReport, ChaosRow, Stopwatch

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

OUTAGE_S = 1.0
"""How long the database stays down each time: long enough for several batches to fail."""


def _confirmed(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(db)) as sq:
        rows = sq.execute("SELECT id FROM events WHERE state = ?", (STATE_CONFIRMED,))
        return {id_text(i) for (i,) in rows}


async def _type(scanner: ScannerSimulator, stop: asyncio.Event, rng: random.Random) -> int:
    """Scans until ``stop``, ~100/s: traffic through every outage."""
    typed = 0
    while not stop.is_set():
        await scanner.type_code(f"P-{typed}", aim="")
        typed += 1
        await asyncio.sleep(rng.uniform(0.005, 0.015))
    return typed


async def test_postgres_restart_and_kill9_pause_ingest_and_lose_nothing(
    tmp_path: Path,
    broker: MosquittoBroker,
    private_postgres: PostgresServer,
    chaos_rng: random.Random,
    chaos_report: ChaosReport,
    stopwatch: Stopwatch,
) -> None:
    server = private_postgres
    config = write_central_config(
        tmp_path / "central.toml",
        broker=broker,
        dsn=server.dsn,
        replay={"enabled": False},
        database={"retry_max": 0.3},
    )
    central = CentralProcess(config, tmp_path / "central.log")
    central.start()
    db = tmp_path / "state" / "buffer.db"
    windows: list[tuple[str, float, set[str]]] = []  # (fault, down since, confirmed meanwhile)
    try:
        await wait_until(lambda: central.logged("mqtt_connected"), timeout=30)
        async with ScannerSimulator(tmp_path / "scanner0") as scanner:
            gw_config = gateway_config(tmp_path, broker, scanner, confirm="accepted")
            async with running_gateway(gw_config) as gw:
                await scanner.wait_opened(timeout=10)
                stop_typing = asyncio.Event()
                typer = asyncio.create_task(_type(scanner, stop_typing, chaos_rng))
                survivor = central.process
                for fault in ("restart-fast", "kill9-postmaster", "kill9-postmaster-and-central"):
                    await asyncio.sleep(chaos_rng.uniform(0.8, 1.5))  # traffic flows
                    if fault == "restart-fast":
                        # What `pg_ctl restart -m fast` does: a fast shutdown, then a start.
                        await asyncio.to_thread(server.stop, "fast")
                    else:
                        await asyncio.to_thread(server.kill)  # returns once no backend is left
                    down, before = time.time(), _confirmed(db)
                    await asyncio.sleep(OUTAGE_S)
                    if fault == "kill9-postmaster-and-central":
                        central.kill9()  # holding what it received meanwhile, unacknowledged
                    windows.append((fault, down, _confirmed(db) - before))
                    await asyncio.to_thread(server.start)
                    if fault == "kill9-postmaster-and-central":
                        central.start()  # the same client id: its session is redelivered
                    else:
                        assert central.process is survivor and survivor.poll() is None
                stop_typing.set()
                typed = await typer
                async with asyncio.timeout(60):
                    while (await device_figures(gw, "dock-1")).last_seq < typed:
                        await asyncio.sleep(0.05)
                conn = await asyncpg.connect(server.dsn)
                try:
                    # Bounded, then the assertions say what is missing (not a bare timeout).
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline:
                        if await conn.fetchval("SELECT count(*) FROM events") >= typed:
                            break
                        await asyncio.sleep(0.1)
                    complete_s = stopwatch.elapsed
                    await asyncio.sleep(0.5)  # anything extra would have arrived by now
                    rows = await conn.fetch(
                        "SELECT seq, id, status, extract(epoch FROM received)::float8 AS received"
                        " FROM events ORDER BY seq"
                    )
                finally:
                    await conn.close()
        seqs = [r["seq"] for r in rows]
        lost = len(set(range(1, typed + 1)) - set(seqs))
        chaos_report.add(
            ChaosRow(
                scenario="central: postgres restart/kill -9",
                faults=3,
                at_risk=typed,
                lost=lost,
                new_id_duplicates=len(seqs) - len(set(seqs)),
                seconds=complete_s,
                note=f"confirmed during outages: {sum(len(w[2]) for w in windows)}",
            )
        )
        assert seqs == list(range(1, typed + 1)), f"lost {lost} of {typed}"
        # The writer met the outages during traffic (the pause), and retried until it got through.
        assert central.logged("batch_failed")
        received = {r["id"]: r["received"] for r in rows}
        for fault, down, confirmed_during in windows:
            late = {i: received.get(i) for i in confirmed_during if received.get(i, down) >= down}
            assert not late, f"{fault}: confirmed while PostgreSQL was down ({down}): {late}"
        accepted = {r["id"] for r in rows if r["status"] == "accepted"}
        assert _confirmed(db) <= accepted
    finally:
        central.terminate()
