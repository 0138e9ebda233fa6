"""central/ledger.py on a real PostgreSQL: every table a batch writes, row by row.

Written for the survivors of a mutation run (docs/testing.md): counters, per-device figures,
conflict records, checkpoints and replay answers that were wrong passed the first tests, which
checked the events and the outcome.
"""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from central.ledger import BatchOutcome, Checkpoint, ReplayResult, merge_ranges, write_batch
from central.rules import AcceptAll, SkuRule
from central.schema import NOTIFY_CHANNEL
from central.validate import Validator

from .helpers import events, scan_event

SOURCE = "/s1/gw1/dock"


async def counters(conn) -> dict[str, int]:
    return {r["name"]: r["value"] for r in await conn.fetch("SELECT name, value FROM counters")}


async def devices(conn) -> dict[str, tuple]:
    rows = await conn.fetch("SELECT source, root, device, held, duplicates, conflicts FROM devices")
    return {r["source"]: tuple(r)[1:] for r in rows}


async def ranges(conn) -> list[tuple]:
    rows = await conn.fetch("SELECT source, first_seq, last_seq FROM seq_ranges ORDER BY 1, 2")
    return [tuple(r) for r in rows]


async def test_counters_add_up_under_their_names(conn) -> None:
    """The four counters (what /metrics and the parity report read after a restart) are kept
    under their own names and add across batches."""
    validator = Validator(prefix="edge", max_payload=65536, keep_bytes=100)
    a, b = events(scan_event(1, event_id="a"), scan_event(2, event_id="b"))
    (conflict,) = events(scan_event(1, event_id="c"))
    bad = validator.check("edge/s1/gw1/events/dock", b"nope")
    await write_batch(conn, [a, b], AcceptAll())
    assert await counters(conn) == {"stored": 2, "duplicates": 0, "conflicts": 0, "quarantined": 0}
    outcome = await write_batch(conn, [a, conflict, bad, bad], AcceptAll())
    assert (outcome.stored, outcome.duplicates, outcome.conflicts, outcome.quarantined) == (
        0,
        1,
        1,
        2,
    )
    assert await counters(conn) == {"stored": 2, "duplicates": 1, "conflicts": 1, "quarantined": 2}


async def test_copies_within_one_batch_each_count_as_a_duplicate(conn) -> None:
    """An event redelivered twice while its first copy waits in the batch: stored once, two
    duplicates, one verdict per stored event (confirms are per id)."""
    (a,) = events(scan_event(1, event_id="a"))
    (b,) = events(scan_event(1, event_id="b", device="other"))
    outcome = await write_batch(conn, [a, a, b, a], AcceptAll())
    assert (outcome.stored, outcome.duplicates) == (2, 2)
    assert outcome.verdicts["edge/s1/gw1"] == [  # in (source, seq) order
        {"id": "a", "status": "accepted"},
        {"id": "b", "status": "accepted"},
    ]
    assert await devices(conn) == {
        "/s1/gw1/dock": ("edge/s1/gw1", "dock", 1, 2, 0),
        "/s1/gw1/other": ("edge/s1/gw1", "other", 1, 0, 0),
    }
    again = await write_batch(conn, [a, a], AcceptAll())
    assert (again.stored, again.duplicates) == (0, 2)
    assert again.verdicts["edge/s1/gw1"] == [{"id": "a", "status": "accepted"}]
    assert (await devices(conn))["/s1/gw1/dock"] == ("edge/s1/gw1", "dock", 1, 4, 0)


