"""Opening the buffer file: permissions, pragmas, integrity check, quarantine and migrations.

The schema is versioned with ``PRAGMA user_version``; ``MIGRATIONS[n]`` takes a database from
version ``n`` to ``n + 1``. Only a file that is really damaged (SQLite says ``SQLITE_CORRUPT`` or
``SQLITE_NOTADB``, or the integrity check fails) is moved aside (never deleted) and a fresh one
created, with a loud error: the gateway keeps working, the damaged file is there for a
technician to recover from, and each device's seqs continue after the highest the damaged file
still shows. Any other error (the file locked by another process, an I/O error, no permission)
fails the start with a clear message and leaves the file alone: a busy buffer is not a broken
one, and systemd restarts the service.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite
import structlog

from buffer.connection import read_only_uri
from buffer.event_ids import id_key

log = structlog.get_logger(__name__)

STATE_HELD = -1
"""The broker refused it (a PUBACK reason code of 0x80 or more, or larger than the broker's
Maximum Packet Size): not delivered, kept, and tried again at the next broker session."""
STATE_PENDING = 0
STATE_IN_FLIGHT = 1
STATE_SENT = 2
STATE_CONFIRMED = 3
STATE_REJECTED = 4
STATE_NAMES = {
    STATE_HELD: "held_by_broker",
    STATE_PENDING: "pending",
    STATE_IN_FLIGHT: "in_flight",
    STATE_SENT: "sent",
    STATE_CONFIRMED: "confirmed",
    STATE_REJECTED: "rejected",
}

ProgressFn = Callable[[str], None]
"""Told, now and then, what a long step at open is doing (a migration of a big buffer), so the
daemon can tell systemd it is still starting."""

BUSY_TIMEOUT_MS = 5000
"""How long a statement waits for another process's lock before the open fails (not quarantine)."""

PACK_CHUNK = 20_000
"""Rows per transaction when packing ids: small enough to keep the WAL small, and the work done
so far is kept if the gateway is stopped part way."""


