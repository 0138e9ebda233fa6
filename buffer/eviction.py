"""The size cap's policy (DESIGN section 4): what goes, in which order, when an event needs room.

Run inside the commit's own transaction on the SQLite thread, so the rows it deletes and the
event it makes room for are committed together or not at all.
"""

from __future__ import annotations

import collections
import sqlite3
from dataclasses import dataclass, field

import structlog

from buffer.rows import chunks, marks
from buffer.schema import STATE_PENDING, STATE_SENT

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


def make_room(conn: sqlite3.Connection, over: int, keep_unconfirmed: frozenset[str]) -> Room:
    """Delete rows by policy until ``over`` payload bytes are free; nothing if that cannot be.

    First the oldest sent events that need nothing more (their replay window shrinks), then the
    oldest sent events still awaiting a central confirm (delivered: only their confirmability
    and replay are lost; counted and logged), then the oldest pending telemetry (``droppable``,
    counted as dropped). Scans and RFID events are never deleted while pending. When even all of
    that would not free enough, nothing is deleted: refusing the new event is then unavoidable,
    and dropping telemetry for it would lose data for nothing.
    """
    awaiting = awaiting_confirm_sql(keep_unconfirmed)
    victims: list[tuple[str, list[int]]] = []
    needed = over
    for condition, counter in (
        (f"state >= {STATE_SENT} AND NOT ({awaiting})", "evicted_sent"),
        (f"state >= {STATE_SENT}", "evicted_unconfirmed"),
        (f"state = {STATE_PENDING} AND droppable = 1", "dropped"),
    ):
        if needed <= 0:
            break
        taken = {rowid for _, rowids in victims for rowid in rowids}
        picked: list[int] = []
        for rowid, length in conn.execute(
            f"SELECT rowid, length(payload) FROM events WHERE {condition} ORDER BY rowid"  # noqa: S608 - constant conditions
        ):
            if rowid in taken:
                continue
            picked.append(int(rowid))
            needed -= int(length)
            if needed <= 0:
                break
        victims.append((counter, picked))
    room = Room()
    if needed > 0:
        return room
    for counter, rowids in victims:
        for chunk in chunks(rowids):
            freed = conn.execute(
                f"DELETE FROM events WHERE rowid IN ({marks(len(chunk))})"  # noqa: S608
                " RETURNING length(payload)",
                chunk,
            ).fetchall()
            room.freed += sum(int(r[0]) for r in freed)
        if rowids:
            room.counts[counter] += len(rowids)
    return room
