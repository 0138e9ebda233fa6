"""What the buffer holds, kept exact by the transactions that change it (schema v4).

``status``, the checkpoint and metrics need the events per state and device, the payload bytes,
each device's oldest unsent event and, for ``accepted``-level devices, the lowest seq still
awaiting a verdict. Counting them from ``events`` is a scan: sent events are kept for days, a
busy box holds millions of rows, and a soak made ``status`` take 0.8-1.8 s. So they are kept:

* per device, in its ``devices`` row: ``payload_bytes``, and events by state: ``unsent_events``
  (held, pending or in flight), ``sent_events`` (sent, not telemetry: what an ``accepted``
  device still awaits a verdict for), ``sent_telemetry``, ``confirmed_events``,
  ``rejected_events``;
* ``unsent_states``: how the unsent events split into held, pending and in flight (one row per
  state, for all devices: claims and releases move events between them and touch no device).

Every write that adds, deletes or moves rows adjusts them in the same transaction by the rows
it actually changed (known from its own selection, its ``RETURNING`` or its row count). The hot
paths fold them into the statement that already updates each device's row (the seq on append,
``last_sent_seq`` on a PUBACK), so keeping them costs no extra statement per device.

``devices.unsent_from`` and ``devices.unsettled_from`` are, per device, a seq below which no
event is unsent, and below which none awaits a verdict or still could (unsent, or sent and not
telemetry). A row never goes back below sent, so both only move up: marking events sent moves
the first to the device's first row still unsent, a verdict moves the second, stepping over
each row once. Readers start there on the ``(device, seq)`` index: each device's oldest unsent
event and lowest unconfirmed seq are one short index walk instead of a scan.

:func:`rebuild` recomputes all of it from the events (the v4 migration runs the same SQL); a
move of every row in one state (a release at the end of a session, the reset at open) checks
its row count against the kept figure and rebuilds, with an error in the log, if they differ.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Sequence

import structlog

from buffer.schema import REBUILD_COUNTS, STATE_CONFIRMED, STATE_SENT

log = structlog.get_logger(__name__)

COLUMNS = ("unsent_events", "sent_events", "sent_telemetry", "confirmed_events", "rejected_events")
"""The ``devices`` columns that count events, in the order of :func:`column`."""

_APPLY = (
    "UPDATE devices SET payload_bytes = payload_bytes + ?, "  # noqa: S608 - constant names
    + ", ".join(f"{c} = {c} + ?" for c in COLUMNS)
    + " WHERE device = ?"
)
_MOVE_UNSENT = "UPDATE unsent_states SET events = events + ? WHERE state = ?"

MARK_SENT = (
    "UPDATE devices SET last_sent_seq = max(last_sent_seq, ?1), unsent_events = unsent_events"
    " + ?2, sent_events = sent_events + ?3, sent_telemetry = sent_telemetry + ?4,"
    # The first row still unsent, from the mark on; when the mark falls inside the unbroken
    # run of seqs ?5..?6 this transaction just marked sent, from the run's end (no row of it
    # is read again). ``+state`` keeps SQLite on the (device, seq) index.
    " unsent_from = coalesce((SELECT seq FROM events WHERE events.device = devices.device"
    " AND seq >= (CASE WHEN devices.unsent_from BETWEEN ?5 AND ?6 THEN ?6 + 1"
    " ELSE devices.unsent_from END) AND +state < 2 ORDER BY seq LIMIT 1), last_seq + 1)"
    " WHERE device = ?7"
)
"""Per device whose events a PUBACK marked sent: (highest seq, the deltas of the first three
:data:`COLUMNS`, first and last seq of an unbroken run now sent (or an empty range), device)."""
SETTLED = (
    "UPDATE devices SET last_sent_seq = max(last_sent_seq, ?),"
    " unsettled_from = coalesce((SELECT seq FROM events WHERE events.device = devices.device"
    " AND seq >= devices.unsettled_from AND droppable = 0 AND +state <= 2 ORDER BY seq LIMIT 1),"
    " last_seq + 1)"
    " WHERE device = ?"
)
"""Per device a verdict settled events of: (highest seq, device)."""


def column(state: int, droppable: int) -> int:
    """Which of :data:`COLUMNS` counts an event in ``state``."""
    if state < STATE_SENT:
        return 0
    if state == STATE_SENT:
        return 2 if droppable else 1
    return 3 if state == STATE_CONFIRMED else 4


class Tally:
    """Changes to the kept figures, gathered in a transaction and applied at its end."""

    __slots__ = ("bytes", "devices", "unsent")

    def __init__(self) -> None:
        self.devices: dict[str, list[int]] = {}
        """device -> deltas of :data:`COLUMNS`."""
        self.unsent: collections.Counter[int] = collections.Counter()
        """held / pending / in-flight state -> delta."""
        self.bytes: collections.Counter[str] = collections.Counter()

    def add(self, device: str, state: int, droppable: int, n: int = 1) -> None:
        """``n`` events of ``device`` (negative: fewer) now in ``state``."""
        deltas = self.devices.get(device)
        if deltas is None:
            deltas = self.devices[device] = [0] * len(COLUMNS)
        deltas[column(state, droppable)] += n
        if state < STATE_SENT:
            self.unsent[state] += n

    def move(self, device: str, droppable: int, source: int, target: int, n: int = 1) -> None:
        """``n`` events of ``device`` moved from ``source`` to ``target``."""
        self.add(device, source, droppable, -n)
        self.add(device, target, droppable, n)

    def deleted(self, rows: Sequence[tuple[str, int, int, int]]) -> int:
        """Rows deleted; returns the payload bytes they held.

        ``rows`` as ``RETURNING device, state, droppable, length(payload)`` gives them.
        """
        freed = 0
        for device, state, droppable, size in rows:
            self.add(str(device), int(state), int(droppable), -1)
            self.bytes[str(device)] -= int(size)
            freed += int(size)
        return freed

    def row(self, device: str) -> list[int]:
        """``device``'s deltas in the order of :data:`COLUMNS` (zeros if none)."""
        return self.devices.get(device) or [0] * len(COLUMNS)

    def apply_unsent(self, conn: sqlite3.Connection) -> None:
        """Write the held / pending / in-flight deltas."""
        moves = [(n, state) for state, n in self.unsent.items() if n]
        if moves:
            conn.executemany(_MOVE_UNSENT, moves)

    def apply(self, conn: sqlite3.Connection) -> None:
        """Write every delta (one statement per device that changed, one per unsent state)."""
        self.apply_unsent(conn)
        rows = [
            (self.bytes[device], *deltas, device)
            for device in self.devices.keys() | self.bytes.keys()
            if any(deltas := self.row(device)) or self.bytes[device]
        ]
        if rows:
            conn.executemany(_APPLY, rows)


