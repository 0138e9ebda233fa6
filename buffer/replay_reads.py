"""Reads for replays: is a seq range still held, and its delivered rows in seq order.

Plain functions on a ``sqlite3.Connection`` so that the daemon (on the buffer's own connection,
between writes) and ``edge-gateway replay`` (on a read-only connection to a file a daemon may be
writing) run the same queries.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from buffer import dropped
from buffer.rows import OutgoingEvent, fetch_outgoing
from buffer.schema import STATE_SENT


@dataclass(slots=True)
class ReplayRange:
    """A device's stored events in a seq range, or why the range cannot be replayed."""

    device: str
    from_seq: int
    to_seq: int
    error: str | None = None
    unsent: int = 0
    """Events in the range not yet delivered: the publisher sends them anyway, not the replay."""
    dropped: list[tuple[int, int]] = field(default_factory=list)
    """Sub-ranges deleted on purpose (telemetry at the size cap): they will never come."""


def check_range(
    conn: sqlite3.Connection, device: str, from_seq: int, to_seq: int | None
) -> ReplayRange:
    """Whether every seq of the range is still here or was dropped on purpose.

    ``to_seq`` None means up to the last stored one.
    """
    row = conn.execute("SELECT last_seq FROM devices WHERE device = ?", (device,)).fetchone()
    if row is None or int(row[0]) == 0:
        return ReplayRange(device, from_seq, to_seq or 0, error=f"unknown device {device!r}")
    last = int(row[0])
    end = last if to_seq is None else to_seq
    found = ReplayRange(device, from_seq, end)
    if to_seq is None and from_seq > last:
        found.error = f"from_seq {from_seq} is beyond the last stored seq {last}"
    elif from_seq < 1 or end < from_seq:
        found.error = f"bad range {from_seq}..{end} (stored seqs are 1..{last})"
    elif end > last:
        found.error = f"to_seq {end} is beyond the last stored seq {last}"
    if found.error:
        return found
    row = conn.execute(
        "SELECT count(*), coalesce(sum(state < 2), 0), min(seq) FROM events"
        " WHERE device = ? AND seq BETWEEN ? AND ?",
        (device, from_seq, end),
    ).fetchone()
    held, unsent, oldest = (int(row[0]), int(row[1]), row[2]) if row else (0, 0, None)
    found.dropped = dropped.in_range(conn, device, from_seq, end)
    held += sum(last - first + 1 for first, last in found.dropped)
    if held < end - from_seq + 1:
        where = f"oldest retained in range is {oldest}" if oldest is not None else "none retained"
        found.error = f"range {from_seq}..{end} is no longer fully retained ({where})"
    found.unsent = unsent
    return found


def delivered_rows(
    conn: sqlite3.Connection, device: str, from_seq: int, to_seq: int, limit: int
) -> list[OutgoingEvent]:
    """Rows already delivered once (sent, confirmed or rejected) in a seq range, seq order."""
    return fetch_outgoing(
        conn,
        "SELECT rowid, id, device, seq, payload, created FROM events WHERE device = ?"
        " AND seq BETWEEN ? AND ? AND state >= ? ORDER BY seq LIMIT ?",
        (device, from_seq, to_seq, STATE_SENT, limit),
        backlog=True,
    )
