"""Fixtures for the central ingest on real parts: private Mosquitto and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from central.config import CentralSettings, load_central_settings
from central.rules import Rule
from central.schema import migrate
from central.service import Central
from simulators.broker import MosquittoBroker
from tests.support import ROOT


def write_central_config(
    path: Path, *, broker: MosquittoBroker, dsn: str, instance: str = "central-a", **sections: Any
) -> Path:
    """A central.toml as an operator would write it, fast timings for tests."""
    body: dict[str, dict[str, Any]] = {
        "central": {"instance": instance},
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "reconnect_min": 0.05,
            "reconnect_max": 0.5,
            "timeout": 5,
        },
        "database": {"dsn": dsn, "retry_max": 0.5},
        "replay": {"replay_after": 1, "interval": 0.2, "min_gap": 2},
        "logging": {"format": "json", "level": "info"},
    }
    for name, values in sections.items():
        body.setdefault(name, {}).update(values)
    lines = []
    for name, values in body.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, int | float):
                text = repr(value)
            else:
                text = f'"{value}"'
            lines.append(f"{key} = {text}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def central_settings(
    tmp_path: Path, broker: MosquittoBroker, pg_dsn: str
) -> Callable[..., CentralSettings]:
    """Settings for one instance; call with overrides, e.g. ``confirm={"rule": "sku"}``."""

    def make(**sections: Any) -> CentralSettings:
        name = sections.pop("instance", "central-a")
        path = tmp_path / f"{name}.toml"
        write_central_config(path, broker=broker, dsn=pg_dsn, instance=name, **sections)
        return load_central_settings(path)

    return make


@contextlib.asynccontextmanager
async def started_central(
    settings: CentralSettings, *, rule: Rule | None = None
) -> AsyncIterator[tuple[Central, asyncio.Task[None]]]:
    """An instance in this event loop, started whatever it can reach yet, and its task;
    stopped on exit, its failure surfaced."""
    central = Central(settings, rule=rule)
    stop = asyncio.Event()
    task = asyncio.create_task(central.run(stop))
    try:
        yield central, task
    finally:
        stop.set()
        async with asyncio.timeout(20):
            await task


@contextlib.asynccontextmanager
async def running_central(
    settings: CentralSettings, *, rule: Rule | None = None
) -> AsyncIterator[Central]:
    """An instance in this event loop, connected; stopped on exit, its failure surfaced."""
    async with started_central(settings, rule=rule) as (central, task):
        async with asyncio.timeout(20):
            while not central.connected.is_set():
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield central


class CentralProcess:
    """``edge-central run`` as a child process, so tests can kill -9 it."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config, self.log_path = config, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Launch as systemd would."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "central", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def kill9(self) -> None:
        """SIGKILL: no cleanup at all."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def logged(self, event: str) -> bool:
        """Whether a JSON log line with this event was written."""
        return f'"event": "{event}"' in self.log_path.read_text()


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's database, the ledger's schema migrated."""
    connection = await asyncpg.connect(pg_dsn)
    await migrate(connection)
    yield connection
    await connection.close()
