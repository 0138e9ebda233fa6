"""Opening the buffer file (buffer/schema.py): quarantine names, what is moved aside, the seqs a
damaged file still shows, and how a failure to open is told apart from damage. Real files."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from buffer import schema
from buffer.counts import COLUMNS
from buffer.schema import BufferOpenError, highest_seqs, is_damage, open_database, quarantine
from gateway.events import uuid7
from tests.support import make_v1_buffer

STAMP = re.compile(r"^b\.db\.corrupt-(\d{8}T\d{6}Z)(\.\d+)?$")


def stamps(ahead: int = 3) -> list[str]:
    """The quarantine stamps of this second and the next few (a test may cross a second)."""
    now = time.time()
    return [time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now + s)) for s in range(ahead)]


def garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database" * 100)


def test_a_quarantine_is_named_by_utc_time_without_a_number_when_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "EST+05")  # the stamp says Z: it must not be local time
    time.tzset()
    try:
        path = tmp_path / "b.db"
        garbage(path)
        before = stamps(1)[0]
        target = quarantine(path, "test")
        after = stamps(1)[0]
    finally:
        monkeypatch.undo()
        time.tzset()
    match = STAMP.match(target.name)
    assert match is not None, target.name
    assert match.group(2) is None
    assert before <= match.group(1) <= after
    assert not path.exists()
    assert target.read_bytes().startswith(b"this is not a database")


@pytest.mark.parametrize("taken", ["", "-wal", "-shm"])
def test_a_quarantine_takes_a_name_no_earlier_one_used_for_any_of_its_files(
    tmp_path: Path, taken: str
) -> None:
    """An earlier quarantine in the same second left a database, a WAL or a SHM under a name:
    the next one is numbered, so nothing is overwritten."""
    path = tmp_path / "b.db"
    for stamp in stamps():
        Path(f"{path}.corrupt-{stamp}{taken}").write_bytes(b"earlier")
    garbage(path)
    target = quarantine(path, "test")
    match = STAMP.match(target.name)
    assert match is not None and match.group(2) == ".1", target.name
    assert target.read_bytes().startswith(b"this is not a database")


def test_a_quarantine_moves_the_wal_and_shm_with_the_database(tmp_path: Path) -> None:
    """SQLite folds a WAL it can read into the file when our connection closes, but another
    process (``edge-gateway status``) may still hold it open: then all three are moved."""
    path = tmp_path / "b.db"
    garbage(path)
    Path(f"{path}-wal").write_bytes(b"old wal")
    Path(f"{path}-shm").write_bytes(b"old shm")
    target = quarantine(path, "test")
    assert Path(f"{target}-wal").read_bytes() == b"old wal"
    assert Path(f"{target}-shm").read_bytes() == b"old shm"
    assert target.read_bytes().startswith(b"this is not a database")
    assert not any(Path(f"{path}{s}").exists() for s in ("", "-wal", "-shm"))


def test_after_a_thousand_quarantines_in_a_second_the_next_is_refused_not_overwritten(
    tmp_path: Path,
) -> None:
    """Names ``corrupt-<stamp>`` to ``corrupt-<stamp>.999`` all taken (for this second and the
    next two, as the test may cross a second): the quarantine gives up with an error that says
    so, and the damaged file stays where it is (``_aside__mutmut_10`` tried a 1001st name,
    ``_25`` raised with no message)."""
    path = tmp_path / "b.db"
    for stamp in stamps():
        for n in range(1000):
            Path(f"{path}.corrupt-{stamp}" + (f".{n}" if n else "")).touch()
    garbage(path)
    with pytest.raises(BufferOpenError) as raised:
        quarantine(path, "test")
    assert re.fullmatch(
        rf"{re.escape(str(path))}: too many quarantined files named corrupt-\d{{8}}T\d{{6}}Z",
        str(raised.value),
    ), str(raised.value)
    assert path.read_bytes().startswith(b"this is not a database")
    assert len(list(tmp_path.iterdir())) == 3 * 1000 + 1


async def test_the_reason_of_a_file_failing_quick_check_names_its_first_five_problems(
    tmp_path: Path,
) -> None:
    """A buffer whose rows break NOT NULL constraints in seven ways (a disk that flipped bits,
    an outside tool): ``quick_check`` reports one row per problem, and the logged reason is the
    first five, joined by "; " (``_check__mutmut_14`` joined them by "XX; XX", ``_15`` kept six)."""
    path = tmp_path / "b.db"
    conn = await open_database(path)
    await conn.close()
    columns = ["device", "seq", "state", "droppable", "created", "payload", "id"]
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        [create] = db.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()
        db.execute("PRAGMA writable_schema = ON")
        db.execute(
            "UPDATE sqlite_master SET sql = ? WHERE name = 'events'",
            (create.replace("NOT NULL", ""),),
        )
    with closing(sqlite3.connect(path, isolation_level=None)) as db:  # the loosened schema
        for n, column in enumerate(columns, start=1):
            row = {"id": f"e{n}", "device": "dock", "seq": n, "state": 0, "droppable": 0}
            row |= {"created": 1.0, "payload": b"{}", column: None}
            db.execute(
                "INSERT INTO events (id, device, seq, state, droppable, created, payload)"
                " VALUES (:id, :device, :seq, :state, :droppable, :created, :payload)",
                row,
            )
        db.execute("PRAGMA writable_schema = ON")
        db.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'events'", (create,))
    with closing(sqlite3.connect(path)) as db:
        problems = [str(r[0]) for r in db.execute("PRAGMA quick_check")]
    assert problems == [f"NULL value in events.{column}" for column in columns]
    with capture_logs() as logs:
        conn = await open_database(path)
    await conn.close()
    [moved] = [e for e in logs if e["event"] == "buffer_quarantined"]
    assert moved["reason"] == "; ".join(problems[:5])


async def test_a_damaged_file_is_set_aside_with_the_reason_logged(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    garbage(path)
    with capture_logs() as logs:
        conn = await open_database(path)
    await conn.close()
    [moved] = [e for e in logs if e["event"] == "buffer_quarantined"]
    assert moved["reason"] == "file is not a database"
    assert Path(moved["moved_to"]).read_bytes().startswith(b"this is not a database")


def test_errors_without_an_sqlite_code_are_not_damage_and_are_named_by_type(
    tmp_path: Path,
) -> None:
    exc = sqlite3.OperationalError("no code")
    assert not is_damage(exc)
    message = str(schema._unusable(tmp_path / "b.db", exc))
    assert "(OperationalError: no code)" in message
    assert message.endswith(
        "the file was left as it is (held by another process? try again once it is released)"
    )


def test_highest_seqs_reads_what_it_can_and_keeps_the_highest(tmp_path: Path) -> None:
    """Best effort: a table that cannot be read is skipped (the next is still read), values of
    the wrong type are ignored, the higher of the two tables wins, and a device with no events
    yet (last seq 0) is kept at 0."""
    path = tmp_path / "b.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE events (device, seq)")
        conn.executemany(
            "INSERT INTO events VALUES (?, ?)",
            [("dock", 5), ("gate", 7), ("belt", None), (3, 9)],
        )
    assert highest_seqs(path) == {"dock": 5, "gate": 7}  # no devices table
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE devices (device, last_seq)")
        conn.executemany(
            "INSERT INTO devices VALUES (?, ?)", [("dock", 10), ("gate", 2), ("idle", 0)]
        )
    assert highest_seqs(path) == {"dock": 10, "gate": 7, "idle": 0}
    assert highest_seqs(tmp_path / "missing" / "b.db") == {}


async def test_packing_ids_starts_at_the_first_row(tmp_path: Path) -> None:
    """v1 -> v2 packs every text id, the first row's too, in a file of a single event."""
    path = tmp_path / "b.db"
    make_v1_buffer(path, [str(uuid7())])
    said: list[str] = []
    conn = await open_database(path, said.append)
    await conn.close()
    assert said[0] == "packing event ids: 100 %"
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT typeof(id) FROM events").fetchall() == [("blob",)]


