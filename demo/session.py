"""``edge-gateway demo``: the whole loop on one machine, no hardware, no setup.

Simulated serial scanners (real ptys) type barcodes, an LLRP reader sees pallets pass a dock
portal, a Modbus conveyor runs and jams now and then; a private Mosquitto carries the events; the
gateway buffers, publishes and gives feedback; the real central ingest (``edge-central``'s
code, demo/ledger.py) commits them into a private PostgreSQL ledger and confirms them
after the commit. The scanners cycle through the confirmation levels (``accepted``,
``delivered``, ``stored``) and the ledger's item-master rule rejects ~5 % of scans as unknown
SKUs, so the ``accepted`` scanner also gets bad-read feedback. Stop the broker (key ``b`` on a
terminal, or ``--outage-every``) to watch events pile up in the buffer and drain, and the
ledger's parity come back, with nothing lost. The drivers' own sample configs are used, pointed
at the simulators, so the demo also proves the samples work. Everything lives in temporary
directories that are removed on exit; the broker and the database stop with the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import sys
import tempfile
import termios
import time
import tty
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import structlog
from rich.live import Live

from buffer.store import BufferClosedError
from demo.ledger import DemoCentral
from demo.view import DemoState, progress_line, render, take_frame
from gateway.daemon import Gateway
from gateway.early_stop import STOP_SIGNALS, EarlyStop
from gateway.logging import configure_logging
from gateway.settings import load_settings
from simulators.barcodes import generate
from simulators.broker import BrokerUnavailableError, MosquittoBroker, free_port
from simulators.conveyor import ConveyorSimulator
from simulators.llrp_reader import LlrpReaderSimulator
from simulators.postgres import PostgresServer
from simulators.scanner import ScannerSimulator

GATEWAY = """\
[gateway]
id = "gw-demo"
site = "dc-demo"
state_dir = "{state_dir}"
shutdown_timeout = 5

[mqtt]
host = "127.0.0.1"
port = {port}
checkpoint_interval = 5
reconnect_min = 0.2
reconnect_max = 2

[logging]
level = "error"
format = "console"
"""

SCANNER = """
[[devices]]
id = "dock-{n}-scanner"
driver = "barcode-serial"
port = "{port}"
confirm = "{confirm}"
confirm_timeout = 2
framing = "cr"
feedback = "honeywell"
feedback_pending = "P"
"""


CONFIRM_LEVELS = ("accepted", "delivered", "stored")
"""Scanner n gets level n (cycling), so the default three scanners show all three."""


def _sample(driver_dir: str, host_line: str, port: int) -> str:
    """A driver's shipped sample config, pointed at a local simulator."""
    text = resources.files("drivers").joinpath(f"{driver_dir}/sample.toml").read_text()
    return "\n" + text.replace(host_line, f'host = "127.0.0.1"\nport = {port}', 1)


class Broker:
    """The demo's private Mosquitto, stoppable for outages.

    Mosquitto, not an embedded broker: the central ingest needs MQTT 5 shared subscriptions
    and persistent sessions, as it does on a site.
    """

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self._mosquitto = MosquittoBroker(root / "broker", self.port)
        self.up = False

    async def start(self) -> None:
        """Start (or restart) the broker on its fixed port."""
        self._mosquitto.start()
        self.up = True

    async def stop(self) -> None:
        """Stop it: the gateway must keep everything in its buffer meanwhile."""
        self._mosquitto.stop()
        self.up = False

    async def toggle(self) -> None:
        """Key ``b``: an outage, or the end of one."""
        await (self.stop() if self.up else self.start())


async def _scan(scanner: ScannerSimulator, rate: float, state: DemoState, name: str) -> None:
    await scanner.wait_opened(timeout=30)
    for code, aim in generate("mixed"):
        await state.central.know(code)  # the item master, before the scan that needs it
        await scanner.type_code(code, aim=aim)
        state.typed[name] = state.typed.get(name, 0) + 1
        await asyncio.sleep(random.expovariate(rate))