@contextlib.asynccontextmanager
async def transaction(conn: aiosqlite.Connection) -> AsyncIterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back if the block fails.

    A failing rollback (the connection is already broken) is ignored: the block's own error
    is the one worth raising.
    """
    await conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        await conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            await conn.execute("ROLLBACK")
        raise


async def _pack_ids(conn: aiosqlite.Connection, progress: ProgressFn) -> None:
    """v1 -> v2: store each id as its 16 bytes (buffer/event_ids.py), 40 bytes less per event.

    In place, not by rebuilding the table: a rebuild would leave the old table's pages free
    inside the file, doubling it on disk at the first start after an upgrade. ``id`` keeps its
    TEXT declaration; TEXT affinity stores a BLOB as it is. Rows already packed are skipped, so
    an interrupted run simply carries on at the next start.
    """
    async with conn.execute("SELECT coalesce(max(rowid), 0) FROM events") as cur:
        row = await cur.fetchone()
    last = int(row[0]) if row else 0
    for start in range(0, last, PACK_CHUNK):
        async with transaction(conn):
            await conn.execute(
                "UPDATE events SET id = edge_id_key(id)"
                " WHERE rowid > ? AND rowid <= ? AND typeof(id) = 'text'",
                (start, start + PACK_CHUNK),
            )
        progress(f"packing event ids: {min(start + PACK_CHUNK, last) * 100 // last} %")


REBUILD_COUNTS = (
    # A device with events but no devices row (never written by this gateway, but a file edited
    # by hand might have one) gets one, its last seq from its events, so its events are counted.
    (
        "INSERT INTO devices (device, last_seq) SELECT device, max(seq) FROM events WHERE true"
        " GROUP BY device ON CONFLICT (device) DO NOTHING"
    ),
    "DELETE FROM unsent_states",
    "INSERT INTO unsent_states (state, events) VALUES (-1, 0), (0, 0), (1, 0)",
    (
        "UPDATE unsent_states SET events = held.n FROM (SELECT state, count(*) AS n FROM events"
        " WHERE state < 2 GROUP BY state) AS held WHERE held.state = unsent_states.state"
    ),
    (
        "UPDATE devices SET payload_bytes = 0, unsent_events = 0, sent_events = 0,"
        " sent_telemetry = 0, confirmed_events = 0, rejected_events = 0"
    ),
    (
        "UPDATE devices SET payload_bytes = held.bytes, unsent_events = held.unsent,"
        " sent_events = held.sent, sent_telemetry = held.telemetry,"
        " confirmed_events = held.confirmed, rejected_events = held.rejected"
        " FROM (SELECT device, sum(length(payload)) AS bytes,"
        " count(*) FILTER (WHERE state < 2) AS unsent,"
        " count(*) FILTER (WHERE state = 2 AND droppable = 0) AS sent,"
        " count(*) FILTER (WHERE state = 2 AND droppable <> 0) AS telemetry,"
        " count(*) FILTER (WHERE state = 3) AS confirmed,"
        " count(*) FILTER (WHERE state = 4) AS rejected"
        " FROM events GROUP BY device) AS held WHERE held.device = devices.device"
    ),
    (
        "UPDATE devices SET unsent_from = coalesce((SELECT min(seq) FROM events"
        " WHERE events.device = devices.device AND state < 2), last_seq + 1),"
        " unsettled_from = coalesce((SELECT min(seq) FROM events WHERE events.device ="
        " devices.device AND droppable = 0 AND state <= 2), last_seq + 1)"
    ),
)
"""The counts and low marks (schema v4, buffer/counts.py) computed from the events themselves."""

COUNT_CHUNK = 100_000
"""Rows counted per step of the v4 migration, between two progress reports."""

_V4_TABLES = """
    CREATE TABLE unsent_states (
        state  INTEGER PRIMARY KEY,
        events INTEGER NOT NULL
    );
    INSERT INTO unsent_states (state, events) VALUES (-1, 0), (0, 0), (1, 0);
    ALTER TABLE devices ADD COLUMN payload_bytes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN unsent_events INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN sent_events INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN sent_telemetry INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN confirmed_events INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN rejected_events INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN unsent_from INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN unsettled_from INTEGER NOT NULL DEFAULT 0
"""


@dataclass(slots=True)
class _Held:
    """One device's figures as the v4 migration counts them."""

    size: int = 0
    last_seq: int = 0
    unsent_from: int | None = None
    unsettled_from: int | None = None
    events: list[int] = field(default_factory=lambda: [0] * 5)
    """In the order of buffer/counts.py's ``COLUMNS``: unsent, sent (not telemetry), sent
    telemetry, confirmed, rejected."""


def _lower(mark: int | None, seq: int) -> int:
    return seq if mark is None else min(mark, seq)


