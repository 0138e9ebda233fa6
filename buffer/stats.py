"""What the buffer holds, for ``status``, checkpoints and metrics.

Shared by the running daemon and by ``edge-gateway status`` in another process, which opens the
file read-only: WAL lets it read while the daemon writes.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite

from buffer.connection import BufferConnection, read_only_uri
from buffer.rows import marks
from buffer.schema import STATE_NAMES, STATE_SENT

DROPPED_SINCE_VERSION = 3
"""The schema version that records deliberate drops (buffer/dropped.py)."""
COUNTS_SINCE_VERSION = 4
"""The schema version that keeps the counts instead of scanning for them (buffer/counts.py)."""
RANGES_SHOWN = 20
"""Newest dropped ranges per device shown in stats and the checkpoint; the count is complete."""


@dataclass(slots=True)
class DeviceStats:
    """One device's counters as the buffer sees them."""

    device: str
    last_seq: int = 0
    last_sent_seq: int = 0
    pending: int = 0
    oldest_pending_age_s: float | None = None
    status: str | None = None
    detail: str | None = None
    since: str | None = None
    dropped_events: int = 0
    """Telemetry deleted on purpose at the size cap, ever: those seqs will never be delivered."""
    dropped_ranges: list[tuple[int, int]] = field(default_factory=list)
    """The newest of those holes as inclusive seq ranges (buffer/dropped.py)."""
    unconfirmed: int = 0
    """Sent events of an ``accepted``-level device still awaiting central's verdict."""
    lowest_unconfirmed_seq: int | None = None
    """The lowest seq among them: central re-confirms from here (docs/confirmation.md)."""


