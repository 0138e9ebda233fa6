"""A running gateway when its buffer file misbehaves: a lock held by another process while it
publishes, and a disk that really runs out of pages. The daemon must carry on, count the fault,
and deliver every stored event once the store works again (issue 13, defect 4)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

from structlog.testing import capture_logs

from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.scanner import ScannerSimulator
from tests.chaos.workload import BAD, FEEDBACK, GOOD
from tests.support import limit_pages, page_count, running_gateway, scanner_device, write_config

LOCK_HOLDER = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("ROLLBACK")
    conn.close()
    """
)


@contextlib.asynccontextmanager
async def exclusive_lock(db: Path, seconds: float) -> AsyncIterator[subprocess.Popen[str]]:
    """Another process (a technician's sqlite3 shell) holds an EXCLUSIVE lock for ``seconds``."""
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(db), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert (await asyncio.to_thread(holder.stdout.readline)).strip() == "locked"
        yield holder
    finally:
        await asyncio.to_thread(holder.wait, seconds + 10)


async def scan(sim: ScannerSimulator, code: str, timeout: float = 15) -> bytes:
    """Type one code and return the feedback it got (GOOD or BAD)."""
    seen = len(sim.feedback_bytes())
    await sim.type_code(code, aim="")
    got = await sim.wait_feedback(lambda b: len(b) > seen, timeout=timeout)
    return got[seen:]


async def test_locked_buffer_while_publishing_is_survived_counted_and_delivered(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector
) -> None:
    """A second process holds the buffer EXCLUSIVE while the publisher claims (7 s, longer
    than the 5 s busy timeout): the daemon keeps running, counts the store error, and every
    stored scan reaches central once the lock is gone."""
    async with ScannerSimulator(tmp_path / "scan") as sim:
        cfg = write_config(
            tmp_path / "gateway.toml",
            mqtt_port=broker.port,
            state_dir=tmp_path / "state",
            devices=[scanner_device("dock", sim.link, **FEEDBACK)],
        )
        db = tmp_path / "state" / "buffer.db"
        with capture_logs() as logs:
            async with running_gateway(cfg) as gw:
                await sim.wait_opened(timeout=10)
                for n in range(10):
                    assert await scan(sim, f"BEFORE{n:03d}") == GOOD
                assert await central.wait_for(10, timeout=10)
                broker.stop()
                for n in range(20):  # stored, pending: the broker is away
                    assert await scan(sim, f"HELD{n:03d}") == GOOD
                async with exclusive_lock(db, 7.0):
                    broker.start()  # the publisher reconnects and claims into the lock
                    await asyncio.sleep(6.5)  # the claim fails after the 5 s busy timeout
                assert await central.wait_for(30, timeout=20), "held scans delivered"
                assert await scan(sim, "AFTER") == GOOD
                assert await central.wait_for(31, timeout=10)
                assert gw.publisher.store_errors >= 1
    events = [e["event"] for e in logs]
    assert "publisher_store_error" in events
    track = central.sources["/site-test/gw-test/dock"]
    assert track.missing() == [] and track.highest == 31


async def test_disk_full_refuses_scans_then_everything_resumes(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector
) -> None:
    """The buffer really runs out of pages (``max_page_count`` on the daemon's own connection)
    with a backlog waiting for the broker: scans get bad feedback while full, publishing the
    backlog (marking rows sent grows them) meets the full file, the daemon stays up, and once
    room returns scans are accepted again and every stored one is delivered."""
    async with ScannerSimulator(tmp_path / "scan") as sim:
        cfg = write_config(
            tmp_path / "gateway.toml",
            mqtt_port=broker.port,
            state_dir=tmp_path / "state",
            devices=[scanner_device("dock", sim.link, max_frame=8192, **FEEDBACK)],
        )
        broker.stop()
        with capture_logs() as logs:
            async with running_gateway(cfg) as gw:
                await sim.wait_opened(timeout=10)
                # Codes of varied length pack pages unevenly: marking some full page's rows
                # sent then needs a new page, which the full file refuses.
                codes = "".join(f"SMALL{n:04d}{'x' * ((n * 7) % 61)}\r" for n in range(300))
                await sim.write_raw(codes.encode())
                async with asyncio.timeout(15):
                    while gw.pipeline.stored["dock", "warehouse.barcode.scanned.v1"] < 300:
                        await asyncio.sleep(0.05)
                await limit_pages(gw.buffer, await page_count(gw.buffer) + 20)
                accepted, refused = 0, 0
                for n in range(300):
                    fed = await scan(sim, f"FULL{n:04d}" + "x" * 3000)
                    if fed.startswith(BAD):
                        refused += 1
                        if refused >= 3:
                            break
                    else:
                        assert fed.startswith(GOOD)
                        accepted += 1
                assert refused == 3 and accepted > 0, (accepted, refused)
                broker.start()  # the backlog is published into the full file
                await asyncio.sleep(4)
                # Still answering. Usually still refused; pages the drain freed may take it.
                fed = await scan(sim, "STILLFULL" + "x" * 3000)
                assert fed in (GOOD, BAD)
                accepted += fed == GOOD
                await limit_pages(gw.buffer, None)  # room came back
                assert await scan(sim, "ROOM" + "x" * 3000) == GOOD
                assert await central.wait_for(300 + accepted + 1, timeout=30)
                async with asyncio.timeout(10):
                    while (await gw.buffer.stats()).unsent:
                        await asyncio.sleep(0.05)
                store_errors = gw.publisher.store_errors
    track = central.sources["/site-test/gw-test/dock"]
    assert track.missing() == [] and track.highest == 300 + accepted + 1
    assert store_errors >= 1, "publishing met the full file"
    assert any(e["event"] == "publisher_store_error" for e in logs)
