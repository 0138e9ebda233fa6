"""Telemetry dropped at the cap leaves recorded holes, not silent ones (issue 18 finding 7).

Before: the checkpoint said ``last_seq=12, last_sent_seq=12, pending=0`` while only seqs 5-12
existed, and a replay of 1..12 was refused as if events had been lost.
"""

from __future__ import annotations

import json
from pathlib import Path

from buffer.dropped import runs
from buffer.store import Buffer, NewEvent


def reading(device: str, n: int, *, droppable: bool = True) -> NewEvent:
    def render(seq: int) -> bytes:
        return json.dumps({"n": n, "seq": seq, "pad": "x" * 300}).encode()

    return NewEvent(f"{device}-{n}", device, "t", "t", droppable, render)


def test_runs_are_inclusive_and_merge_consecutive_seqs() -> None:
    assert runs([5, 3, 4, 9, 11, 10, 1]) == [(1, 1), (3, 5), (9, 11)]
    assert runs([]) == []


async def test_drops_are_recorded_as_merged_ranges_and_counted(tmp_path: Path) -> None:
    b = await Buffer.open(tmp_path / "b.db", max_bytes=4_000)
    try:
        for n in range(30):
            await b.append(reading("belt", n, droppable=n != 12))  # seq 13 is an alarm
        stats = await b.stats()
        belt = stats.devices["belt"]
        assert belt.dropped_events == b.transitions["dropped"] > 0
        held = {e.seq for e in await b.claim(100)}
        dropped = {seq for first, last in belt.dropped_ranges for seq in range(first, last + 1)}
        assert not held & dropped
        assert held | dropped == set(range(1, 31)), "every seq is either held or a recorded drop"
        assert 13 in held, "the alarm was never dropped"
        assert belt.dropped_ranges[0][0] == 1 and len(belt.dropped_ranges) == 2, belt
    finally:
        await b.close()


async def test_a_replay_over_a_deliberate_hole_is_complete_and_says_so(tmp_path: Path) -> None:
    b = await Buffer.open(tmp_path / "b.db", max_bytes=4_000)
    try:
        for n in range(20):
            await b.append(reading("belt", n))
        await b.mark_sent(await b.claim(100))
        span = await b.check_replay("belt", 1, 20)
        assert span.error is None, span
        assert span.dropped and span.dropped[0][0] == 1
        kept = await b.replay_chunk("belt", 1, 20, 100)
        dropped = sum(last - first + 1 for first, last in span.dropped)
        assert len(kept) + dropped == 20
    finally:
        await b.close()


async def test_a_drop_just_before_a_recorded_range_merges_with_it(tmp_path: Path) -> None:
    """Seqs in flight when later ones were dropped, dropped once released: one range, not two.

    The checkpoint lists at most MAX_RANGES_PER_DEVICE ranges per device, so adjacent drops
    must merge whichever order they happen in.
    """
    b = await Buffer.open(tmp_path / "b.db", max_bytes=4_000)
    try:
        n = 0
        while b.stored_bytes + 400 < b.max_bytes:
            await b.append(reading("belt", n))
            n += 1
        in_flight = await b.claim(2)
        assert [e.seq for e in in_flight] == [1, 2]
        for _ in range(2):
            await b.append(reading("belt", n))
            n += 1
        after_first = (await b.stats()).devices["belt"].dropped_ranges
        assert after_first and after_first[0][0] == 3, after_first
        await b.release(in_flight)
        dropped_before = b.transitions["dropped"]
        while b.transitions["dropped"] < dropped_before + 2:  # the released seqs 1 and 2 go next
            await b.append(reading("belt", n))
            n += 1
        belt = (await b.stats()).devices["belt"]
        assert belt.dropped_ranges[0][0] == 1, belt.dropped_ranges
        assert len(belt.dropped_ranges) == 1, belt.dropped_ranges
        assert belt.dropped_events == b.transitions["dropped"]
    finally:
        await b.close()
