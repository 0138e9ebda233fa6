"""Replay range checks and lost seqs on a real buffer file (docs/confirmation.md; issue 19).

A replay answer goes back to central as it is: the range it names, and either ``ok`` with the
deliberate holes, or the reason it is refused. Both must be exact at the edges.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buffer.replay_reads import MAX_MISSING_RANGES, ReplayRange
from buffer.store import Buffer, NewEvent


def make_event(device: str, n: int, *, droppable: bool = False, size: int = 0) -> NewEvent:
    def render(seq: int) -> bytes:
        return json.dumps({"n": n, "seq": seq, "pad": "x" * size}).encode()

    return NewEvent(f"{device}-{n}", device, "t", "t", droppable, render)


@pytest.fixture
async def buf(tmp_path: Path):
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    for n in range(10):
        await b.append(make_event("s", n))
    yield b
    await b.close()


async def delete_sent(b: Buffer, device: str, seqs: set[int]) -> None:
    """Deliver exactly ``seqs`` of ``device`` and let retention delete them."""
    claimed = await b.claim(10_000)
    await b.mark_sent([e for e in claimed if e.device == device and e.seq in seqs])
    await b.release(claimed)
    assert await b.prune(retention=-1) == len(seqs)


async def test_an_unknown_device_is_named_and_its_range_echoed(buf: Buffer) -> None:
    assert await buf.check_replay("nope", 3, 7) == ReplayRange(
        "nope", 3, 7, error="unknown device 'nope'"
    )
    assert await buf.check_replay("nope", 3, None) == ReplayRange(
        "nope", 3, 0, error="unknown device 'nope'"
    )


async def test_a_device_known_only_by_its_status_has_no_range(buf: Buffer) -> None:
    """A device that reported a status but never an event has nothing to replay."""
    await buf.set_device_status("idle", "connected", "", "t")
    span = await buf.check_replay("idle", 1, 1)
    assert span.error == "unknown device 'idle'"


async def test_bad_ranges_are_refused_as_bad(buf: Buffer) -> None:
    assert (await buf.check_replay("s", 0, 5)).error == "bad range 0..5 (stored seqs are 1..10)"
    assert (await buf.check_replay("s", 5, 3)).error == "bad range 5..3 (stored seqs are 1..10)"
    assert await buf.check_replay("s", 2, 11) == ReplayRange(
        "s", 2, 11, error="to_seq 11 is beyond the last stored seq 10"
    )


async def test_held_ranges_answer_ok_and_name_their_bounds(tmp_path: Path) -> None:
    """One seq, the whole range, and an open end (up to the last stored seq)."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    try:
        await b.append(make_event("one", 0))
        assert await b.check_replay("one", 1, 1) == ReplayRange("one", 1, 1, unsent=1)
        for n in range(10):
            await b.append(make_event("s", n))
        await b.mark_sent(await b.claim(3))
        assert await b.check_replay("s", 3, 3) == ReplayRange("s", 3, 3, unsent=1)
        assert await b.check_replay("s", 4, None) == ReplayRange("s", 4, 10, unsent=7)
    finally:
        await b.close()


async def test_a_deleted_seq_among_dropped_ones_is_still_refused(tmp_path: Path) -> None:
    """Deliberate holes count as held, each seq once: one seq lost besides them refuses it."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=4_000)
    try:
        for n in range(20):
            await b.append(make_event("belt", n, droppable=True, size=300))
        span = await b.check_replay("belt", 1, 20)
        assert span.error is None and len(span.dropped) == 1, span
        await delete_sent(b, "belt", {15})
        span = await b.check_replay("belt", 1, 20)
        assert span.error is not None and "no longer fully retained" in span.error, span
    finally:
        await b.close()


async def test_dropped_seqs_a_replay_skipped_are_not_lost(tmp_path: Path) -> None:
    b = await Buffer.open(tmp_path / "b.db", max_bytes=4_000)
    try:
        for n in range(20):
            await b.append(make_event("belt", n, droppable=True, size=300))
        dropped = (await b.check_replay("belt", 1, 20)).dropped
        first, last = dropped[0]
        assert await b.replay_lost("belt", [(first, last + 1)]) == (0, [])
    finally:
        await b.close()


async def test_seqs_lost_at_the_end_of_a_gap_are_counted(buf: Buffer) -> None:
    await delete_sent(buf, "s", {7, 8, 9})
    assert await buf.replay_lost("s", [(5, 9)]) == (3, [(7, 9)])


async def test_lost_seqs_are_all_counted_and_the_first_ranges_named(tmp_path: Path) -> None:
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    try:
        for n in range(60):
            await b.append(make_event("s", n))
        await delete_sent(b, "s", set(range(2, 61, 2)))
        lost, ranges = await b.replay_lost("s", [(1, 60)])
        assert lost == 30
        assert ranges == [(seq, seq) for seq in range(2, 2 * MAX_MISSING_RANGES + 1, 2)]
    finally:
        await b.close()


async def test_a_refusal_says_what_is_left_of_the_range(buf: Buffer) -> None:
    await delete_sent(buf, "s", {1, 2, 3, 4})
    assert (await buf.check_replay("s", 1, 3)).error == (
        "range 1..3 is no longer fully retained (none retained)"
    )
    assert (await buf.check_replay("s", 2, 6)).error == (
        "range 2..6 is no longer fully retained (oldest retained in range is 5)"
    )


async def test_a_range_from_the_last_seq_is_held_and_one_past_it_is_beyond(buf: Buffer) -> None:
    """An open range starting at the last stored seq is that one event; one past it is refused
    as beyond the last seq, whatever else the range check would say."""
    assert await buf.check_replay("s", 10, None) == ReplayRange("s", 10, 10, unsent=1)
    assert await buf.check_replay("s", 11, None) == ReplayRange(
        "s", 11, 10, error="from_seq 11 is beyond the last stored seq 10"
    )


async def test_figures_at_a_replay_s_end_name_the_ranges_dropped_meanwhile(tmp_path: Path) -> None:
    """Telemetry dropped at the cap while a replay ran is reported dropped at its end (it will
    never come), and only the device's drops inside the range count."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=4_000)
    try:
        for n in range(20):
            await b.append(make_event("belt", n, droppable=True, size=300))
            await b.append(make_event("other", n, droppable=True, size=10))
        dropped = (await b.check_replay("belt", 1, 20)).dropped
        assert dropped, "the cap dropped some of belt's telemetry"
        first, last = dropped[0]
        unsent, figures = await b.replay_figures("belt", first, 20)
        assert figures == dropped
        assert unsent == 20 - sum(hi - lo + 1 for lo, hi in dropped)
        assert await b.replay_figures("belt", last + 1, 20) == (20 - last, [])
    finally:
        await b.close()
