"""The ledger's schema, as numbered migrations applied at start (under an advisory lock).

Each entry of :data:`MIGRATIONS` is applied once, in order, in its own transaction, and recorded
in ``schema_version``. Never edit a released migration: append a new one.
"""

from __future__ import annotations

from typing import Any

import structlog

log = structlog.get_logger("central.schema")

MIGRATE_LOCK = 0x6564676500
"""Advisory lock key that serialises migrations between instances starting together."""

MIGRATIONS: tuple[str, ...] = (
    # 1: the ledger and everything around it
    """
    CREATE TABLE events (
        source      text        NOT NULL,
        id          text        NOT NULL,
        seq         bigint      NOT NULL,
        type        text        NOT NULL,
        time        timestamptz NOT NULL,
        historical  boolean     NOT NULL DEFAULT false,
        data        jsonb,
        received    timestamptz NOT NULL DEFAULT clock_timestamp(),
        status      text        NOT NULL CHECK (status IN ('accepted', 'rejected')),
        reason      text,
        PRIMARY KEY (source, id)
    );
    CREATE UNIQUE INDEX events_source_seq ON events (source, seq);
    CREATE INDEX events_received ON events (received);

    CREATE TABLE conflicts (
        n           bigserial   PRIMARY KEY,
        source      text        NOT NULL,
        id          text        NOT NULL,
        seq         bigint      NOT NULL,
        held_id     text,
        topic       text        NOT NULL,
        payload     jsonb       NOT NULL,
        received    timestamptz NOT NULL DEFAULT clock_timestamp(),
        UNIQUE (source, id)
    );

    CREATE TABLE quarantine (
        n           bigserial   PRIMARY KEY,
        topic       text        NOT NULL,
        raw         bytea       NOT NULL,
        size        integer     NOT NULL,
        reason      text        NOT NULL,
        received    timestamptz NOT NULL DEFAULT clock_timestamp()
    );

    CREATE TABLE seq_ranges (
        source      text        NOT NULL,
        first_seq   bigint      NOT NULL,
        last_seq    bigint      NOT NULL CHECK (last_seq >= first_seq),
        PRIMARY KEY (source, first_seq)
    );

    CREATE TABLE devices (
        source      text        PRIMARY KEY,
        root        text        NOT NULL,
        device      text        NOT NULL,
        held        bigint      NOT NULL DEFAULT 0,
        duplicates  bigint      NOT NULL DEFAULT 0,
        conflicts   bigint      NOT NULL DEFAULT 0,
        out_since   timestamptz,
        next_replay timestamptz
    );

    CREATE TABLE checkpoints (
        root        text        PRIMARY KEY,
        body        jsonb       NOT NULL,
        received    timestamptz NOT NULL DEFAULT clock_timestamp()
    );

    CREATE TABLE replays (
        request_id  text        PRIMARY KEY,
        source      text        NOT NULL,
        from_seq    bigint      NOT NULL,
        to_seq      bigint      NOT NULL,
        requested   timestamptz NOT NULL DEFAULT clock_timestamp(),
        answered    timestamptz,
        result      jsonb
    );
    CREATE INDEX replays_open ON replays (source) WHERE answered IS NULL;

    CREATE TABLE counters (
        name        text        PRIMARY KEY,
        value       bigint      NOT NULL DEFAULT 0
    );

    -- the WMS's item master, read by the "sku" rule
    CREATE TABLE known_skus (
        sku         text        PRIMARY KEY
    );

    -- the documented hand-off for downstream systems (see docs/central.md)
    CREATE VIEW ledger AS
        SELECT source, id, seq, type, time, historical, data, received, status, reason
        FROM events;
    """,
)

NOTIFY_CHANNEL = "edge_central_events"
"""``LISTEN edge_central_events``: one notification per committed batch (its event count)."""


async def migrate(conn: Any) -> int:  # noqa: ANN401 - an asyncpg connection
    """Apply what is missing; return the schema version now in place."""
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATE_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version"
            " (version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())"
        )
        current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        for version, script in enumerate(MIGRATIONS, start=1):
            if version <= current:
                continue
            async with conn.transaction():
                await conn.execute(script)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
            log.info("schema_migrated", version=version)
        return len(MIGRATIONS)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATE_LOCK)
