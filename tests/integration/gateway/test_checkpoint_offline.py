"""Found by the second review of issue 13 (fixed; the text says what went wrong before): while the broker is away, the checkpoint job scans the whole buffer every 0.25 s.

gateway/housekeeping.py ``checkpoint_tick``: when the checkpoint is due it calls
``publish_checkpoint``, which computes ``Buffer.stats()`` (a scan of the events table: ~1.7 s at a
million rows, docs) *before* learning that there is no session; it returns False, so
``_last_checkpoint`` is not updated and the next tick, 0.25 s later, is due again. A broker
outage, exactly when the backlog grows, keeps a core busy with table scans for nothing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from buffer.store import Buffer
from simulators.broker import free_port
from simulators.scanner import ScannerSimulator
from tests.integration.gateway.test_broker_refusals import scan
from tests.support import running_gateway, scanner_device, write_config

ROWS = 300_000


async def test_no_buffer_scans_while_the_broker_is_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    db = state / "buffer.db"
    buf = await Buffer.open(db, max_bytes=10**10)
    await buf.append(scan(0, "first"))
    await buf.close()
    with sqlite3.connect(db) as conn:
        now = time.time()
        conn.executemany(
            "INSERT INTO events (id, device, seq, state, created, sent, payload)"
            " VALUES (?, 'dock', ?, 2, ?, ?, ?)",
            ((f"id-{s}", s, now, now, b"y" * 300) for s in range(2, ROWS + 2)),
        )
        conn.execute("UPDATE devices SET last_seq = ? WHERE device = 'dock'", (ROWS + 1,))
    calls = 0
    real_stats = Buffer.stats

    async def counted(self: Buffer) -> object:
        nonlocal calls
        calls += 1
        return await real_stats(self)

    monkeypatch.setattr(Buffer, "stats", counted)
    async with ScannerSimulator(tmp_path / "scanner0") as sim:
        cfg = write_config(
            tmp_path / "gateway.toml",
            mqtt_port=free_port(),  # nobody listens: the broker is down
            state_dir=state,
            devices=[scanner_device("dock-1", sim.link)],
        )
        async with running_gateway(cfg):
            await asyncio.sleep(1.0)
            cpu0, calls0 = time.process_time(), calls
            await asyncio.sleep(5.0)
            cpu, scans = time.process_time() - cpu0, calls - calls0
    assert scans <= 1, (
        f"{scans} full buffer stats in 5 s with no broker ({cpu:.2f} s CPU in this process),"
        f" {ROWS} rows"
    )
