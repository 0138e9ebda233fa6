"""Review of 0502b84: the seq ranges merged inside the books statement (``_BOOKS``).

``seq_ranges`` is what parity and gap replay trust to say which seqs of a device the ledger
holds. These tests try to make the one-statement merge (a ``DELETE ... RETURNING`` of the
touched ranges, gaps and islands by window functions, an ``INSERT`` of the islands) write
ranges that differ from the seqs in ``events``, or per-device figures and counters that differ
from the rows, or fail a batch that the three statements before did not fail. The oracle is
never the statement under test: after each batch, the ranges must be ``merge_ranges`` of the
ranges before and of the seqs that the batch added to ``events`` (read from ``events``).

A test marked ``xfail(strict=True, reason="PROVEN: ...")`` shows a hole; the others pin a
suspicion that was dismissed.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import Any

import asyncpg

from central.ledger import Checkpoint, merge_ranges, write_batch
from central.rules import AcceptAll
from central.validate import Event, Validator

from .helpers import events, raw, scan_event

MAX = 2**63 - 1
"""The largest seq the validator takes (``1 <= seq < 2**63``) and the largest bigint."""


async def ranges(conn: asyncpg.Connection) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for r in await conn.fetch("SELECT source, first_seq, last_seq FROM seq_ranges ORDER BY 1, 2"):
        out[r["source"]].append((r["first_seq"], r["last_seq"]))
    return dict(out)


async def held_seqs(conn: asyncpg.Connection) -> dict[str, set[int]]:
    out: dict[str, set[int]] = defaultdict(set)
    for r in await conn.fetch("SELECT source, seq FROM events"):
        out[r["source"]].add(r["seq"])
    return dict(out)


def as_ranges(seqs: dict[str, set[int]]) -> dict[str, list[tuple[int, int]]]:
    return {s: merge_ranges([(q, q) for q in v]) for s, v in seqs.items() if v}


async def check_books(conn: asyncpg.Connection) -> None:
    """Devices' ``held`` and the ``stored`` counter against the rows of ``events``."""
    per_device = dict(await conn.fetch("SELECT source, count(*) FROM events GROUP BY source"))
    devices = dict(await conn.fetch("SELECT source, held FROM devices WHERE held > 0"))
    assert devices == per_device
    stored = await conn.fetchval("SELECT value FROM counters WHERE name = 'stored'")
    assert stored == sum(per_device.values())


async def test_a_valid_seq_of_max_bigint_is_stored(conn) -> None:
    """Once PROVEN (older than 0502b84: the three statements before it had the same
    ``n.hi + 1``): seq 2**63-1 passes the validator, and every batch holding it failed with
    ``bigint out of range`` in the seq-range merge, so ``Central._write`` halved it until that
    event was quarantined alone, never stored nor confirmed. The merge now writes "adjoining"
    as ``first - 1 <= last``: the event is stored, joins the range below it, and the rest of
    its batch commits with it."""
    validator = Validator(prefix="edge", max_payload=65536, keep_bytes=100)
    top = validator.check("edge/s1/gw1/events/dock", raw(scan_event(MAX, event_id="top")))
    assert isinstance(top, Event)
    outcome = await write_batch(conn, [top], AcceptAll())
    assert outcome.stored == 1
    assert await ranges(conn) == {"/s1/gw1/dock": [(MAX, MAX)]}
    below = events(scan_event(MAX - 1, event_id="below"), scan_event(6, event_id="six"))
    assert (await write_batch(conn, below, AcceptAll())).stored == 2
    assert await ranges(conn) == {"/s1/gw1/dock": [(6, 6), (MAX - 1, MAX)]}
    assert as_ranges(await held_seqs(conn)) == await ranges(conn)
    await check_books(conn)