async def _pallets(reader: LlrpReaderSimulator) -> None:
    for n in itertools.count():
        epcs = [f"30340242201d8840{n % 65536:04x}{i:04x}" for i in range(12)]
        reader.population.pallet(epcs, reader.now(), 2.0, reads_per_s=15, stagger_s=0.05)
        await asyncio.sleep(12.0)


async def _jams(conveyor: ConveyorSimulator) -> None:
    while True:
        await asyncio.sleep(15.0)
        conveyor.model.set_fault("jam", True)
        await asyncio.sleep(4.0)
        conveyor.model.set_fault("jam", False)


async def _outages(broker: Broker, every: float, length: float) -> None:
    while True:
        await asyncio.sleep(every)
        await broker.stop()
        await asyncio.sleep(length)
        await broker.start()


@contextlib.contextmanager
def _keys(on_key: dict[str, asyncio.Event]) -> Iterator[None]:
    """Single key presses on a terminal (cbreak mode), restored on exit."""
    if not sys.stdin.isatty():
        yield None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    loop = asyncio.get_running_loop()

    def read() -> None:
        key = sys.stdin.read(1).lower()
        if key in on_key:
            on_key[key].set()

    loop.add_reader(fd, read)
    try:
        yield None
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _remove_handlers(loop: asyncio.AbstractEventLoop, early_stop: EarlyStop) -> None:
    """Give the signals back to ``early_stop`` (not to the defaults) for the cleanup."""
    for sig in STOP_SIGNALS:
        loop.remove_signal_handler(sig)
    early_stop.install()


def _write_config(
    root: Path, broker_port: int, sims: list[ScannerSimulator], reader_port: int, modbus_port: int
) -> Path:
    config = GATEWAY.format(state_dir=root / "state", port=broker_port)
    for n, sim in enumerate(sims):
        confirm = CONFIRM_LEVELS[n % len(CONFIRM_LEVELS)]
        config += SCANNER.format(n=n + 1, port=sim.link, confirm=confirm)
    config += _sample("rfid_llrp", 'host = "10.20.0.31"', reader_port)
    config += _sample("modbus", 'host = "10.20.0.40"', modbus_port)
    path = root / "gateway.toml"
    path.write_text(config)
    return path


PROGRESS_EVERY = 2.0
"""With stdout not a terminal (a pipe, a log, CI), a plain progress line this often: the live
view is only drawn once there, at the end."""


async def _show(
    state: DemoState,
    keys: dict[str, asyncio.Event],
    broker: Broker,
    duration: float | None,
    gateway: asyncio.Task[None],
) -> None:
    """The live view, until ``q``, ``duration``, or the gateway's end (its buffer is closed)."""
    plain = not sys.stdout.isatty()
    next_line = time.monotonic() + PROGRESS_EVERY
    with _keys(keys), Live(refresh_per_second=4, screen=False) as live:
        while duration is None or time.monotonic() - state.started < duration:
            if keys["q"].is_set() or gateway.done():
                break
            if keys["b"].is_set():
                keys["b"].clear()
                await broker.toggle()
            try:
                frame = await take_frame(state)
            except BufferClosedError:  # the gateway ended and is closing its buffer
                break
            live.update(render(state, frame))
            if plain and time.monotonic() >= next_line:
                next_line += PROGRESS_EVERY
                # soft_wrap: one line per report in a log, however long (a pipe is 80 columns)
                live.console.print(progress_line(state, frame), soft_wrap=True)
            await asyncio.sleep(0.25)


async def _start_simulators(
    stack: contextlib.AsyncExitStack, root: Path, scanners: int, central: DemoCentral
) -> tuple[LlrpReaderSimulator, ConveyorSimulator, list[ScannerSimulator]]:
    """The simulated devices, while PostgreSQL starts in a thread; then the central ingest."""
    database = asyncio.create_task(central.start_database())
    try:
        reader = await stack.enter_async_context(LlrpReaderSimulator())
        conveyor = await stack.enter_async_context(ConveyorSimulator(tcp_port=0))
        sims = [ScannerSimulator(root / f"scanner{n}") for n in range(scanners)]
        for sim in sims:
            await stack.enter_async_context(sim)
        await database
    finally:
        if not database.done():  # a simulator failed: central.stop() removes the database
            database.cancel()
            await asyncio.gather(database, return_exceptions=True)
    await central.start()
    return reader, conveyor, sims


