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

from collections import defaultdict

import asyncpg
import pytest

from central.ledger import merge_ranges, write_batch
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


async def test_a_valid_seq_of_max_bigint_is_refused_as_before(conn) -> None:
    """DISMISSED as a regression: seq 2**63-1 passes the validator, and the batch holding it
    fails with ``bigint out of range`` (``n.hi + 1``, an index condition evaluated for every
    new span, even of a device with no stored range). The three statements before 0502b84 had
    the same ``n.hi + 1`` in their SELECT and failed the same batches the same way (checked
    against ``git show 0502b84^:central/ledger.py`` on this PostgreSQL: a fresh device, a
    device with a far range, one with 2**63-2 stored, empty and 20,000-range tables; both
    plans are the same nested loop on ``seq_ranges_pkey``). Pinned here: it is still a
    ``DataError`` (``Central._write`` halves the batch and quarantines that event alone, the
    rest commits) and nothing of the batch stays. The hole itself, older than the change, is
    the xfail below."""
    (top,) = events(scan_event(MAX, event_id="top"))
    await write_batch(conn, events(scan_event(5, event_id="five")), AcceptAll())
    with pytest.raises(asyncpg.DataError, match="bigint out of range"):
        await write_batch(conn, [*events(scan_event(6, event_id="six")), top], AcceptAll())
    assert await ranges(conn) == {"/s1/gw1/dock": [(5, 5)]}
    assert await held_seqs(conn) == {"/s1/gw1/dock": {5}}
    await check_books(conn)


@pytest.mark.xfail(
    strict=True,
    raises=asyncpg.DataError,
    reason="PROVEN (pre-existing, NOT from 0502b84: the old SELECT had the same n.hi + 1):"
    " seq 2**63-1 is valid for central/validate.py but every batch holding it fails with"
    " 'bigint out of range' in the seq-range merge, so that event is quarantined, never"
    " stored nor confirmed",
)
async def test_a_valid_seq_of_max_bigint_is_stored(conn) -> None:
    validator = Validator(prefix="edge", max_payload=65536, keep_bytes=100)
    top = validator.check("edge/s1/gw1/events/dock", raw(scan_event(MAX, event_id="top")))
    assert isinstance(top, Event)
    outcome = await write_batch(conn, [top], AcceptAll())
    assert outcome.stored == 1
    assert await ranges(conn) == {"/s1/gw1/dock": [(MAX, MAX)]}
