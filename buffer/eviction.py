"""The size cap's policy (contract section 4): what goes, in which order, when an event needs room.

Run inside the commit's own transaction on the SQLite thread, so the rows it deletes and the
event it makes room for are committed together or not at all.
"""

from __future__ import annotations

import collections
import sqlite3
from dataclasses import dataclass, field

import structlog

from buffer import counts, dropped
from buffer.rows import chunks, marks
from buffer.schema import STATE_HELD, STATE_PENDING, STATE_SENT

log = structlog.get_logger(__name__)


def awaiting_confirm_sql(keep_unconfirmed: frozenset[str]) -> str:
    """SQL condition for a sent row that retention must keep until its confirm arrives.

    ``keep_unconfirmed`` are the devices at the ``accepted`` level. Device ids come from the
    validated config; they are still quoted as SQL literals, never interpolated raw.
    """
    if not keep_unconfirmed:
        return "0"
    names = ",".join("'" + d.replace("'", "''") + "'" for d in sorted(keep_unconfirmed))
    return f"state = {STATE_SENT} AND droppable = 0 AND device IN ({names})"


@dataclass(slots=True)
class Room:
    """What :func:`make_room` deleted."""

    freed: int = 0
    """Payload bytes deleted."""
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    """Rows deleted, by transition name (evicted_sent, evicted_unconfirmed, dropped)."""


_POLICY = (
    ("evicted_sent", "state >= {sent} AND NOT ({awaiting})"),
    ("evicted_unconfirmed", "state >= {sent}"),
    ("dropped", "state IN ({held}, {pending}) AND droppable = 1"),
)


@dataclass(slots=True)
class _Victims:
    """Rows chosen by one step of the policy."""

    counter: str
    rowids: list[int] = field(default_factory=list)
    seqs: list[tuple[str, int]] = field(default_factory=list)


def _pick(
    conn: sqlite3.Connection, step: _Victims, condition: str, needed: int, taken: set[int]
) -> int:
    """Add the oldest rows matching ``condition`` to ``step``; returns the bytes still needed."""
    for rowid, length, device, seq in conn.execute(
        f"SELECT rowid, length(payload), device, seq FROM events WHERE {condition}"  # noqa: S608 - constant conditions
        " ORDER BY rowid"
    ):
        if rowid in taken:
            continue
        step.rowids.append(int(rowid))
        step.seqs.append((str(device), int(seq)))
        needed -= int(length)
        if needed <= 0:
            break
    return needed


def make_room(conn: sqlite3.Connection, over: int, keep_unconfirmed: frozenset[str]) -> Room:
    """Delete rows by policy until ``over`` payload bytes are free; nothing if that cannot be.

    First the oldest sent events that need nothing more (their replay window shrinks), then the
    oldest sent events still awaiting a central confirm (delivered: only their confirmability
    and replay are lost; counted and logged), then the oldest pending telemetry (``droppable``,
    counted as dropped, its seqs recorded by buffer/dropped.py). Scans and RFID events are never
    deleted while pending. When even all of that would not free enough, nothing is deleted:
    refusing the new event is then unavoidable, and dropping telemetry for it would lose data
    for nothing.
    """
    awaiting = awaiting_confirm_sql(keep_unconfirmed)
    steps: list[_Victims] = []
    taken: set[int] = set()
    needed = over
    for counter, template in _POLICY:
        if needed <= 0:
            break
        step = _Victims(counter)
        condition = template.format(
            sent=STATE_SENT, pending=STATE_PENDING, held=STATE_HELD, awaiting=awaiting
        )
        needed = _pick(conn, step, condition, needed, taken)
        taken.update(step.rowids)
        steps.append(step)
    room = Room()
    if needed > 0:
        return room
    for step in steps:
        for chunk in chunks(step.rowids):
            rows = conn.execute(
                f"DELETE FROM events WHERE rowid IN ({marks(len(chunk))})"  # noqa: S608
                " RETURNING device, state, droppable, length(payload)",
                chunk,
            ).fetchall()
            tally = counts.Tally()
            room.freed += tally.deleted(rows)
            tally.apply(conn)
        if step.rowids:
            room.counts[step.counter] += len(step.rowids)
        if step.counter == "dropped":
            dropped.record(conn, step.seqs)
    return room
