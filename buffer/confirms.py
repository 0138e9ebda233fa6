"""Central's verdicts applied to stored events: one transaction, one round trip per batch.

A batch of thousands of verdicts (a drain's worth of accepts, or a flood of unknown ids from
anyone allowed to publish on the confirm topic) must not hold the buffer for seconds: a scan's
commit waits behind it. So the whole batch is a few set-based statements run on the SQLite
thread, not one or two round trips per id.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field

from buffer import counts
from buffer.event_ids import id_key
from buffer.rows import chunks, last_sent_params, marks
from buffer.schema import STATE_CONFIRMED, STATE_REJECTED, STATE_SENT


@dataclass(frozen=True, slots=True)
class Settled:
    """A confirm applied to a stored event: ``state`` is confirmed or rejected."""

    id: str
    device: str
    seq: int
    state: int


@dataclass(slots=True)
class SettleResult:
    """What one batch of confirms did: applied ones, repeats, and ids this buffer never held."""

    applied: list[Settled] = field(default_factory=list)
    duplicate: int = 0
    unknown: int = 0


def first_verdicts(verdicts: Sequence[tuple[str, bool]]) -> tuple[dict[str, bool], int]:
    """The first verdict per id, in arrival order, and how many later ones repeated an id."""
    first: dict[str, bool] = {}
    repeats = 0
    for event_id, accepted in verdicts:
        if event_id in first:
            repeats += 1
        else:
            first[event_id] = accepted
    return first, repeats


def settle(conn: sqlite3.Connection, first: dict[str, bool], now: float) -> SettleResult:
    """Apply ``first`` (id -> accepted) inside the caller's transaction (on the SQLite thread).

    Only an event not yet confirmed or rejected changes; one still pending or in flight may be
    confirmed too (the confirm overtook our PUBACK, or the PUBACK was lost): central has it, so
    it counts as sent. Ids matched but already settled are duplicates; the rest are unknown.
    """
    keys = {id_key(event_id): event_id for event_id in first}
    found: dict[str, Settled] = {}
    tally = counts.Tally()
    for state, accepted in ((STATE_CONFIRMED, True), (STATE_REJECTED, False)):
        wanted = [key for key, event_id in keys.items() if first[event_id] is accepted]
        for chunk in chunks(wanted):
            # Sent, the usual case; then those not marked sent yet, their states read first so
            # that the counts (buffer/counts.py) move from where each one was.
            before = {
                key: int(old)
                for key, old in conn.execute(
                    f"SELECT id, state FROM events WHERE id IN ({marks(len(chunk))})"  # noqa: S608
                    f" AND state < {STATE_SENT}",
                    chunk,
                )
            }
            for key, device, seq, droppable in conn.execute(
                f"UPDATE events SET state = ?, sent = coalesce(sent, ?)"  # noqa: S608 - marks only
                f" WHERE id IN ({marks(len(chunk))}) AND state < ?"
                " RETURNING id, device, seq, droppable",
                (state, now, *chunk, STATE_CONFIRMED),
            ).fetchall():
                event_id = keys[key]
                found[event_id] = Settled(event_id, str(device), int(seq), state)
                tally.move(str(device), int(droppable), before.get(key, STATE_SENT), state)
    tally.apply(conn)
    result = SettleResult(applied=[found[i] for i in first if i in found])
    rest = [key for key, event_id in keys.items() if event_id not in found]
    known = 0
    for chunk in chunks(rest):
        row = conn.execute(
            f"SELECT count(*) FROM events WHERE id IN ({marks(len(chunk))})",  # noqa: S608
            chunk,
        ).fetchone()
        known += int(row[0]) if row else 0
    result.duplicate = known
    result.unknown = len(rest) - known
    conn.executemany(counts.SETTLED, last_sent_params((s.device, s.seq) for s in result.applied))
    return result
