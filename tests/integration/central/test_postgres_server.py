"""The private PostgreSQL fixture: its own port and directory, and survives kill -9 and restart."""

from __future__ import annotations

import psycopg

from simulators.postgres import PostgresServer


def test_private_server_is_not_the_system_one(postgres_server: PostgresServer, pg_dsn: str) -> None:
    """Tests never touch the machine's server on 5432; each test gets a fresh database."""
    assert postgres_server.port != 5432
    with psycopg.connect(pg_dsn) as conn:
        port = conn.execute("SHOW port").fetchone()
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname='public'").fetchone()
    assert port == (str(postgres_server.port),)
    assert tables == (0,)


def test_kill9_and_restart_keep_committed_rows(private_postgres: PostgresServer) -> None:
    """A committed row survives SIGKILL of the postmaster and a fast restart."""
    with psycopg.connect(private_postgres.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (n int)")
        conn.execute("INSERT INTO t VALUES (1)")
    private_postgres.kill()
    assert not private_postgres.running
    private_postgres.start()
    with psycopg.connect(private_postgres.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (2)")
    private_postgres.restart()
    with psycopg.connect(private_postgres.dsn) as conn:
        assert conn.execute("SELECT sum(n) FROM t").fetchone() == (3,)
