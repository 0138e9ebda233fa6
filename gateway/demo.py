"""``edge-gateway demo``: the whole loop on one machine, no hardware, no setup.

Simulated serial scanners (real ptys) type barcodes; a private Mosquitto carries the events; the
gateway buffers, publishes and beeps back; a simulated central system receives and checks them.
A live view shows what each part sees. Everything lives in a temporary directory that is
removed on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
import time
from pathlib import Path

import structlog
from rich.console import Group
from rich.live import Live
from rich.table import Table

from gateway.daemon import Gateway
from gateway.logging import configure_logging
from gateway.settings import load_settings
from simulators.barcodes import generate
from simulators.broker import BrokerUnavailableError, MosquittoBroker
from simulators.central import CentralCollector
from simulators.scanner import ScannerSimulator

DEMO_CONFIG = """\
[gateway]
id = "gw-demo"
site = "dc-demo"
state_dir = "{state_dir}"
shutdown_timeout = 5

[mqtt]
host = "127.0.0.1"
port = {port}
checkpoint_interval = 5

[logging]
level = "warning"
format = "console"
"""

DEVICE = """
[[devices]]
id = "dock-{n}-scanner"
driver = "barcode-serial"
port = "{port}"
confirm = "{confirm}"
framing = "cr"
feedback = "honeywell"
"""


async def _type_codes(scanner: ScannerSimulator, rate: float, typed: list[int], n: int) -> None:
    await scanner.wait_opened(timeout=30)
    codes = generate("mixed")
    for count in itertools.count(1):
        code, aim = next(codes)
        await scanner.type_code(code, aim=aim)
        typed[n] = count
        await asyncio.sleep(1.0 / rate)


def _view(  # noqa: PLR0917 - a render function of everything on screen
    gw: Gateway,
    central: CentralCollector,
    scanners: list[ScannerSimulator],
    typed: list[int],
    started: float,
    depth: int,
) -> Group:
    table = Table(title=f"edge-gateway demo  ({time.monotonic() - started:.0f}s, Ctrl-C to stop)")
    for column in ("device", "state", "typed", "good beeps", "central got", "missing"):
        table.add_column(column)
    for n, scanner in enumerate(scanners):
        device = f"dock-{n + 1}-scanner"
        state = gw.device_states.get(device, {}).get("state", "-")
        track = central.sources.get(f"/dc-demo/gw-demo/{device}")
        good = sum(1 for _t, data in scanner.feedback if data == b"\x1b7,")
        got = len(track.ids) if track else 0
        missing = len(track.missing()) if track else 0
        table.add_row(device, state, str(typed[n]), str(good), str(got), str(missing))
    latencies = sorted(gw.confirmations.latencies[-1000:])
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else 0.0
    summary = Table.grid(padding=(0, 2))
    summary.add_row(
        f"broker: {'connected' if gw.publisher.connected.is_set() else 'DOWN'}",
        f"buffer unsent: {depth}",
        f"scan->beep p99: {p99:.1f} ms",
        f"central duplicates: {sum(t.duplicates for t in central.sources.values())}",
    )
    return Group(table, summary)


async def run_demo(*, duration: float | None, rate: float, scanners: int) -> int:
    """Run until Ctrl-C or ``duration`` seconds; returns the exit code."""
    configure_logging("warning", "console")
    log = structlog.get_logger("demo")
    with tempfile.TemporaryDirectory(prefix="edge-gateway-demo-") as tmp:
        root = Path(tmp)
        broker = MosquittoBroker(root / "broker")
        try:
            broker.start()
        except BrokerUnavailableError as exc:
            log.error("demo_needs_mosquitto", error=str(exc))
            return 1
        sims = [ScannerSimulator(root / f"scanner{n}") for n in range(scanners)]
        config = DEMO_CONFIG.format(state_dir=root / "state", port=broker.port)
        for n, sim in enumerate(sims):
            await sim.start()
            confirm = "delivered" if n % 2 == 0 else "stored"
            config += DEVICE.format(n=n + 1, port=sim.link, confirm=confirm)
        (root / "gateway.toml").write_text(config)
        gateway = Gateway(load_settings(root / "gateway.toml"))
        central = CentralCollector(broker.host, broker.port)
        stop = asyncio.Event()
        typed = [0] * scanners
        tasks = [asyncio.create_task(central.run()), asyncio.create_task(gateway.run(stop))]
        await asyncio.sleep(0.5)
        tasks += [asyncio.create_task(_type_codes(s, rate, typed, n)) for n, s in enumerate(sims)]
        started = time.monotonic()
        try:
            with Live(refresh_per_second=4) as live:
                while duration is None or time.monotonic() - started < duration:
                    depth = (await gateway.buffer.stats()).unsent
                    live.update(_view(gateway, central, sims, typed, started, depth))
                    await asyncio.sleep(0.5)
        finally:
            for task in tasks[2:]:
                task.cancel()
            stop.set()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(15):
                    await tasks[1]
            tasks[0].cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sim in sims:
                await sim.close()
            broker.stop()
    return 0