async def _count_events(conn: aiosqlite.Connection, progress: ProgressFn) -> None:
    """v3 -> v4: what the buffer holds, kept exact from now on by the writes (buffer/counts.py).

    The same figures as :data:`REBUILD_COUNTS`, from one pass over the table in rowid chunks
    with a progress report after each: at millions of rows this takes a while (its three scans
    in one statement each took 4 s per million rows on a warm cache), and only a report keeps
    systemd's start timeout (30 s) from killing the gateway part way, again at every restart,
    since the transaction is then rolled back. One transaction, ``user_version`` included: the
    ``ALTER TABLE`` statements cannot run twice.
    """
    async with conn.execute("SELECT coalesce(max(rowid), 0) FROM events") as cur:
        row = await cur.fetchone()
    last = int(row[0]) if row else 0
    held: dict[str, _Held] = {}
    unsent = {STATE_HELD: 0, STATE_PENDING: 0, STATE_IN_FLIGHT: 0}
    async with transaction(conn):
        for statement in filter(str.strip, _V4_TABLES.split(";")):
            await conn.execute(statement)
        for start in range(0, last, COUNT_CHUNK):
            async with conn.execute(
                "SELECT device, state, droppable <> 0, count(*), sum(length(payload)), min(seq),"
                " max(seq) FROM events WHERE rowid > ? AND rowid <= ?"
                " GROUP BY device, state, droppable <> 0",
                (start, start + COUNT_CHUNK),
            ) as cur:
                found = await cur.fetchall()
            for device, state, droppable, n, size, low, high in found:
                fig = held.setdefault(str(device), _Held())
                fig.size += int(size)
                fig.last_seq = max(fig.last_seq, int(high))
                if state < STATE_SENT:
                    unsent[int(state)] = unsent.get(int(state), 0) + int(n)
                    fig.unsent_from = _lower(fig.unsent_from, int(low))
                if not droppable and state <= STATE_SENT:
                    fig.unsettled_from = _lower(fig.unsettled_from, int(low))
                if state < STATE_SENT:
                    fig.events[0] += int(n)
                elif state == STATE_SENT:
                    fig.events[2 if droppable else 1] += int(n)
                else:
                    fig.events[3 if state == STATE_CONFIRMED else 4] += int(n)
            progress(f"counting buffered events: {min(start + COUNT_CHUNK, last) * 100 // last} %")
        # A device with events but no devices row (a file edited by hand) gets one.
        await conn.executemany(
            "INSERT INTO devices (device, last_seq) VALUES (?, ?) ON CONFLICT (device) DO NOTHING",
            [(device, fig.last_seq) for device, fig in held.items()],
        )
        await conn.executemany(
            "UPDATE unsent_states SET events = ? WHERE state = ?",
            [(n, state) for state, n in unsent.items()],
        )
        await conn.executemany(
            "UPDATE devices SET payload_bytes = ?, unsent_events = ?, sent_events = ?,"
            " sent_telemetry = ?, confirmed_events = ?, rejected_events = ?,"
            " unsent_from = coalesce(?, last_seq + 1), unsettled_from = coalesce(?, last_seq + 1)"
            " WHERE device = ?",
            [
                (fig.size, *fig.events, fig.unsent_from, fig.unsettled_from, device)
                for device, fig in held.items()
            ],
        )
        # Devices without events: nothing unsent, nothing awaiting a verdict.
        await conn.execute(
            "UPDATE devices SET unsent_from = last_seq + 1, unsettled_from = last_seq + 1"
            " WHERE device NOT IN (SELECT DISTINCT device FROM events)"
        )
        await conn.execute("PRAGMA user_version=4")


Migration = str | Callable[[aiosqlite.Connection, ProgressFn], Awaitable[None]]
"""A SQL script run in one transaction, or a step that commits as it goes."""

MIGRATIONS: tuple[Migration, ...] = (
    # v0 -> v1: events in commit order (rowid), the exact payload that goes on the wire, and
    # per-device counters. The partial index keeps the publisher's "oldest pending" scan cheap
    # however many sent events are retained for replay.
    """
    CREATE TABLE events (
        rowid     INTEGER PRIMARY KEY,
        id        TEXT    NOT NULL UNIQUE,
        device    TEXT    NOT NULL,
        seq       INTEGER NOT NULL,
        state     INTEGER NOT NULL DEFAULT 0,
        droppable INTEGER NOT NULL DEFAULT 0,
        created   REAL    NOT NULL,
        sent      REAL,
        payload   BLOB    NOT NULL,
        UNIQUE (device, seq)
    );
    CREATE INDEX events_unsent ON events (state, rowid) WHERE state < 2;
    CREATE TABLE devices (
        device        TEXT PRIMARY KEY,
        last_seq      INTEGER NOT NULL DEFAULT 0,
        last_sent_seq INTEGER NOT NULL DEFAULT 0,
        status        TEXT,
        detail        TEXT,
        since         TEXT
    );
    """,
    # v1 -> v2: ids stored as their 16 bytes, in place.
    _pack_ids,
    # v2 -> v3: seq ranges deleted on purpose (telemetry dropped at the size cap), so the
    # checkpoint and replays can tell a deliberate hole from a loss (buffer/dropped.py).
    """
    CREATE TABLE dropped (
        device   TEXT    NOT NULL,
        from_seq INTEGER NOT NULL,
        to_seq   INTEGER NOT NULL,
        PRIMARY KEY (device, from_seq)
    ) WITHOUT ROWID;
    ALTER TABLE devices ADD COLUMN dropped_events INTEGER NOT NULL DEFAULT 0;
    """,
    # v3 -> v4: what the buffer holds, kept exact by the transactions that change it, so
    # status, checkpoints and metrics read O(devices) rows instead of scanning millions of sent
    # ones (buffer/counts.py). One pass over the table, once, at the first start after upgrade.
    _count_events,
)
SCHEMA_VERSION = len(MIGRATIONS)