async def test_the_seqs_just_below_max_bigint_merge(conn) -> None:
    """Seqs just below 2**63-1 merge below, on either side, and bridging (the window's
    "adjoining" test is ``lo - 1 <= max(hi)``: it cannot overflow)."""
    top = MAX - 1
    await write_batch(conn, events(scan_event(top, event_id="t0")), AcceptAll())
    await write_batch(conn, events(scan_event(top - 2, event_id="t2")), AcceptAll())
    assert await ranges(conn) == {"/s1/gw1/dock": [(top - 2, top - 2), (top, top)]}
    await write_batch(
        conn, events(scan_event(top - 1, event_id="t1"), scan_event(1, event_id="one")), AcceptAll()
    )
    assert await ranges(conn) == {"/s1/gw1/dock": [(1, 1), (top - 2, top)]}
    assert as_ranges(await held_seqs(conn)) == await ranges(conn)
    await check_books(conn)


async def test_a_batch_bridging_several_ranges_on_both_sides(conn) -> None:
    """DISMISSED: one stored range touched by two new spans (below and above) comes back
    once (PostgreSQL deletes a row once however many ``USING`` rows match it, and returns it
    once); several stored ranges bridged by one batch become one; a range keeping its
    ``first_seq`` is written again in the same statement without a key conflict."""
    stored = [5, 6, 7, 10, 20, 21, 30, 40]
    await write_batch(conn, events(*[scan_event(s, event_id=f"a{s}") for s in stored]), AcceptAll())
    assert await ranges(conn) == {"/s1/gw1/dock": [(5, 7), (10, 10), (20, 21), (30, 30), (40, 40)]}
    new = [4, 8, 9, 11, 19, 22, 29, 31, 41, 50]
    outcome = await write_batch(
        conn, events(*[scan_event(s, event_id=f"b{s}") for s in new]), AcceptAll()
    )
    assert outcome.stored == len(new)
    assert await ranges(conn) == {"/s1/gw1/dock": [(4, 11), (19, 22), (29, 31), (40, 41), (50, 50)]}
    assert as_ranges(await held_seqs(conn)) == await ranges(conn)
    await check_books(conn)


async def test_a_batch_without_new_seqs_leaves_the_ranges(conn) -> None:
    """DISMISSED: a batch of only quarantined items and checkpoints (empty span arrays), or of
    duplicates and conflicts only (events but no span), touches no range and still counts."""
    await write_batch(conn, events(scan_event(3, event_id="x3")), AcceptAll())
    validator = Validator(prefix="edge", max_payload=65536, keep_bytes=100)
    bad = validator.check("edge/s1/gw1/events/dock", b"nope")
    outcome = await write_batch(conn, [bad, Checkpoint("edge/s1/gw1", {"n": 1})], AcceptAll())
    assert outcome.quarantined == 1
    assert await ranges(conn) == {"/s1/gw1/dock": [(3, 3)]}
    outcome = await write_batch(
        conn, events(scan_event(3, event_id="x3"), scan_event(3, event_id="other")), AcceptAll()
    )
    assert (outcome.stored, outcome.duplicates, outcome.conflicts) == (0, 1, 1)
    assert await ranges(conn) == {"/s1/gw1/dock": [(3, 3)]}
    counters = dict(await conn.fetch("SELECT name, value FROM counters"))
    assert counters == {"stored": 1, "duplicates": 1, "conflicts": 1, "quarantined": 1}
    await check_books(conn)


async def test_a_rollback_after_the_books_takes_the_merge_back(conn) -> None:
    """DISMISSED: the merge is in the batch's transaction; rolled back after the books
    statement ran (here an enclosing transaction, the batch's a savepoint), the deleted
    ranges are back and the inserted ones gone, as the events are."""
    await write_batch(
        conn, events(scan_event(5, event_id="a"), scan_event(7, event_id="b")), AcceptAll()
    )
    tx = conn.transaction()
    await tx.start()
    await write_batch(
        conn, events(scan_event(6, event_id="c"), scan_event(9, event_id="d")), AcceptAll()
    )
    assert await ranges(conn) == {"/s1/gw1/dock": [(5, 7), (9, 9)]}
    await tx.rollback()
    assert await ranges(conn) == {"/s1/gw1/dock": [(5, 5), (7, 7)]}
    assert as_ranges(await held_seqs(conn)) == await ranges(conn)
    await check_books(conn)