async def test_a_batch_of_many_devices_out_of_order(conn) -> None:
    """Devices of two gateways, seqs out of order: each device's figures, ranges and verdicts
    (in seq order per device) are its own."""
    bodies = [
        scan_event(3, gateway="gw2", device="d", event_id="g3"),
        scan_event(2, event_id="a2"),
        scan_event(1, gateway="gw2", device="d", event_id="g1"),
        scan_event(1, event_id="a1"),
        scan_event(5, event_id="a5"),
    ]
    outcome = await write_batch(conn, events(*bodies), AcceptAll())
    assert outcome.stored == 5
    assert [v["id"] for v in outcome.verdicts["edge/s1/gw1"]] == ["a1", "a2", "a5"]
    assert [v["id"] for v in outcome.verdicts["edge/s1/gw2"]] == ["g1", "g3"]
    assert await ranges(conn) == [
        ("/s1/gw1/dock", 1, 2),
        ("/s1/gw1/dock", 5, 5),
        ("/s1/gw2/d", 1, 1),
        ("/s1/gw2/d", 3, 3),
    ]
    assert await devices(conn) == {
        "/s1/gw1/dock": ("edge/s1/gw1", "dock", 3, 0, 0),
        "/s1/gw2/d": ("edge/s1/gw2", "d", 2, 0, 0),
    }
    # a later batch fills one gap, extends the top and leaves the other device alone
    await write_batch(
        conn, events(scan_event(3, event_id="a3"), scan_event(6, event_id="a6")), AcceptAll()
    )
    assert await ranges(conn) == [
        ("/s1/gw1/dock", 1, 3),
        ("/s1/gw1/dock", 5, 6),
        ("/s1/gw2/d", 1, 1),
        ("/s1/gw2/d", 3, 3),
    ]
    await write_batch(conn, events(scan_event(4, event_id="a4")), AcceptAll())
    assert (await ranges(conn))[0] == ("/s1/gw1/dock", 1, 6)
    assert len(await ranges(conn)) == 3


async def test_ranges_touching_on_either_side_merge(conn) -> None:
    """A new seq right below or right above a stored range joins it; one further off does
    not."""
    await write_batch(conn, events(scan_event(10, event_id="x10")), AcceptAll())
    await write_batch(conn, events(scan_event(9, event_id="x9")), AcceptAll())
    assert await ranges(conn) == [("/s1/gw1/dock", 9, 10)]
    await write_batch(conn, events(scan_event(11, event_id="x11")), AcceptAll())
    assert await ranges(conn) == [("/s1/gw1/dock", 9, 11)]
    await write_batch(conn, events(scan_event(13, event_id="x13")), AcceptAll())
    await write_batch(conn, events(scan_event(7, event_id="x7")), AcceptAll())
    assert await ranges(conn) == [
        ("/s1/gw1/dock", 7, 7),
        ("/s1/gw1/dock", 9, 11),
        ("/s1/gw1/dock", 13, 13),
    ]
    await write_batch(
        conn, events(scan_event(8, event_id="x8"), scan_event(12, event_id="x12")), AcceptAll()
    )
    assert await ranges(conn) == [("/s1/gw1/dock", 7, 13)]


def test_merge_ranges_edges() -> None:
    """Adjacent and overlapping ranges join; a range inside another keeps the outer end."""
    assert merge_ranges([]) == []
    assert merge_ranges([(1, 10), (2, 3)]) == [(1, 10)]
    assert merge_ranges([(1, 2), (4, 5)]) == [(1, 2), (4, 5)]
    assert merge_ranges([(4, 5), (1, 3)]) == [(1, 5)]


