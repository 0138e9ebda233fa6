"""Fourth adversarial review of ``Buffer.close`` (b655f5f: reads refused once closing, a reader
opened after a close began closed again, percent-encoded read-only URIs) on a real SQLite file,
real aiosqlite and real asyncio: the hole it proved (fixed since; the test states what holds)
and the suspicions it dismissed (plain tests pinning the reason)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiosqlite
import pytest

import buffer.store
from buffer.schema import highest_seqs
from buffer.stats import read_stats
from buffer.store import Buffer, BufferClosedError
from gateway.replay import replay_messages
from gateway.topics import Topics
from tests.support import cli, write_config
from tests.unit.buffer.test_append_nowait import make_event


async def _stats(b: Buffer) -> object:
    return await b.stats()


async def _check_replay(b: Buffer) -> object:
    return await b.check_replay("a", 1, 1)


@pytest.mark.parametrize("read", [_stats, _check_replay], ids=["stats", "check_replay"])
async def test_two_first_reads_racing_a_close_open_one_reader_and_are_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    read: Callable[[Buffer], Awaitable[object]],
) -> None:
    """b655f5f let two first reads race to open the lazy reader: the one that found the
    attribute set when its own open returned closed its spare connection (a round trip to its
    aiosqlite thread), and a ``Buffer.close`` that began meanwhile closed the kept reader and
    set the attribute to ``None``: the read then raised ``AttributeError`` into its caller,
    where every other read once the close began raises ``BufferClosedError`` (docs/buffer.md).
    Was PROVEN; fixed since: first reads open their reader under a lock, so there is no spare,
    and each checks ``_closing`` once it holds the reader. Arranged here: the first read's open
    (real, on its own thread) is held until the buffer's close returned, the second read waits
    for it; both are refused with ``BufferClosedError``, and only one connection was opened."""
    real_open = buffer.store.open_reader
    opened = 0
    opening = asyncio.Event()
    may_return = asyncio.Event()

    async def open_reader(path: Path) -> aiosqlite.Connection:
        nonlocal opened
        opened += 1
        conn = await real_open(path)
        opening.set()
        await may_return.wait()
        return conn

    monkeypatch.setattr(buffer.store, "open_reader", open_reader)
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    await b.append_nowait(make_event("a", 1))
    first = asyncio.ensure_future(read(b))
    second = asyncio.ensure_future(read(b))
    try:
        async with asyncio.timeout(5):
            await opening.wait()  # the first read's connection is open, not yet kept
            await b.close()
        may_return.set()
        with pytest.raises(BufferClosedError):
            await first
        with pytest.raises(BufferClosedError):
            await second
        assert opened == 1, "two first reads opened two connections"
    finally:
        may_return.set()
        for task in (first, second):
            with contextlib.suppress(Exception):
                await task
        await b.close()


@pytest.fixture
def in_tmp_cwd(tmp_path: Path) -> Iterator[Path]:
    """The test's temporary directory as the working directory (for relative paths)."""
    before = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(before)


STATE_DIR_NAMES = [
    "with space",
    "naïve-état-日本",
    "100%",
    "pct%23not-a-hash",
    "pct%2",
    "q?mode=rw&x#frag",
    ";semi=1",
    "back\\slash",
]


