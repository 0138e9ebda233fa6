"""Helpers shared by the integration tests: configs, a gateway in-process or as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buffer.schema import MIGRATIONS
from buffer.stats import DeviceStats
from buffer.store import Buffer
from gateway.daemon import Gateway
from gateway.publisher import DeliveredFn, MessageFn, Publisher
from gateway.settings import MqttSection, load_settings
from gateway.topics import Topics
from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector

ROOT = Path(__file__).resolve().parent.parent

CONVEYOR_POINTS = """
[[devices.points]]
name = "belt_speed"
table = "input"
address = 0
scale = 0.001
unit = "m/s"
deadband = 0.05

[[devices.points]]
name = "jam"
table = "discrete"
address = 1
type = "bool"
role = "alarm"
"""
"""The conveyor simulator's belt speed and jam alarm as a Modbus device's point tables (TOML):
append after that device's ``[[devices]]`` table (``write_config`` writes flat keys only)."""


def scanner_device(
    device_id: str, port: Path, *, confirm: str = "stored", **extra: Any
) -> dict[str, Any]:
    """A barcode-serial device entry."""
    return {
        "id": device_id,
        "driver": "barcode-serial",
        "port": str(port),
        "confirm": confirm,
        **extra,
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def write_config(
    path: Path,
    *,
    mqtt_port: int,
    state_dir: Path,
    devices: list[dict[str, Any]],
    mqtt: dict[str, Any] | None = None,
    buffer: dict[str, Any] | None = None,
    gateway: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write a gateway TOML config the way a technician would."""
    sections: dict[str, dict[str, Any]] = {
        "gateway": {
            "id": "gw-test",
            "site": "site-test",
            "state_dir": str(state_dir),
            **(gateway or {}),
        },
        "mqtt": {
            "host": "127.0.0.1",
            "port": mqtt_port,
            "reconnect_min": 0.1,
            "reconnect_max": 0.5,
            "publish_timeout": 5.0,
            **(mqtt or {}),
        },
        "buffer": buffer or {},
        "logging": {"format": "json", "level": "info"},
        "metrics": metrics or {},
    }
    lines: list[str] = []
    for name, body in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in body.items())
        lines.append("")
    for device in devices:
        lines.append("[[devices]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in device.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


async def device_figures(gw: Gateway, device: str) -> DeviceStats:
    """A device's buffer figures, zero until the buffer has a row for it: the row comes with
    its first status or event, a moment after the port opens, and a test polling right after
    typing could meet a KeyError (a CI run did)."""
    return (await gw.buffer.stats()).devices.get(device) or DeviceStats(device)


async def retained(broker: MosquittoBroker, topic: str) -> dict[str, object]:
    """The JSON object the broker keeps retained on ``topic`` (fails after 5 s without one)."""
    import aiomqtt  # noqa: PLC0415 - only the tests that read retained messages need it

    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                return dict(json.loads(bytes(message.payload)))  # type: ignore[arg-type]
    raise AssertionError(f"nothing retained on {topic}")


@contextlib.asynccontextmanager
async def running_gateway(config: Path) -> AsyncIterator[Gateway]:
    """Run a gateway in this event loop; stop it gracefully on exit and surface its failure."""
    gateway = Gateway(load_settings(config))
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    try:
        async with asyncio.timeout(10):
            while not hasattr(gateway, "publisher"):
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield gateway
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


class GatewayProcess:
    """``edge-gateway run`` as a real child process, so tests can kill -9 it."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        """Launch the daemon exactly as systemd would (minus systemd)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )

    def kill9(self) -> None:
        """SIGKILL: no cleanup at all, as a crash or power cut."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


async def wait_until(predicate: Callable[[], bool], *, timeout: float) -> None:
    """Poll ``predicate`` until it holds; TimeoutError after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def open_fds() -> int:
    """How many file descriptors this process holds now (Linux)."""
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


async def assert_no_leaks(fds: int, tasks: int, *, timeout: float = 10.0) -> None:
    """Wait until this process holds no more descriptors and asyncio tasks than ``fds`` and
    ``tasks`` (closes and cancellations may take a few loop turns); AssertionError if it
    still holds more after ``timeout`` seconds."""

    def settled() -> bool:
        return open_fds() <= fds and len(asyncio.all_tasks()) <= tasks

    with contextlib.suppress(TimeoutError):
        await wait_until(settled, timeout=timeout)
    leaked_fds, leaked_tasks = open_fds() - fds, len(asyncio.all_tasks()) - tasks
    assert leaked_fds <= 0 and leaked_tasks <= 0, (
        f"{leaked_fds} descriptors and {leaked_tasks} tasks more than before: "
        f"{sorted(repr(t.get_coro()) for t in asyncio.all_tasks())[:10]}"
    )


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``edge-gateway`` as a user would and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in a fresh interpreter at the repo's root, its output captured: for
    what only a new process shows (which modules an entry point imports, a library hidden)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def make_v1_buffer(path: Path, ids: list[str | bytes]) -> None:
    """A buffer file as release 1 wrote it: text ids, rows in several states, 300 B payloads."""
    script = MIGRATIONS[0]
    assert isinstance(script, str)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(script)
        conn.execute("PRAGMA user_version=1")
        for n, event_id in enumerate(ids, start=1):
            conn.execute(
                "INSERT INTO events (id, device, seq, state, created, sent, payload)"
                " VALUES (?, 'dock', ?, ?, 1.0, ?, ?)",
                (event_id, n, n % 3, 2.0 if n % 3 == 2 else None, b"%300d" % n),
            )
        conn.execute("INSERT INTO devices (device, last_seq) VALUES ('dock', ?)", (len(ids),))
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def page_count(buffer: Buffer) -> int:
    """Pages the buffer's file has, read on the buffer's own connection."""
    return await buffer._db.read(lambda conn: int(conn.execute("PRAGMA page_count").fetchone()[0]))


async def limit_pages(buffer: Buffer, pages: int | None) -> None:
    """A full disk as SQLite sees it: no page beyond ``pages`` (None: room comes back)."""
    limit = 1073741823 if pages is None else pages
    await buffer._db.read(lambda conn: conn.execute(f"PRAGMA max_page_count={limit}").fetchall())


def broker_configured(workdir: Path, edit: Callable[[str], str]) -> MosquittoBroker:
    """A private Mosquitto whose generated config is changed by ``edit`` (a hardened or limited
    broker: ACLs, size limits, a small window), started."""
    broker = MosquittoBroker(workdir)
    broker.config_path.write_text(edit(broker.config_path.read_text()))
    broker.start()
    return broker


@contextlib.asynccontextmanager
async def running_publisher(
    mqtt: MqttSection,
    buffer: Buffer,
    topics: Topics,
    *,
    client_id: str,
    on_delivered: DeliveredFn | None = None,
    on_message: MessageFn | None = None,
    subscriptions: Sequence[str] = (),
    on_link: Callable[[bool, str], None] | None = None,
    before_run: Callable[[Publisher], Awaitable[object] | None] | None = None,
    connect: bool = True,
    stop_within: float = 10,
) -> AsyncIterator[Publisher]:
    """A publisher on ``mqtt``, its ``run`` started: yielded once it is connected (within
    10 s), or at once if ``connect`` is false (a broker that is down, a test that waits for
    something else); stopped and its run awaited (within ``stop_within`` s) on the way out.
    ``before_run`` is given the publisher before its run starts (statuses set before the
    connect, an injected fault); ``on_delivered`` defaults to ignoring what is delivered."""
    pub = Publisher(
        mqtt,
        buffer,
        topics,
        client_id=client_id,
        on_delivered=on_delivered or (lambda _b: None),
        on_message=on_message,
        subscriptions=subscriptions,
        on_link=on_link,
    )
    if before_run is not None:
        prepared = before_run(pub)
        if prepared is not None:
            await prepared
    task = asyncio.create_task(pub.run())
    try:
        if connect:
            async with asyncio.timeout(10):
                await pub.connected.wait()
        yield pub
    finally:
        pub.stop()
        async with asyncio.timeout(stop_within):
            await task


@dataclass
class PublisherRig:
    """A publisher on a real buffer file and a central subscriber, on one broker."""

    central: CentralCollector
    buffer: Buffer
    publisher: Publisher


@contextlib.asynccontextmanager
async def publisher_and_central(
    tmp_path: Path,
    broker: MosquittoBroker,
    topics: Topics,
    *,
    name: str,
    on_delivered: DeliveredFn | None = None,
    wait_publisher: bool = True,
) -> AsyncIterator[PublisherRig]:
    """Run both until the block ends, then stop them and the broker. Central is connected when
    the block starts, and the publisher too unless ``wait_publisher`` is false (a test of a
    broker it may never connect to). Client ids are ``gw-{name}`` and ``central-{name}``;
    reconnects are quick."""
    central = CentralCollector(broker.host, broker.port, client_id=f"central-{name}")
    central_task = asyncio.create_task(central.run())
    buffer = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**9)
    mqtt = MqttSection(host=broker.host, port=broker.port, reconnect_min=0.05, reconnect_max=0.3)
    try:
        async with running_publisher(
            mqtt,
            buffer,
            topics,
            client_id=f"gw-{name}",
            on_delivered=on_delivered,
            connect=False,  # below, within the same 10 s as central's
            stop_within=15,
        ) as publisher:
            async with asyncio.timeout(10):
                await central.connected.wait()
                if wait_publisher:
                    await publisher.connected.wait()
            yield PublisherRig(central, buffer, publisher)
    finally:
        await buffer.close()
        central_task.cancel()
        await asyncio.gather(central_task, return_exceptions=True)
        broker.stop()
