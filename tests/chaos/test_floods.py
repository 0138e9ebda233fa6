"""Device floods: one scanner spewing frames and line noise, an RFID reader and a Modbus device
answering with random bytes. The daemon's memory stays bounded and the other scanner keeps
getting its beeps and its events delivered."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.scanner import ScannerSimulator
from tests.chaos.conftest import ChaosReport, Stopwatch
from tests.chaos.workload import FEEDBACK, Worker, check_parity, source, wait_delivered
from tests.support import GatewayProcess, scanner_device, write_config

FLOOD_SECONDS = 6.0


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@contextlib.asynccontextmanager
async def noise_server(rng: random.Random) -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP device that answers every read with random bytes (and speaks first, too)."""
    sent = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                noise = rng.randbytes(rng.randrange(1, 300))
                writer.write(noise)
                sent[0] += len(noise)
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.02):
                        await reader.read(1024)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], sent
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await server.wait_closed()


async def flood(sim: ScannerSimulator, rng: random.Random, stop: asyncio.Event) -> int:
    """~10,000 frames/s of valid codes mixed with random bytes; returns the frames written."""
    frames = 0
    while not stop.is_set():
        if not sim.is_open:
            await asyncio.sleep(0.01)
            continue
        valid = "".join(f"F{frames + i:07d}\r" for i in range(500)).encode()
        noise = rng.randbytes(4000)
        with contextlib.suppress(RuntimeError):
            await sim.write_raw(valid + noise + b"\r" + b"Z" * 3000)
        frames += 502
        await asyncio.sleep(0.05)
    return frames


async def test_floods_keep_memory_bounded_and_other_devices_working(
    tmp_path: Path,
    broker: MosquittoBroker,
    central: CentralCollector,
    chaos_rng: random.Random,
    chaos_report: ChaosReport,
    stopwatch: Stopwatch,
) -> None:
    """A scanner flooding ~10k frames/s plus noise, an LLRP reader and a Modbus device spewing
    random bytes: RSS grows by less than 64 MiB, and a worker on another scanner gets a beep for
    at least 95% of scans, each of which reaches central."""
    async with (
        ScannerSimulator(tmp_path / "scan-flood") as flooder,
        ScannerSimulator(tmp_path / "scan-work") as quiet,
        noise_server(chaos_rng) as (llrp_port, llrp_sent),
        noise_server(chaos_rng) as (modbus_port, modbus_sent),
    ):
        cfg = write_config(
            tmp_path / "gateway.toml",
            mqtt_port=broker.port,
            state_dir=tmp_path / "state",
            devices=[
                scanner_device("flood", flooder.link, **FEEDBACK),
                scanner_device("work", quiet.link, **FEEDBACK),
            ],
        )
        with cfg.open("a") as extra:
            extra.write(
                f'[[devices]]\nid = "portal"\ndriver = "rfid-llrp"\nhost = "127.0.0.1"\n'
                f"port = {llrp_port}\nzones = {{ dock = {{ antennas = [1] }} }}\n\n"
                f'[[devices]]\nid = "belt"\ndriver = "modbus"\nhost = "127.0.0.1"\n'
                f"port = {modbus_port}\nunit = 1\ninterval = 0.05\ntimeout = 0.2\n"
                f'points = [{{ name = "speed", address = 0 }}]\n'
            )
        db = tmp_path / "state" / "buffer.db"
        daemon = GatewayProcess(cfg, tmp_path / "gateway.log")
        daemon.start()
        assert daemon.process is not None
        stop = asyncio.Event()
        worker = Worker(quiet, "W", patience=1.0, pause=0.02)
        try:
            await flooder.wait_opened(timeout=20)
            await quiet.wait_opened(timeout=20)
            await asyncio.sleep(1.0)
            baseline = rss_kib(daemon.process.pid)
            tasks = [
                asyncio.create_task(flood(flooder, chaos_rng, stop)),
                asyncio.create_task(worker.run(stop)),
            ]
            peak = baseline
            for _ in range(int(FLOOD_SECONDS / 0.25)):
                await asyncio.sleep(0.25)
                assert daemon.process.poll() is None, "the daemon died under the flood"
                peak = max(peak, rss_kib(daemon.process.pid))
            stop.set()
            flooded = (await asyncio.gather(*tasks))[0]
            delivered = await wait_delivered(central, db, timeout=60)
        finally:
            stop.set()
            if daemon.process.poll() is None:
                assert daemon.terminate() == 0
    parity = check_parity(db, central, [worker])
    acked_share = len(worker.acked) / max(1, len(worker.typed))
    flood_events = len(central.sources[source("flood")].ids)
    chaos_report.add(
        parity.row(
            "device floods",
            faults=3,
            seconds=stopwatch.elapsed,
            note=(
                f"{flooded} flood frames ({flood_events} stored), llrp noise {llrp_sent[0]} B,"
                f" modbus noise {modbus_sent[0]} B; RSS {baseline // 1024}->{peak // 1024} MiB;"
                f" worker beeped {acked_share:.0%}"
            ),
        )
    )
    assert delivered, "central never caught up with the buffer"
    assert peak - baseline < 64 * 1024, f"RSS grew {baseline} -> {peak} KiB"
    assert len(worker.typed) >= 20
    assert acked_share >= 0.95, (len(worker.acked), len(worker.typed))
    assert parity.clean, parity