def _status_seq(config: Path, device: str) -> int:
    """``edge-gateway status --json`` as another process: the device's last seq it shows."""
    done = cli("status", "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["devices"][device]["last_seq"])


async def _read_everything(path: Path, config: Path) -> None:
    """Every read-only opener of the file, in this process and in another one."""
    assert highest_seqs(path) == {"a": 2}
    span, rows = await replay_messages(
        str(path), device="a", from_seq=1, to_seq=2, topics=Topics("edge/s/g"), rate=1000.0
    )
    await rows.aclose()
    assert (span.error, span.from_seq, span.to_seq) == (None, 1, 2)
    assert (await read_stats(path)) is not None
    assert _status_seq(config, "a") == 2


@pytest.mark.parametrize("name", STATE_DIR_NAMES)
async def test_a_state_dir_with_uri_characters_is_read_whole_by_every_reader(
    tmp_path: Path, name: str
) -> None:
    """DISMISSED (the new ``read_only_uri``: a space, non-ASCII, a literal ``%`` or ``%23``, a
    stray ``%2``, ``?``/``&``/``#``/``;``/``\\`` in ``state_dir``): ``Path.as_uri()`` percent-
    encodes every byte but ``/`` and the unreserved ones (UTF-8 for non-ASCII, ``%`` as ``%25``),
    and SQLite decodes each ``%HH`` back, so the reader opens the writer's very file. Pinned for
    each reader: the buffer's ``stats()`` and replay reads, ``highest_seqs`` (a fresh buffer's
    floor), ``replay_messages`` (``edge-gateway replay``), ``read_stats`` and ``edge-gateway
    status`` as a separate process."""
    state = tmp_path / name / "state"
    path = state / "buffer.db"
    config = write_config(tmp_path / "gw.toml", mqtt_port=1, state_dir=state, devices=[])
    b = await Buffer.open(path, max_bytes=10**8)
    try:
        await b.append_nowait(make_event("a", 1))
        await b.append_nowait(make_event("a", 2))
        assert (await b.stats()).devices["a"].last_seq == 2
        assert (await b.check_replay("a", 1, 2)).error is None
        await _read_everything(path, config)
    finally:
        await b.close()
    await _read_everything(path, config)  # the daemon stopped: status and replay read alone


async def test_a_relative_or_symlinked_buffer_path_is_read_whole(in_tmp_cwd: Path) -> None:
    """DISMISSED (relative paths and symlinks): ``read_only_uri`` makes a relative path
    absolute against the working directory, as the writer's ``sqlite3.connect`` resolves it
    (``state_dir`` itself is made absolute against the config's folder by the settings), and
    does not resolve symlinks, which SQLite follows as the writer's open did. A buffer opened
    by a relative path through a symlinked folder is read whole by its own reads and by
    ``status`` reading it through the link."""
    real = in_tmp_cwd / "real state"
    real.mkdir()
    (in_tmp_cwd / "link").symlink_to(real)
    rel = Path("link") / "buffer.db"
    config = write_config(
        in_tmp_cwd / "gw.toml", mqtt_port=1, state_dir=in_tmp_cwd / "link", devices=[]
    )
    b = await Buffer.open(rel, max_bytes=10**8)
    try:
        await b.append_nowait(make_event("a", 1))
        await b.append_nowait(make_event("a", 2))
        assert (await b.stats()).devices["a"].last_seq == 2
        assert (await b.check_replay("a", 1, 2)).error is None
        await _read_everything(rel, config)
    finally:
        await b.close()
    assert (real / "buffer.db").exists()
    assert _status_seq(config, "a") == 2


async def test_a_stats_read_under_way_when_close_begins_gets_its_figures(tmp_path: Path) -> None:
    """DISMISSED (a read that passed the ``_closing`` check before the close began, its reader
    then closed under it): ``collect_stats`` is one round trip to the reader's aiosqlite
    thread, queued before the close's, and that thread runs its queue in order: the read ends
    with its figures, then the reader closes. Nothing else than figures or
    ``BufferClosedError`` reaches the caller."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    await b.append_nowait(make_event("a", 1))
    await b.stats()  # the reader is open
    read = asyncio.ensure_future(b.stats())
    await asyncio.sleep(0)  # queued on the reader's thread
    await b.close()
    assert (await read).devices["a"].last_seq == 1
    with pytest.raises(BufferClosedError):
        await b.stats()


@pytest.mark.parametrize("read", [_stats, _check_replay], ids=["stats", "check_replay"])
async def test_a_read_cancelled_while_its_reader_opens_leaves_no_thread(
    tmp_path: Path, read: Callable[[Buffer], Awaitable[object]]
) -> None:
    """DISMISSED (a reader whose opener is cancelled mid-connect, as ``_shutdown`` cancels the
    replay worker and housekeeping: ``_open_read_only`` never sees that connection): aiosqlite
    0.22's ``_connect`` answers a cancellation by queueing its stop behind the connect, so the
    thread opens the connection, drops it (closed when collected) and ends. The autouse
    ``no_leaked_threads`` fixture (tests/conftest.py) fails a test that leaves a non-daemon
    thread; this one closes the buffer and checks every thread it started has ended."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    before = set(threading.enumerate())
    task = asyncio.ensure_future(read(b))
    await asyncio.sleep(0)  # in aiosqlite's connect
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b._reader is None and b._replay_reader is None
    await b.close()
    async with asyncio.timeout(5):
        while [t for t in threading.enumerate() if t not in before and t.is_alive()]:
            await asyncio.sleep(0.02)