def add_unsent(conn: sqlite3.Connection, n: int, state: int) -> None:
    """``n`` more events in unsent ``state`` (appended: their devices' rows count them)."""
    if n:
        conn.execute(_MOVE_UNSENT, (n, state))


def move_unsent(conn: sqlite3.Connection, moved: int, source: int, target: int) -> None:
    """``moved`` events went from one unsent state to another (no device's figures change)."""
    if moved:
        conn.executemany(_MOVE_UNSENT, [(-moved, source), (moved, target)])


def in_state(conn: sqlite3.Connection, state: int) -> int:
    """Events in unsent ``state`` as kept."""
    row = conn.execute("SELECT events FROM unsent_states WHERE state = ?", (state,)).fetchone()
    return int(row[0]) if row else 0


def move_all(conn: sqlite3.Connection, source: int, target: int) -> int:
    """Move every event in unsent ``source`` to unsent ``target``; returns how many moved.

    The kept figure moves as a whole, after a check that it matches the rows that moved.
    """
    expected = in_state(conn, source)
    moved = conn.execute("UPDATE events SET state = ? WHERE state = ?", (target, source)).rowcount
    if moved != expected:
        log.error(
            "buffer_counts_rebuilt",
            state=source,
            counted=expected,
            found=moved,
            action="the kept counts disagreed with the events (file edited by hand?); recounted",
        )
        rebuild(conn)
    else:
        move_unsent(conn, moved, source, target)
    return moved


def rebuild(conn: sqlite3.Connection) -> None:
    """Recount everything from the events table (a scan), inside the caller's transaction."""
    for statement in REBUILD_COUNTS:
        conn.execute(statement)