def random_batch(rng: random.Random, devices: list[str], pools: list[range]) -> list[Event]:
    """Seqs from small pools (so batches adjoin, bridge and overlap stored ranges), some
    redelivered with their id, some under another id (a conflict), many devices."""
    bodies: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 30)):
        device = rng.choice(devices)
        seq = rng.choice(rng.choice(pools))
        other = rng.random() < 0.1
        event_id = f"{device}-{seq}" + ("-x" if other else "")
        bodies.append(scan_event(seq, device=device, event_id=event_id))
    batch = events(*bodies)
    if rng.random() < 0.2:
        batch += batch[: rng.randint(1, 3)]
    return batch


async def test_random_batches_keep_the_ranges_equal_to_the_seqs_held(conn) -> None:
    """DISMISSED: 400 seeded batches over six devices, seqs in 1..80 and just below 2**63-1
    (a batch's seqs adjoining, bridging or inside stored ranges, many spans of one device,
    many devices, redeliveries, conflicts): after every batch the ranges are the seqs held,
    and the device figures and counter match the rows."""
    rng = random.Random(20261201)
    devices = [f"d{n}" for n in range(6)]
    pools = [range(1, 81), range(MAX - 40, MAX)]
    for _ in range(400):
        await write_batch(conn, random_batch(rng, devices, pools), AcceptAll())
        assert await ranges(conn) == as_ranges(await held_seqs(conn))
    await check_books(conn)


async def test_ranges_claiming_dropped_events_fold_as_before(conn) -> None:
    """DISMISSED: docs/central.md suggests dropping old ``events`` partitions while keeping
    ``seq_ranges``; ranges then claim seqs no longer in ``events``, and a redelivered event
    inserts a seq inside a stored range (a new span overlapping a touched one, even equal to
    it). The old code merged such overlaps in Python; the window does the same: the ranges
    after each batch are the union of the ranges before and the seqs the batch added."""
    rng = random.Random(7)
    devices = ["d0", "d1", "d2"]
    pools = [range(1, 40), range(MAX - 20, MAX)]
    for round_ in range(300):
        if round_ % 10 == 9:
            await conn.execute("DELETE FROM events WHERE random() < 0.3")
        before_ranges = await ranges(conn)
        before = await held_seqs(conn)
        await write_batch(conn, random_batch(rng, devices, pools), AcceptAll())
        after = await held_seqs(conn)
        expected: dict[str, list[tuple[int, int]]] = {}
        for source in set(before_ranges) | set(after):
            added = after.get(source, set()) - before.get(source, set())
            spans = before_ranges.get(source, []) + [(q, q) for q in added]
            if spans:
                expected[source] = merge_ranges(spans)
        assert await ranges(conn) == expected


async def test_two_instances_writing_at_once_keep_the_ranges(pg_dsn: str, conn) -> None:
    """DISMISSED: four connections (instances) writing seeded batches at once over the same
    devices and others of their own: no deadlock (advisory locks in source order before any
    row lock; the counters' rows in one order), and at the end the ranges are the seqs held
    and the figures match the rows."""
    conns = [await asyncpg.connect(pg_dsn) for _ in range(4)]
    try:

        async def writer(n: int, c: asyncpg.Connection) -> None:
            rng = random.Random(1000 + n)
            devices = ["shared0", "shared1", "shared2", f"own{n}"]
            for _ in range(120):
                await write_batch(c, random_batch(rng, devices, [range(1, 150)]), AcceptAll())

        async with asyncio.timeout(240):
            await asyncio.gather(*(writer(n, c) for n, c in enumerate(conns)))
    finally:
        for c in conns:
            await c.close()
    assert await ranges(conn) == as_ranges(await held_seqs(conn))
    await check_books(conn)