async def test_a_conflict_is_kept_whole_and_apart(conn) -> None:
    """The conflicting copy's topic and body are kept as they came; the verdicts of the rest of
    the batch still go out; two ids for one seq within one batch: the first is held, the
    second is the conflict and names it."""
    await write_batch(conn, events(scan_event(1, event_id="a", code="111")), AcceptAll())
    body = scan_event(1, event_id="b", code="222")
    outcome = await write_batch(conn, events(body, scan_event(2, event_id="c")), AcceptAll())
    assert outcome.verdicts["edge/s1/gw1"] == [{"id": "c", "status": "accepted"}]
    row = await conn.fetchrow("SELECT source, id, seq, held_id, topic, payload FROM conflicts")
    assert (row["source"], row["id"], row["seq"], row["held_id"], row["topic"]) == (
        "/s1/gw1/dock",
        "b",
        1,
        "a",
        "edge/s1/gw1/events/dock",
    )
    assert json.loads(row["payload"]) == body
    assert await devices(conn) == {"/s1/gw1/dock": ("edge/s1/gw1", "dock", 2, 0, 1)}
    outcome = await write_batch(
        conn, events(scan_event(3, event_id="d"), scan_event(3, event_id="e")), AcceptAll()
    )
    assert outcome.verdicts["edge/s1/gw1"] == [{"id": "d", "status": "accepted"}]
    assert (outcome.stored, outcome.conflicts) == (1, 1)
    assert await conn.fetchval("SELECT held_id FROM conflicts WHERE id = 'e'") == "d"
    assert await devices(conn) == {"/s1/gw1/dock": ("edge/s1/gw1", "dock", 3, 0, 2)}
    # two conflicts of one device in one batch both count
    outcome = await write_batch(
        conn, events(scan_event(1, event_id="f"), scan_event(2, event_id="g")), AcceptAll()
    )
    assert (outcome.stored, outcome.conflicts) == (0, 2)
    assert await devices(conn) == {"/s1/gw1/dock": ("edge/s1/gw1", "dock", 3, 0, 4)}


async def test_rejected_events_keep_their_reason_in_verdicts_and_duplicates(conn) -> None:
    """A rejected event's reason is in its verdict, in the row, and in the verdict sent again
    for a duplicate; an accepted one has no reason key at all."""
    await conn.execute("INSERT INTO known_skus VALUES ('111')")
    batch = events(scan_event(1, event_id="ok", code="111"), scan_event(2, event_id="no", code="9"))
    first = await write_batch(conn, batch, SkuRule())
    again = await write_batch(conn, batch, SkuRule())
    expected = [
        {"id": "ok", "status": "accepted"},
        {"id": "no", "status": "rejected", "reason": "unknown SKU '9'"},
    ]
    assert first.verdicts["edge/s1/gw1"] == expected
    assert again.verdicts["edge/s1/gw1"] == expected
    rows = await conn.fetch("SELECT id, status, reason FROM events ORDER BY seq")
    assert [tuple(r) for r in rows] == [
        ("ok", "accepted", None),
        ("no", "rejected", "unknown SKU '9'"),
    ]


async def test_checkpoints_and_replay_answers_are_recorded(conn) -> None:
    """The last checkpoint of a root in a batch wins; a replay answer fills its request."""
    await conn.execute(
        "INSERT INTO replays (request_id, source, from_seq, to_seq) VALUES"
        " ('r1', '/s1/gw1/dock', 1, 5), ('r2', '/s1/gw1/dock', 7, 9)"
    )
    answer = {"request_id": "r1", "ok": True, "dropped": [[2, 3]]}
    await write_batch(
        conn,
        [
            Checkpoint("edge/s1/gw1", {"n": 1}),
            Checkpoint("edge/s1/gw2", {"n": 7}),
            Checkpoint("edge/s1/gw1", {"n": 2}),
            ReplayResult("edge/s1/gw1", answer),
        ],
        AcceptAll(),
    )
    rows = await conn.fetch("SELECT root, body::text AS body FROM checkpoints ORDER BY root")
    assert [(r["root"], json.loads(r["body"])) for r in rows] == [
        ("edge/s1/gw1", {"n": 2}),
        ("edge/s1/gw2", {"n": 7}),
    ]
    replays = await conn.fetch(
        "SELECT request_id, answered IS NOT NULL AS answered, result::text AS result"
        " FROM replays ORDER BY request_id"
    )
    assert [(r["request_id"], r["answered"]) for r in replays] == [("r1", True), ("r2", False)]
    assert json.loads(replays[0]["result"]) == answer
    assert replays[1]["result"] is None
    await write_batch(conn, [Checkpoint("edge/s1/gw1", {"n": 3})], AcceptAll())
    assert (
        await conn.fetchval("SELECT body->>'n' FROM checkpoints WHERE root = 'edge/s1/gw1'") == "3"
    )