async def run_demo(
    *,
    duration: float | None,
    rate: float,
    scanners: int,
    outage_every: float = 0.0,
    outage_for: float = 8.0,
    database: PostgresServer,
    early_stop: EarlyStop | None = None,
) -> int:
    """Run until Ctrl-C, ``q`` or ``duration`` seconds; returns the exit code.

    ``database`` is a private PostgreSQL, not started yet (its ``initdb`` may still run): the
    demo starts it, and removes it when it ends. ``early_stop`` holds the signals until the
    loop takes them over: one that came meanwhile stops the demo as ``q`` does.
    """
    early_stop = early_stop or EarlyStop()
    configure_logging("error", "console")
    log = structlog.get_logger("demo")
    with tempfile.TemporaryDirectory(prefix="edge-gateway-demo-") as tmp:
        root = Path(tmp)
        broker = Broker(root)
        try:
            await broker.start()
        except BrokerUnavailableError as exc:
            log.error("demo_needs_a_broker", error=str(exc))
            return 1
        central = DemoCentral(root, broker.port, database)
        keys = {"b": asyncio.Event(), "q": asyncio.Event()}
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(broker.stop)
            stack.push_async_callback(central.stop)  # LIFO: before the broker stops
            # Any of these stops the demo the way `q` does, so the private broker and database
            # go with it (a `kill -INT` or `-TERM` used to leave Mosquitto running under PID 1).
            # From here on: a signal while PostgreSQL starts stops the demo right after.
            loop = asyncio.get_running_loop()
            for sig in STOP_SIGNALS:
                loop.add_signal_handler(sig, keys["q"].set)
            stack.callback(_remove_handlers, loop, early_stop)
            if early_stop.requested:  # a signal before the loop had them: stop once started
                keys["q"].set()
            try:
                reader, conveyor, sims = await _start_simulators(stack, root, scanners, central)
            except (OSError, RuntimeError) as exc:  # initdb or postgres failed: their output
                log.error("demo_database_failed", error=str(exc) or type(exc).__name__)
                return 1
            config = _write_config(root, broker.port, sims, reader.port, conveyor.port)
            gateway = Gateway(load_settings(config))
            state = DemoState(gateway, central, broker, sims, time.monotonic())
            stop = asyncio.Event()
            tasks = [asyncio.create_task(gateway.run(stop))]
            await asyncio.sleep(0.5)
            tasks += [
                asyncio.create_task(_scan(s, rate, state, f"dock-{n + 1}-scanner"))
                for n, s in enumerate(sims)
            ]
            tasks += [asyncio.create_task(_pallets(reader)), asyncio.create_task(_jams(conveyor))]
            if outage_every > 0:
                tasks.append(asyncio.create_task(_outages(broker, outage_every, outage_for)))
            try:
                await _show(state, keys, broker, duration, tasks[0])
            finally:
                for task in tasks[1:]:
                    task.cancel()
                if not broker.up:
                    await broker.start()  # let the gateway say offline cleanly
                stop.set()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(15):
                        await tasks[0]
                tasks[0].cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                # The exit stack then stops the ingest, removes the database, stops the broker.
            code = _exit_code(tasks[0])
    return code


def _exit_code(gateway: asyncio.Task[None]) -> int:
    """1, said why, when the gateway's task failed (not when the demo stopped it); else 0."""
    if not gateway.done() or gateway.cancelled():
        return 0
    failed = gateway.exception()
    if failed is None:
        return 0
    structlog.get_logger("demo").error(
        "demo_gateway_failed", error=f"{type(failed).__name__}: {failed}"
    )
    return 1
