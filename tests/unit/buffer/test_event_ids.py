"""Event ids stored as 16 bytes, and the v1 -> v2 migration that packs existing ones."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buffer import schema
from buffer.event_ids import id_key, id_text
from buffer.schema import SCHEMA_VERSION
from buffer.store import Buffer, NewEvent
from gateway.events import new_id, uuid7
from tests.support import make_v1_buffer


def test_generated_ids_pack_to_16_bytes_and_back() -> None:
    """Every id the gateway makes is stored in 16 bytes and read back as the same text."""
    for _ in range(1000):
        event_id = uuid7()
        key = id_key(event_id)
        assert isinstance(key, bytes)
        assert len(key) == 16
        assert id_text(key) == event_id


@given(st.text() | st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper()))
def test_any_id_reads_back_exactly_as_given(event_id: str) -> None:
    """Upper case, spaces or any other text stays text: unpacking never changes an id."""
    assert id_text(id_key(event_id)) == event_id


def test_only_the_canonical_lower_case_form_is_packed() -> None:
    """An id that would unpack differently (upper case, spaces for dashes) is kept as text."""
    event_id = uuid7()
    assert id_key(event_id.upper()) == event_id.upper()
    assert id_key(event_id.replace("-", " ")) == event_id.replace("-", " ")
    spaced = event_id[:35] + " "
    assert id_key(spaced) == spaced


async def test_v1_buffer_is_migrated_in_place_keeping_ids_order_and_states(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upgrading keeps every row (same id text, commit order, state), confirms still find them,
    the file does not grow, and a run cut short carries on where it stopped."""
    monkeypatch.setattr(schema, "PACK_CHUNK", 1000)
    path = tmp_path / "buffer.db"
    ids = [uuid7() for _ in range(4999)] + ["legacy-id"]
    # A run cut short: the first chunk is packed already, the rest is text.
    make_v1_buffer(path, [id_key(i) if n < 1000 else i for n, i in enumerate(ids)])
    with sqlite3.connect(path) as conn:
        before = conn.execute(
            "SELECT rowid, device, seq, state, sent, payload FROM events"
        ).fetchall()
    size_before = path.stat().st_size

    heard: list[str] = []
    buf = await Buffer.open(path, max_bytes=10**8, progress=heard.append)
    try:
        assert heard == [
            *(f"packing event ids: {p} %" for p in (20, 40, 60, 80, 100)),
            "counting buffered events: 100 %",  # v4, in one chunk
        ]
        pending = await buf.claim(10_000)  # states 0 (pending) and 1 (in flight, reset on open)
        assert [e.id for e in pending] == [i for n, i in enumerate(ids, 1) if n % 3 != 2]
        result = await buf.settle([(ids[1], True), ("legacy-id", False), (uuid7(), True)])
        assert [s.id for s in result.applied] == [ids[1], "legacy-id"]
        assert result.unknown == 1
    finally:
        await buf.close()

    assert path.stat().st_size <= size_before * 1.05  # a table rebuild would double it
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        stored = conn.execute("SELECT id FROM events ORDER BY rowid").fetchall()
        after = conn.execute("SELECT rowid, device, seq, payload FROM events").fetchall()
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert [id_text(i) for (i,) in stored] == ids
    assert all(isinstance(i, bytes) for (i,) in stored[:-1])
    assert after == [(r, d, s, p) for r, d, s, _, _, p in before]


async def test_an_id_handed_in_packed_is_stored_as_given_and_read_back_as_its_text(
    tmp_path: Path,
) -> None:
    """``NewEvent.key`` (the pipeline's ids) stores the bytes as they are; without it the commit
    packs the text itself: both rows read back, claimed, as the text given."""
    buf = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    try:
        given_text, given_key = new_id()
        packed_here = uuid7()
        for event_id, key in ((given_text, given_key), (packed_here, None)):
            await buf.append_nowait(
                NewEvent(event_id, "d", "t", "x", False, lambda seq: b"{}", key)
            )
        claimed = await buf.claim(10)
        assert [e.id for e in claimed] == [given_text, packed_here]
    finally:
        await buf.close()
    with sqlite3.connect(tmp_path / "b.db") as conn:
        stored = [row[0] for row in conn.execute("SELECT id FROM events ORDER BY rowid")]
    assert stored == [given_key, id_key(packed_here)]
    assert all(isinstance(k, bytes) and len(k) == 16 for k in stored)
