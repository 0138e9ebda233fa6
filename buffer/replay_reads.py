"""Reads for replays: is a seq range still held, and its delivered rows in seq order.

Plain functions on a ``sqlite3.Connection`` so that the daemon and ``edge-gateway replay`` run
the same queries. The range check runs on a read-only connection (WAL lets it read while the
writer commits), never under the buffer's lock; the daemon reads the rows themselves on the
buffer's connection, a chunk per round trip.
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


def _held(conn: sqlite3.Connection, device: str, seq: int) -> bool:
    """Whether ``seq`` is stored or was dropped on purpose: two lookups in primary keys."""
    if conn.execute("SELECT 1 FROM events WHERE device = ? AND seq = ?", (device, seq)).fetchone():
        return True
    return bool(
        conn.execute(
            "SELECT 1 FROM dropped WHERE device = ? AND from_seq <= ? AND to_seq >= ?"
            " ORDER BY from_seq DESC LIMIT 1",
            (device, seq, seq),
        ).fetchone()
    )


def check_range(
    conn: sqlite3.Connection, device: str, from_seq: int, to_seq: int | None
) -> ReplayRange:
    """Whether every seq of the range is still here or was dropped on purpose.

    ``to_seq`` None means up to the last stored one. Cheap for a refusal: retention takes the
    oldest events first, so a range that is no longer held almost always lacks its first seq,
    which two index lookups tell (issue 18, finding 8: the count over a million rows took
    0.17 s). Only a range whose two ends are held is counted, on the ``(device, seq)`` index
    alone (no table row is read), and its undelivered events on the small partial index of
    unsent rows.
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
    complete = _held(conn, device, from_seq) and _held(conn, device, end)
    if complete:
        held = int(
            conn.execute(
                "SELECT count(*) FROM events WHERE device = ? AND seq BETWEEN ? AND ?",
                (device, from_seq, end),
            ).fetchone()[0]
        )
        found.dropped = dropped.in_range(conn, device, from_seq, end)
        held += sum(last - first + 1 for first, last in found.dropped)
        complete = held >= end - from_seq + 1
    if not complete:
        oldest = conn.execute(
            "SELECT min(seq) FROM events WHERE device = ? AND seq BETWEEN ? AND ?",
            (device, from_seq, end),
        ).fetchone()[0]
        where = f"oldest retained in range is {oldest}" if oldest is not None else "none retained"
        found.error = f"range {from_seq}..{end} is no longer fully retained ({where})"
        return found
    found.unsent = int(
        conn.execute(
            "SELECT count(*) FROM events INDEXED BY events_unsent"
            " WHERE state < 2 AND device = ? AND seq BETWEEN ? AND ?",
            (device, from_seq, end),
        ).fetchone()[0]
    )
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


MAX_MISSING_RANGES = 20
"""Missing ranges named in a replay's answer; the count of missing events is complete."""


def lost_in_gaps(
    conn: sqlite3.Connection, device: str, gaps: list[tuple[int, int]]
) -> tuple[int, list[tuple[int, int]]]:
    """Of the seqs a replay skipped (``gaps``), those deleted since its range check.

    A skipped seq is either still stored (not delivered yet: the publisher sends it), dropped
    on purpose (recorded), or deleted by retention or the size cap while the replay ran: only
    those are lost to it. Returns their count and the first :data:`MAX_MISSING_RANGES` of them
    as inclusive ranges.
    """
    lost = 0
    ranges: list[tuple[int, int]] = []
    for first, last in gaps:
        covered = sorted(
            [
                (int(r[0]), int(r[0]))
                for r in conn.execute(
                    "SELECT seq FROM events WHERE device = ? AND seq BETWEEN ? AND ?",
                    (device, first, last),
                )
            ]
            + dropped.in_range(conn, device, first, last)
        )
        cursor = first
        for a, b in [*covered, (last + 1, last + 1)]:
            if a > cursor:
                lost += a - cursor
                if len(ranges) < MAX_MISSING_RANGES:
                    ranges.append((cursor, a - 1))
            cursor = max(cursor, b + 1)
    return lost, ranges


def still_unsent(
    conn: sqlite3.Connection, device: str, from_seq: int, to_seq: int
) -> tuple[int, list[tuple[int, int]]]:
    """A range's figures as a replay ends: events not delivered yet, and the dropped ranges.

    Read again at the end, not taken from the range check: telemetry pending at the check may
    have been dropped at the cap while the replay ran, and must then be reported as dropped
    (it will never come), not as unsent (central would wait for it).
    """
    row = conn.execute(
        "SELECT count(*) FROM events WHERE device = ? AND seq BETWEEN ? AND ? AND state < 2",
        (device, from_seq, to_seq),
    ).fetchone()
    return (int(row[0]) if row else 0), dropped.in_range(conn, device, from_seq, to_seq)