class BufferOpenError(RuntimeError):
    """The buffer cannot be opened at all (permissions, newer schema, unusable directory)."""


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite does, so events are never world-readable."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def _aside(path: Path, why: str) -> Path:
    """A name next to ``path`` that no earlier quarantine used (two can happen in a second)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1000):
        target = path.with_name(f"{path.name}.{why}-{stamp}" + (f".{n}" if n else ""))
        if not any(Path(f"{target}{s}").exists() for s in ("", "-wal", "-shm")):
            return target
    raise BufferOpenError(f"{path}: too many quarantined files named {why}-{stamp}")


def _set_aside_orphan_wal(path: Path) -> None:
    """A WAL whose database is gone holds committed events SQLite would silently discard.

    It cannot be replayed without its database, so it is moved aside (never deleted) with a
    loud error, before a fresh database is created next to it.
    """
    wal = Path(f"{path}-wal")
    db_empty = not path.exists() or path.stat().st_size == 0
    if not (db_empty and wal.exists() and wal.stat().st_size > 0):
        return
    target = Path(f"{_aside(path, 'orphan')}-wal")
    wal.rename(target)
    Path(f"{path}-shm").unlink(missing_ok=True)
    log.error(
        "buffer_orphan_wal",
        path=str(path),
        moved_to=str(target),
        action="the database file was missing; events in that WAL were NOT delivered",
    )


_DAMAGED = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def is_damage(exc: sqlite3.Error) -> bool:
    """True only for errors that mean the file's content is broken, not that it is busy."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _DAMAGED


def _unusable(path: Path, exc: sqlite3.Error) -> BufferOpenError:
    name = getattr(exc, "sqlite_errorname", type(exc).__name__)
    return BufferOpenError(
        f"{path}: cannot open the buffer ({name}: {exc}); the file was left as it is"
        " (held by another process? try again once it is released)"
    )


def highest_seqs(path: Path) -> dict[str, int]:
    """Each device's highest seq that a (possibly damaged) buffer file still shows.

    Best effort, table by table: whatever can be read is used, so the fresh buffer never hands
    out a seq the set-aside file may already have given to another event.
    """
    found: dict[str, int] = {}
    queries = (
        "SELECT device, last_seq FROM devices",
        "SELECT device, max(seq) FROM events GROUP BY device",
    )
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True)
    except sqlite3.Error:
        return found
    try:
        for sql in queries:
            try:
                rows = conn.execute(sql).fetchall()
            except sqlite3.Error:
                continue
            for device, seq in rows:
                if isinstance(device, str) and isinstance(seq, int):
                    found[device] = max(found.get(device, 0), seq)
    finally:
        conn.close()
    return found


async def _carry_seqs(conn: aiosqlite.Connection, seqs: dict[str, int], moved_to: Path) -> None:
    """Start the fresh buffer's counters where the set-aside one stopped."""
    if not seqs:
        log.error(
            "buffer_quarantine_seqs_unknown",
            moved_to=str(moved_to),
            action="no seq could be read from the damaged file; seqs restart at 1",
        )
        return
    async with transaction(conn):
        await conn.executemany(
            "INSERT INTO devices (device, last_seq) VALUES (?, ?) ON CONFLICT (device)"
            " DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
            sorted(seqs.items()),
        )
    log.warning("buffer_quarantine_seqs_carried", moved_to=str(moved_to), last_seq=seqs)


