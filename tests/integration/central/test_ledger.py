"""The ledger on a real PostgreSQL: idempotent batches, conflicts kept apart, seq ranges, rules."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg
import pytest

from central.ledger import Checkpoint, write_batch
from central.rules import AcceptAll, SkuRule
from central.schema import MIGRATIONS, migrate
from central.validate import Validator

from .helpers import events, scan_event


async def test_migrations_run_once(conn) -> None:
    """A second start applies nothing and keeps the version."""
    assert await migrate(conn) == len(MIGRATIONS)
    assert await conn.fetchval("SELECT count(*) FROM schema_version") == len(MIGRATIONS)


async def test_batch_is_idempotent_and_ranges_merge(conn) -> None:
    """Redelivery stores nothing twice; seqs become maximal ranges as gaps fill."""
    first = events(scan_event(1), scan_event(2), scan_event(5))
    outcome = await write_batch(conn, first, AcceptAll())
    assert outcome.stored == 3
    assert [v["status"] for v in outcome.verdicts["edge/s1/gw1"]] == ["accepted"] * 3
    again = await write_batch(conn, [*first, first[0]], AcceptAll())
    assert (again.stored, again.duplicates) == (0, 4)
    assert len(again.verdicts["edge/s1/gw1"]) == 3  # duplicates are confirmed again
    ranges = await conn.fetch("SELECT first_seq, last_seq FROM seq_ranges ORDER BY 1")
    assert [tuple(r) for r in ranges] == [(1, 2), (5, 5)]
    await write_batch(conn, events(scan_event(3), scan_event(4)), AcceptAll())
    ranges = await conn.fetch("SELECT first_seq, last_seq FROM seq_ranges ORDER BY 1")
    assert [tuple(r) for r in ranges] == [(1, 5)]
    assert await conn.fetchval("SELECT count(*) FROM events") == 5
    row = await conn.fetchrow("SELECT held, duplicates FROM devices")
    assert tuple(row) == (5, 4)


async def test_same_seq_other_id_is_a_conflict(conn) -> None:
    """Never merged: the held row stays, the other goes to conflicts, no confirm for it."""
    held = events(scan_event(1, event_id="a"))
    await write_batch(conn, held, AcceptAll())
    outcome = await write_batch(conn, events(scan_event(1, event_id="b")), AcceptAll())
    assert (outcome.stored, outcome.conflicts) == (0, 1)
    assert outcome.verdicts == {}
    row = await conn.fetchrow("SELECT id, held_id, seq FROM conflicts")
    assert tuple(row) == ("b", "a", 1)
    assert await conn.fetchval("SELECT id FROM events") == "a"
    assert await conn.fetchval("SELECT conflicts FROM devices") == 1
    again = await write_batch(conn, events(scan_event(1, event_id="b")), AcceptAll())
    assert (again.stored, again.conflicts) == (0, 0)  # redelivered: kept and counted once
    assert await conn.fetchval("SELECT conflicts FROM devices") == 1
    assert await conn.fetchval("SELECT count(*) FROM conflicts") == 1


async def test_sku_rule_reads_the_item_master(conn) -> None:
    """Known codes accepted, unknown rejected with the reason; both stored."""
    await conn.execute("INSERT INTO known_skus VALUES ('111')")
    batch = events(scan_event(1, code="111"), scan_event(2, code="222"))
    outcome = await write_batch(conn, batch, SkuRule())
    verdicts = outcome.verdicts["edge/s1/gw1"]
    assert [v["status"] for v in verdicts] == ["accepted", "rejected"]
    assert "unknown SKU" in verdicts[1]["reason"]
    rows = await conn.fetch("SELECT status, reason FROM events ORDER BY seq")
    assert rows[1]["status"] == "rejected"
    assert rows[1]["reason"] == verdicts[1]["reason"]


async def test_checkpoint_and_quarantine_commit_with_the_batch(conn) -> None:
    """Non-event items share the transaction; counters add up."""
    validator = Validator(prefix="edge", max_payload=65536, keep_bytes=4)
    bad = validator.check("edge/s1/gw1/events/dock", b"{not json")
    outcome = await write_batch(
        conn, [bad, Checkpoint("edge/s1/gw1", {"devices": {"dock": {"last_seq": 3}}})], AcceptAll()
    )
    assert outcome.quarantined == 1
    row = await conn.fetchrow("SELECT topic, raw, size, reason FROM quarantine")
    assert (row["raw"], row["size"]) == (b"{not", 9)
    assert "invalid JSON" in row["reason"]
    assert await conn.fetchval("SELECT value FROM counters WHERE name = 'quarantined'") == 1
    assert (
        await conn.fetchval("SELECT body->'devices'->'dock'->>'last_seq' FROM checkpoints") == "3"
    )


async def test_instances_starting_together_migrate_once(pg_dsn) -> None:
    """Several instances starting at once on an empty database: one applies each migration,
    the others wait for it (the advisory lock) and find it done; none fails."""

    conns = [await asyncpg.connect(pg_dsn) for _ in range(4)]
    try:
        async with asyncio.timeout(30):  # a lock never released would hold the rest for ever
            versions = await asyncio.gather(*(migrate(c) for c in conns))
        assert versions == [len(MIGRATIONS)] * 4
        rows = await conns[0].fetch("SELECT version FROM schema_version ORDER BY version")
        assert [r["version"] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
    finally:
        for c in conns:
            await c.close()


class ShortRule:
    """A broken pluggable rule: one verdict short."""

    async def verdicts(self, conn, events) -> list[str | None]:
        return [None] * (len(events) - 1)


async def test_a_rule_with_too_few_verdicts_fails_the_batch_rather_than_drop_events(conn) -> None:
    """Every event of the batch is stored or none is: the batch fails (and is tried again,
    unacknowledged), no event is left out because its verdict is missing."""

    with pytest.raises(ValueError, match="zip"):
        await write_batch(conn, events(scan_event(1), scan_event(2)), ShortRule())
    assert await conn.fetchval("SELECT count(*) FROM events") == 0


async def test_a_batch_the_fast_encoder_refuses_is_never_reported_stored_unwritten(conn) -> None:
    """A lone surrogate (only the standard JSON parser lets one through) sends the batch down the
    standard encoder: PostgreSQL then refuses it as a data error (``Central._write`` splits the
    batch and quarantines that event alone), and nothing is reported stored that is not in the
    table, the good events beside it included."""

    good = events(scan_event(1), scan_event(2), scan_event(3))
    batch = [good[0], dataclasses.replace(good[1], id="lone \ud800 surrogate"), good[2]]
    with pytest.raises(asyncpg.DataError):
        await write_batch(conn, batch, AcceptAll())
    assert await conn.fetchval("SELECT count(*) FROM events") == 0
