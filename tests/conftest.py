"""Fixtures on real parts: a private Mosquitto, a simulated central subscriber."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.postgres import PostgresServer
from tests.chaos.report import REPORT, write_summary


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a non-daemon thread behind: it would keep the daemon from exiting.

    (An unclosed aiosqlite connection is the classic one.)
    """
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        leaked = [
            t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto of our own on a free port; tests may stop, kill and restart it."""
    mosquitto = MosquittoBroker(tmp_path / "broker")
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
async def central(broker: MosquittoBroker) -> AsyncIterator[CentralCollector]:
    """A central subscriber in a persistent session, connected before the test starts."""
    collector = CentralCollector(broker.host, broker.port, client_id=f"central-{broker.port}")
    task = asyncio.create_task(collector.run())
    async with asyncio.timeout(10):
        await collector.connected.wait()
    yield collector
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL per test session (free port, temp dir); never the one on 5432.

    Started only when a test asks for a database. fsync is off: a kill -9 of the postmaster
    still keeps the OS cache, and tests stay fast on a shared disk.
    """
    server = PostgresServer(durable=False)
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def pg_dsn(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database for this test on the session's server.

    With ``EDGE_TEST_POSTGRES=host:port`` (``./dev mutate`` starts one private server for its
    whole run: mutmut runs the tests in a new process per mutant, and each would pay for an
    initdb), the database is made on that server instead, and dropped after the test.
    """
    import psycopg  # noqa: PLC0415 - only tests that need PostgreSQL import it

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    name = f"{name}_{time.monotonic_ns() % 1_000_000}"
    shared = os.environ.get("EDGE_TEST_POSTGRES")
    if shared:
        admin = f"postgresql://postgres@{shared}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql://postgres@{shared}/{name}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    postgres_server: PostgresServer = request.getfixturevalue("postgres_server")
    postgres_server.start()  # a test may have stopped or killed it
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_server.dsn_for(name)


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, which the test may stop, kill -9 and restart."""
    server = PostgresServer(durable=False)
    server.start()
    yield server
    server.cleanup()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """An xdist worker finished: take its chaos rows (tests/chaos/report.py)."""
    rows = getattr(node, "workeroutput", {}).get("chaos_rows")
    if rows:
        REPORT.merge_json(rows)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The chaos summary table, whether the scenarios ran here or in xdist workers."""
    if REPORT.rows:
        terminalreporter.section("chaos summary")
    write_summary(terminalreporter.write_line)