def quarantine(path: Path, reason: str) -> Path:
    """Move a damaged database (and its WAL/SHM) aside and say so loudly."""
    target = _aside(path, "corrupt")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(Path(f"{target}{suffix}"))
    log.error(
        "buffer_quarantined",
        path=str(path),
        moved_to=str(target),
        reason=reason,
        action="a fresh buffer was created; events in the moved file were NOT delivered",
    )
    return target


async def _connect(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    try:
        await conn.create_function("edge_id_key", 1, id_key, deterministic=True)  # _pack_ids
        # First: a lock held by another process is waited for, not mistaken for damage.
        await conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=FULL")
        await conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        # aiosqlite's worker thread is not a daemon: an unclosed connection keeps the process
        # alive after main() returns.
        await conn.close()
        raise
    return conn


async def _check(conn: aiosqlite.Connection) -> str | None:
    """Return why the file is unusable, or None when it is healthy."""
    try:
        async with conn.execute("PRAGMA quick_check") as cur:
            rows = [str(r[0]) for r in await cur.fetchall()]
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            return str(exc)
        raise
    if rows != ["ok"]:
        return "; ".join(rows[:5])
    return None


async def _migrate(conn: aiosqlite.Connection, path: Path, progress: ProgressFn) -> None:
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise BufferOpenError(
            f"{path}: schema version {version} is newer than this gateway's {SCHEMA_VERSION};"
            " upgrade edge-gateway or restore the previous release"
        )
    for target, step in enumerate(MIGRATIONS[version:], start=version + 1):
        if isinstance(step, str):
            async with transaction(conn):
                for statement in filter(str.strip, step.split(";")):
                    await conn.execute(statement)
                await conn.execute(f"PRAGMA user_version={target}")
        else:
            log.info("buffer_migrating", path=str(path), version=target)
            await step(conn, progress)
            await conn.execute(f"PRAGMA user_version={target}")
        log.info("buffer_migrated", path=str(path), version=target)


def _quiet(_what: str) -> None:
    """No one to tell about progress."""


async def open_database(path: Path, progress: ProgressFn | None = None) -> aiosqlite.Connection:
    """Open (creating, checking, quarantining and migrating as needed) the buffer database.

    Raises BufferOpenError for anything that is not damage: the file is then left untouched.
    """
    try:
        _set_aside_orphan_wal(path)
        _create_private(path)
    except OSError as exc:
        raise BufferOpenError(f"{path}: cannot create buffer file: {exc.strerror}") from exc
    if not os.access(path, os.R_OK | os.W_OK) or not os.access(path.parent, os.W_OK):
        raise BufferOpenError(f"{path}: buffer file or its directory is not writable")
    moved: tuple[Path, dict[str, int]] | None = None
    for attempt in range(2):
        opened = await _try_open(path, progress or _quiet, moved)
        if not isinstance(opened, str):
            return opened
        if attempt:
            raise BufferOpenError(f"{path}: a fresh buffer is damaged too: {opened}")
        moved = _set_aside(path, opened)
    raise BufferOpenError(f"{path}: could not open")  # pragma: no cover - loop always returns


async def _try_open(
    path: Path, progress: ProgressFn, moved: tuple[Path, dict[str, int]] | None
) -> aiosqlite.Connection | str:
    """The checked, migrated connection, or why the file is damaged.

    Any error that is not damage raises BufferOpenError.
    """
    try:
        conn = await _connect(path)
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            return str(exc)
        raise _unusable(path, exc) from exc
    try:
        problem = await _check(conn)
        if problem is None:
            await _migrate(conn, path, progress)
            if moved is not None:
                await _carry_seqs(conn, moved[1], moved[0])
            return conn
    except sqlite3.Error as exc:
        await conn.close()  # its worker thread would otherwise outlive the daemon
        raise _unusable(path, exc) from exc
    except BaseException:
        await conn.close()
        raise
    await conn.close()
    return problem


def _set_aside(path: Path, problem: str) -> tuple[Path, dict[str, int]]:
    """Quarantine a damaged file, remembering the seqs it still shows, and start a fresh one."""
    seqs = highest_seqs(path)
    target = quarantine(path, problem)
    _create_private(path)
    return target, seqs