async def test_quarantine_keeps_each_record(conn) -> None:
    """Every quarantined item of a batch is a row with its topic, bytes, size and reason."""
    validator = Validator(prefix="edge", max_payload=65536, keep_bytes=4)
    items = [
        validator.check("edge/s1/gw1/events/dock", b"nope!"),
        validator.quarantine("edge/s1/gw1/checkpoint", b"\x00\x01", "not a JSON object"),
    ]
    outcome = await write_batch(conn, items, AcceptAll())
    assert isinstance(outcome, BatchOutcome)
    rows = await conn.fetch("SELECT topic, raw, size, reason FROM quarantine ORDER BY n")
    assert [(r["topic"], r["raw"], r["size"]) for r in rows] == [
        ("edge/s1/gw1/events/dock", b"nope", 5),
        ("edge/s1/gw1/checkpoint", b"\x00\x01", 2),
    ]
    assert rows[1]["reason"] == "not a JSON object"
    assert rows[0]["reason"].startswith("invalid JSON")


async def test_a_commit_with_new_events_notifies_their_count(conn, pg_dsn: str) -> None:
    """LISTEN edge_central_events hears one notification per batch that stored something,
    with the number stored; a batch of duplicates only is silent."""
    listener = await asyncpg.connect(pg_dsn)
    heard: list[str] = []
    try:
        await listener.add_listener(NOTIFY_CHANNEL, lambda *args: heard.append(args[3]))
        batch = events(scan_event(1), scan_event(2), scan_event(3))
        await write_batch(conn, batch, AcceptAll())
        await write_batch(conn, batch, AcceptAll())
        await write_batch(conn, events(scan_event(4)), AcceptAll())
        await conn.execute("SELECT pg_notify($1, 'end')", NOTIFY_CHANNEL)
        async with asyncio.timeout(20):
            while "end" not in heard:
                await asyncio.sleep(0.01)
    finally:
        await listener.close()
    assert heard == ["3", "1", "end"]


async def test_nothing_of_a_failed_batch_stays(conn) -> None:
    """One transaction: when the rule fails, no event, range, counter or device row is left."""

    class Broken:
        async def verdicts(self, conn, events):
            raise RuntimeError("item master unreachable")

    with pytest.raises(RuntimeError):
        await write_batch(conn, events(scan_event(1), scan_event(2)), Broken())
    for table in ("events", "seq_ranges", "devices", "counters"):
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    with pytest.raises(asyncpg.PostgresError):
        await write_batch(
            conn,
            [*events(scan_event(1)), ReplayResult("edge/s1/gw1", {"request_id": "\x00"})],
            AcceptAll(),
        )
    assert await conn.fetchval("SELECT count(*) FROM events") == 0


async def test_writers_of_the_same_device_wait_for_each_other(conn, pg_dsn: str) -> None:
    """A batch for a device takes that device's advisory lock: while another transaction holds
    it, the batch waits (instances in a group must not merge one device's ranges at once)."""
    other = await asyncpg.connect(pg_dsn)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", SOURCE)
        write = asyncio.create_task(write_batch(conn, events(scan_event(1)), AcceptAll()))
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        async with asyncio.timeout(30):
            while not await other.fetchval(waiting):
                assert not write.done(), "the batch committed without waiting for the lock"
                await asyncio.sleep(0.01)
        assert not write.done()
        assert await other.fetchval("SELECT count(*) FROM events") == 0
        await tx.commit()
        outcome = await asyncio.wait_for(write, 30)
        assert outcome.stored == 1
        # another device's batch does not wait for this one's lock
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", SOURCE)
        outcome = await asyncio.wait_for(
            write_batch(conn, events(scan_event(1, device="other")), AcceptAll()), 30
        )
        assert outcome.stored == 1
        await tx.rollback()
    finally:
        await other.close()
