"""The size cap's policy on a real buffer file, byte for byte (DESIGN section 4; issue 19).

What goes when an event needs room: only as much as it needs, oldest first, sent events that
need nothing more before those still awaiting a confirm; and each eviction counted under the
right name (the counters feed the gateway's metrics and its warnings).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from buffer.store import Buffer, BufferFullError, NewEvent


def sized(device: str, n: int, size: int) -> NewEvent:
    """An event whose stored payload is exactly ``size`` bytes."""
    return NewEvent(f"{device}-{n}", device, "t", "t", False, lambda _seq: b"x" * size)


async def seqs_held(b: Buffer, device: str) -> list[int]:
    return sorted(
        int(seq)
        for (seq,) in await b._db.read(
            lambda conn: conn.execute(
                "SELECT seq FROM events WHERE device = ?", (device,)
            ).fetchall()
        )
    )


async def test_the_cap_evicts_exactly_what_the_new_event_needs(tmp_path: Path) -> None:
    """Full to the byte: an event of one sent event's size evicts that one, and no more; one
    byte more evicts the next oldest too. All counted as evicted_sent (none awaits a confirm)."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=1_000)
    try:
        for n in range(10):
            await b.append(sized("scanner", n, 100))
        await b.mark_sent(await b.claim(10))
        assert b.stored_bytes == 1_000
        await b.append(sized("scanner", 10, 100))
        assert await seqs_held(b, "scanner") == list(range(2, 12))
        assert b.stored_bytes == 1_000
        await b.append(sized("scanner", 11, 101))
        assert await seqs_held(b, "scanner") == list(range(4, 13))
        assert b.stored_bytes == 1_000 - 300 + 101 + 100
        assert (b.transitions["evicted_sent"], b.transitions["evicted_unconfirmed"]) == (3, 0)
    finally:
        await b.close()


async def test_room_is_made_from_both_kinds_of_sent_events_before_refusing(
    tmp_path: Path,
) -> None:
    """Sent events that need nothing more are not enough, even by one byte: the oldest one still
    awaiting a confirm goes too (counted), rather than the new event being refused."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=300, keep_unconfirmed=frozenset({"acc"}))
    try:
        await b.append(sized("plain", 0, 100))
        await b.append(sized("acc", 0, 100))
        await b.append(sized("acc", 1, 100))
        await b.mark_sent(await b.claim(10))
        await b.append(sized("scanner", 0, 101))  # the plain one leaves it one byte short
        assert await seqs_held(b, "plain") == []
        assert await seqs_held(b, "acc") == [2]
        assert (b.transitions["evicted_sent"], b.transitions["evicted_unconfirmed"]) == (1, 1)
        with pytest.raises(BufferFullError):  # one byte more than the acc event would free
            await b.append(sized("scanner", 1, 200))
        assert await seqs_held(b, "acc") == [2], "nothing is evicted for an event that cannot fit"
    finally:
        await b.close()


async def test_retention_keeps_unconfirmed_events_of_every_accepted_device(tmp_path: Path) -> None:
    """Several devices at the accepted level, one whose id needs SQL quoting: each keeps its
    sent, unconfirmed events past retention; other devices' sent events go."""
    accepted = frozenset({"dock-1", "o'hare"})
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**6, keep_unconfirmed=accepted)
    try:
        for device in ("dock-1", "o'hare", "plain"):
            await b.append(sized(device, 0, 10))
        await b.mark_sent(await b.claim(10))
        assert await b.prune(retention=-1) == 1
        assert [await seqs_held(b, d) for d in ("dock-1", "o'hare", "plain")] == [[1], [1], []]
    finally:
        await b.close()