@dataclass(slots=True)
class BufferStats:
    """The buffer at one instant."""

    by_state: dict[str, int] = field(default_factory=dict)
    oldest_unsent_age_s: float | None = None
    payload_bytes: int = 0
    devices: dict[str, DeviceStats] = field(default_factory=dict)

    @property
    def unsent(self) -> int:
        """Events not yet acknowledged by the broker (pending or in flight)."""
        return self.by_state.get("pending", 0) + self.by_state.get("in_flight", 0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, for ``status --json`` and the checkpoint."""
        out = asdict(self)
        out["unsent"] = self.unsent
        return out


async def collect_stats(
    conn: aiosqlite.Connection,
    now: float | None = None,
    *,
    payload_bytes: int | None = None,
    awaiting_verdict: Collection[str] = (),
) -> BufferStats:
    """Every figure, in one round trip and one read transaction on ``conn``'s thread.

    From schema v4 on, O(devices): the counts kept by the writes themselves and one short walk
    of the ``(device, seq)`` index per device (buffer/counts.py); ``payload_bytes`` (the daemon
    keeps it in memory) is then only a shortcut. An older file (``status`` run before the daemon
    migrated it) is scanned as before. ``awaiting_verdict`` names the devices at
    ``confirm = "accepted"``: their sent events without a verdict are counted per device.
    """
    return await BufferConnection(conn).read(
        partial(
            read_figures,
            now=time.time() if now is None else now,
            payload_bytes=payload_bytes,
            awaiting_verdict=frozenset(awaiting_verdict),
        )
    )


def read_figures(
    conn: sqlite3.Connection,
    now: float,
    payload_bytes: int | None = None,
    awaiting_verdict: frozenset[str] = frozenset(),
) -> BufferStats:
    """:func:`collect_stats` on the SQLite thread, in one read transaction."""
    conn.execute("BEGIN")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version >= COUNTS_SINCE_VERSION:
            stats = _kept_figures(conn, now, awaiting_verdict)
        else:
            stats = scan_figures(conn, now, awaiting_verdict)
        if version >= DROPPED_SINCE_VERSION:
            _add_dropped(conn, stats)
    finally:
        conn.execute("COMMIT")
    if payload_bytes is not None:
        stats.payload_bytes = payload_bytes
    ages = [
        d.oldest_pending_age_s for d in stats.devices.values() if d.oldest_pending_age_s is not None
    ]
    stats.oldest_unsent_age_s = max(ages) if ages else None
    return stats


_FIRST_UNSENT = (
    # ``+state``: walk the (device, seq) index from the low mark, not the unsent rows' index.
    "SELECT created FROM events WHERE device = ? AND seq >= ? AND +state < 2 ORDER BY seq LIMIT 1"
)
_FIRST_UNCONFIRMED = (
    f"SELECT seq FROM events WHERE device = ? AND seq >= ? AND +state = {STATE_SENT}"  # noqa: S608
    " AND droppable = 0 ORDER BY seq LIMIT 1"
)


def _kept_figures(
    conn: sqlite3.Connection, now: float, awaiting_verdict: frozenset[str]
) -> BufferStats:
    """Schema v4 on: the counts as kept, and each device's first unsent and unconfirmed row.

    The oldest unsent event of a device is its unsent event with the lowest seq (the first
    stored of them): the same as the lowest ``created`` unless the wall clock was set back.
    """
    stats = BufferStats(by_state=dict.fromkeys(STATE_NAMES.values(), 0))
    for state, events in conn.execute("SELECT state, events FROM unsent_states"):
        stats.by_state[STATE_NAMES[int(state)]] = int(events)
    walks: list[tuple[DeviceStats, int, int]] = []
    for row in conn.execute(
        "SELECT device, last_seq, last_sent_seq, status, detail, since, payload_bytes,"
        " unsent_events, sent_events, sent_telemetry, confirmed_events, rejected_events,"
        " unsent_from, unsettled_from FROM devices"
    ):
        device, last_seq, last_sent, status, detail, since, size, unsent, sent, telemetry = row[:10]
        confirmed, rejected, unsent_from, unsettled_from = row[10:]
        dev = DeviceStats(
            device, int(last_seq), int(last_sent), int(unsent), None, status, detail, since
        )
        stats.devices[device] = dev
        stats.payload_bytes += int(size)
        stats.by_state["sent"] += int(sent) + int(telemetry)
        stats.by_state["confirmed"] += int(confirmed)
        stats.by_state["rejected"] += int(rejected)
        if device in awaiting_verdict:
            dev.unconfirmed = int(sent)
        walks.append((dev, int(unsent_from), int(unsettled_from)))
    for dev, unsent_from, unsettled_from in walks:
        if dev.pending:
            first = conn.execute(_FIRST_UNSENT, (dev.device, unsent_from)).fetchone()
            if first is not None:
                dev.oldest_pending_age_s = round(now - float(first[0]), 3)
        if dev.unconfirmed:
            first = conn.execute(_FIRST_UNCONFIRMED, (dev.device, unsettled_from)).fetchone()
            if first is not None:
                dev.lowest_unconfirmed_seq = int(first[0])
    return stats


def scan_figures(
    conn: sqlite3.Connection, now: float, awaiting_verdict: Collection[str] = ()
) -> BufferStats:
    """The figures counted from the events table itself: a scan (~1.7 s at a million rows).

    For files older than schema v4, and the reference the kept counts are tested against.
    """
    stats = BufferStats(by_state=dict.fromkeys(STATE_NAMES.values(), 0))
    for state, count, size in conn.execute(
        "SELECT state, count(*), coalesce(sum(length(payload)), 0) FROM events GROUP BY state"
    ):
        stats.by_state[STATE_NAMES.get(int(state), str(state))] = int(count)
        stats.payload_bytes += int(size)
    for device, last_seq, last_sent, status, detail, since in conn.execute(
        "SELECT device, last_seq, last_sent_seq, status, detail, since FROM devices"
    ):
        stats.devices[device] = DeviceStats(
            device, int(last_seq), int(last_sent), 0, None, status, detail, since
        )
    for device, count, oldest in conn.execute(
        "SELECT device, count(*), min(created) FROM events WHERE state < 2 GROUP BY device"
    ):
        dev = stats.devices.setdefault(device, DeviceStats(device))
        dev.pending = int(count)
        dev.oldest_pending_age_s = round(now - float(oldest), 3)
    for device, count, lowest in unconfirmed_by_device(conn, awaiting_verdict):
        dev = stats.devices.setdefault(device, DeviceStats(device))
        dev.unconfirmed = count
        dev.lowest_unconfirmed_seq = lowest
    return stats


def _add_dropped(conn: sqlite3.Connection, stats: BufferStats) -> None:
    """Deliberate holes per device (schema v3 on)."""
    for device, count in conn.execute("SELECT device, dropped_events FROM devices"):
        if device in stats.devices:
            stats.devices[device].dropped_events = int(count)
    for device, first, last in conn.execute(
        "SELECT device, from_seq, to_seq FROM (SELECT device, from_seq, to_seq, row_number()"
        " OVER (PARTITION BY device ORDER BY from_seq DESC) AS n FROM dropped) WHERE n <= ?"
        " ORDER BY device, from_seq",
        (RANGES_SHOWN,),
    ):
        if device in stats.devices:
            stats.devices[device].dropped_ranges.append((int(first), int(last)))


def unconfirmed_by_device(
    conn: sqlite3.Connection, devices: Collection[str]
) -> list[tuple[str, int, int]]:
    """(device, count, lowest seq) of sent events still awaiting central's verdict, by a scan.

    Only for ``devices`` (those at ``confirm = "accepted"``; at other levels nobody sends a
    verdict, so "sent" is final) and only events that are not telemetry, the same rows the
    buffer keeps past retention until they are settled. A confirm that central sent but the
    gateway never committed (the broker's session expired, or it was evicted from the broker's
    queue) shows up here, so central can send it again. Files from schema v4 on keep these
    figures instead (buffer/counts.py).
    """
    if not devices:
        return []
    return [
        (str(d), int(n), int(low))
        for d, n, low in conn.execute(
            "SELECT device, count(*), min(seq) FROM events"  # noqa: S608 - placeholders only
            f" WHERE state = {STATE_SENT} AND droppable = 0 AND device IN ({marks(len(devices))})"
            " GROUP BY device",
            tuple(devices),
        )
    ]


async def open_reader(path: Path) -> aiosqlite.Connection:
    """A read-only connection: WAL lets it read while the writer commits, without blocking it."""
    conn = await aiosqlite.connect(read_only_uri(path), uri=True)
    try:
        await conn.execute("PRAGMA busy_timeout=5000")
    except BaseException:
        await conn.close()
        raise
    return conn


@contextlib.asynccontextmanager
async def reader(path: Path) -> AsyncIterator[aiosqlite.Connection]:
    """:func:`open_reader` for one ``async with`` block."""
    conn = await open_reader(path)
    try:
        yield conn
    finally:
        await conn.close()


async def read_stats(path: Path, *, awaiting_verdict: Collection[str] = ()) -> BufferStats | None:
    """Stats from a buffer file owned by another process; None when it does not exist yet."""
    if not path.exists():  # noqa: ASYNC240 - one stat() call
        return None
    async with reader(path) as conn:
        return await collect_stats(conn, awaiting_verdict=awaiting_verdict)


async def read_recent(path: Path, limit: int = 5) -> list[dict[str, Any]]:
    """The newest events in the buffer (any state), newest first, for live views."""
    if not path.exists():  # noqa: ASYNC240 - one stat() call
        return []
    async with (
        reader(path) as conn,
        conn.execute(
            "SELECT state, payload FROM events ORDER BY rowid DESC LIMIT ?", (limit,)
        ) as cur,
    ):
        rows = await cur.fetchall()
    out = []
    for state, payload in rows:
        event = json.loads(payload)
        event["_state"] = STATE_NAMES.get(int(state), str(state))
        out.append(event)
    return out