async def test_a_busy_file_is_named_by_its_sqlite_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal names SQLite's error (what a technician searches for), not its class."""
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_MS", 50)
    path = tmp_path / "b.db"
    conn = await open_database(path)
    await conn.close()
    with sqlite3.connect(path, isolation_level=None) as holder:  # a technician's shell
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(
            BufferOpenError,
            match=r"b\.db: cannot open the buffer \(SQLITE_BUSY: database is locked\); the",
        ):
            await open_database(path)
        holder.execute("ROLLBACK")


async def test_the_state_directory_is_created_private_with_its_parents(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "edge" / "b.db"
    conn = await open_database(path)
    await conn.close()
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i`` on a real file or directory: no one may write it, root included.

    The tests run as root, for whom ``os.access`` grants any read or write by mode bits; an
    immutable inode is refused to root too (``EPERM``), as a read-only mount would be.
    """
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("chattr (e2fsprogs) is not installed")
    done = subprocess.run([chattr, "+i", str(path)], capture_output=True, text=True, check=False)
    if done.returncode:
        pytest.skip(f"cannot make {path} immutable here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


@pytest.mark.parametrize("frozen", ["file", "directory"])
async def test_a_buffer_nobody_may_write_is_refused_untouched(tmp_path: Path, frozen: str) -> None:
    """An immutable buffer file (readable, not writable, even by root), or a writable one in an
    immutable directory (SQLite could not create its WAL, nor a quarantine be moved aside
    there), is refused before SQLite opens it, saying so, and nothing is written or set aside
    next to it."""
    state = tmp_path / "state"
    path = state / "b.db"
    conn = await open_database(path)
    await conn.close()
    before = path.read_bytes()
    with immutable(path if frozen == "file" else state), pytest.raises(BufferOpenError) as refused:
        await open_database(path)
    assert str(refused.value) == f"{path}: buffer file or its directory is not writable"
    assert path.read_bytes() == before
    assert sorted(p.name for p in state.iterdir()) == ["b.db"]


async def test_the_v4_migration_counts_no_unsent_state_a_hand_edit_invented(tmp_path: Path) -> None:
    """An event a hand edit put in a state below "sent" that no release knows (say -5) is
    counted as unsent for its device; the migration does not fail on it."""
    path = tmp_path / "b.db"
    conn = await open_database(path)
    await conn.close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE unsent_states")
        for column in (*COLUMNS, "payload_bytes", "unsent_from", "unsettled_from"):
            db.execute(f"ALTER TABLE devices DROP COLUMN {column}")
        db.execute("INSERT INTO devices (device, last_seq) VALUES ('dock', 2)")
        db.executemany(
            "INSERT INTO events (id, device, seq, state, created, payload) VALUES (?, ?, ?, ?, 1, ?)",
            [("a", "dock", 1, -5, b"x"), ("b", "dock", 2, 0, b"yy")],
        )
        db.execute("PRAGMA user_version=3")
    conn = await open_database(path)
    await conn.close()
    with sqlite3.connect(path) as db:
        assert db.execute(
            "SELECT unsent_events, payload_bytes, unsent_from FROM devices"
        ).fetchall() == [(2, 3, 1)]
        assert db.execute("SELECT state, events FROM unsent_states ORDER BY state").fetchall() == [
            (-1, 0),
            (0, 1),
            (1, 0),
        ]


@pytest.mark.parametrize("db", [None, b""], ids=["no-database", "empty-database"])
async def test_a_wal_without_its_database_is_moved_aside_not_replayed(
    tmp_path: Path, db: bytes | None
) -> None:
    """Its database gone (or empty), a WAL of even one byte is moved aside, never deleted, and
    its SHM dropped; a fresh buffer is created next to it."""
    path = tmp_path / "b.db"
    if db is not None:
        path.write_bytes(db)
    Path(f"{path}-wal").write_bytes(b"w")
    with capture_logs() as logs:
        conn = await open_database(path)
    await conn.close()
    [orphan] = [e for e in logs if e["event"] == "buffer_orphan_wal"]
    moved = Path(orphan["moved_to"])
    assert re.fullmatch(r"b\.db\.orphan-\d{8}T\d{6}Z-wal", moved.name), moved.name
    assert moved.read_bytes() == b"w"


async def test_an_orphan_wal_takes_its_shm_away_and_an_empty_wal_stays(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    Path(f"{path}-wal").write_bytes(b"wal")
    Path(f"{path}-shm").write_bytes(b"old shm")
    conn = await open_database(path)
    await conn.close()
    assert [p.read_bytes() for p in tmp_path.glob("b.db.orphan-*")] == [b"wal"]
    assert not [p for p in tmp_path.glob("*-shm") if p.read_bytes() == b"old shm"]
    other = tmp_path / "c.db"
    Path(f"{other}-wal").write_bytes(b"")
    with capture_logs() as logs:
        conn = await open_database(other)
    await conn.close()
    assert not [e for e in logs if e["event"] == "buffer_orphan_wal"]
    assert not list(tmp_path.glob("c.db.orphan-*"))


async def test_a_page_the_integrity_check_cannot_read_is_damage(tmp_path: Path) -> None:
    """``quick_check`` itself fails with SQLITE_CORRUPT (a b-tree page of an unknown type): the
    file is set aside like one the check reports on, not refused as if it were busy."""
    path = tmp_path / "b.db"
    conn = await open_database(path)
    await conn.close()
    data = bytearray(path.read_bytes())
    data[4096] = 0x07  # page 2's type byte
    path.write_bytes(bytes(data))
    with capture_logs() as logs:
        conn = await open_database(path)
    await conn.close()
    [moved] = [e for e in logs if e["event"] == "buffer_quarantined"]
    assert moved["reason"] == "database disk image is malformed"


async def test_refusals_say_what_to_do(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BufferOpenError, match=r"b\.db: cannot create buffer file: Not a directory"):
        await open_database(blocker / "sub" / "b.db")
    path = tmp_path / "b.db"
    conn = await open_database(path)
    await conn.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(
        BufferOpenError,
        match=r"b\.db: schema version 99 is newer than this gateway's 4;"
        r" upgrade edge-gateway or restore the previous release$",
    ):
        await open_database(path)


async def test_a_migration_that_fails_leaves_the_file_and_names_the_error(tmp_path: Path) -> None:
    """A v3 file that already has a v4 table (restored from a backup half-way, say): the
    migration fails with SQLite's error, the open is refused, and the file is not set aside."""
    path = tmp_path / "b.db"
    conn = await open_database(path)
    await conn.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version=3")
    with pytest.raises(
        BufferOpenError,
        match=r"b\.db: cannot open the buffer \(SQLITE_ERROR: table unsent_states already exists\)",
    ):
        await open_database(path)
    assert not list(tmp_path.glob("b.db.corrupt-*"))
