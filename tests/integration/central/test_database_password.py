"""A ledger behind password authentication: the ingest's pool and the replayer's own
connection both log in with ``[database] password_file`` (every other test runs on a trust-only
server, where a forgotten password goes unnoticed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import psycopg
import pytest

from central.config import load_central_settings
from simulators.broker import MosquittoBroker
from simulators.postgres import PostgresServer

from .conftest import running_central, write_central_config

ROLE, PASSWORD = "edge_ledger", "correct horse 7"


def require_password_for_role(server: PostgresServer) -> str:
    """Make ``ROLE`` with ``PASSWORD`` and a database it owns; only SCRAM lets it in."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        conn.execute(f"CREATE DATABASE ledger OWNER {ROLE}")
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])  # type: ignore[index]
        hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        conn.execute("SELECT pg_reload_conf()")
    return f"postgresql://{ROLE}@{server.host}:{server.port}/ledger"


async def test_ingest_and_replayer_log_in_with_the_password_file(
    tmp_path: Path, broker: MosquittoBroker, private_postgres: PostgresServer
) -> None:
    dsn = require_password_for_role(private_postgres)
    with pytest.raises(asyncpg.InvalidPasswordError):  # the server really asks for it
        await asyncpg.connect(dsn)
    password_file = tmp_path / "db-password"
    password_file.write_text(PASSWORD + "\n")
    path = write_central_config(
        tmp_path / "central.toml",
        broker=broker,
        dsn=dsn,
        database={"password_file": str(password_file)},
    )
    async with running_central(load_central_settings(path)) as central:
        async with asyncio.timeout(10):
            while central.replayer is None or not central.replayer.leader:
                await asyncio.sleep(0.02)
    conn = await asyncpg.connect(dsn, password=PASSWORD)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_version") > 0
    finally:
        await conn.close()
