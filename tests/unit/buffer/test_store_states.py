"""The buffer's state changes and counts on a real SQLite file (issue 19, mutation run).

What the publisher, housekeeping and ``edge-gateway status`` rely on: which events each call
moves, the numbers it returns, the byte total the cap is checked against, and the transition
counters behind the metrics.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest

from buffer.schema import STATE_NAMES
from buffer.store import Buffer, BufferFullError, NewEvent, _translate
from drivers.base import StoredEvent


def make_event(device: str, n: int, *, size: int = 0) -> NewEvent:
    def render(seq: int) -> bytes:
        return json.dumps({"n": n, "seq": seq, "pad": "x" * size}).encode()

    return NewEvent(f"{device}-{n}", device, "t", "t", False, render)


@pytest.fixture
async def buf(tmp_path: Path):
    b = await Buffer.open(tmp_path / "b.db", max_bytes=10**8)
    yield b
    await b.close()


def states(path: Path) -> dict[int, str]:
    """seq -> state name, read by another connection as ``edge-gateway status`` would."""
    with sqlite3.connect(path) as conn:
        return {
            int(seq): STATE_NAMES[int(state)]
            for seq, state in conn.execute("SELECT seq, state FROM events")
        }


async def test_release_puts_back_only_what_is_still_in_flight(buf: Buffer) -> None:
    """A PUBACK that arrived is not undone by releasing the rest of its claim."""
    for n in range(4):
        await buf.append(make_event("a", n))
    claimed = await buf.claim(3)
    await buf.mark_sent(claimed[:1])
    await buf.release(claimed)
    assert states(buf.path) == {1: "sent", 2: "pending", 3: "pending", 4: "pending"}
    assert [e.seq for e in await buf.claim(10)] == [2, 3, 4]


async def test_release_in_flight_returns_what_it_released(buf: Buffer) -> None:
    for n in range(5):
        await buf.append(make_event("a", n))
    claimed = await buf.claim(5)
    await buf.mark_sent(claimed[:2])
    assert await buf.release_in_flight() == 3
    assert buf.transitions["released"] == 3
    assert await buf.release_in_flight() == 0
    assert buf.transitions["released"] == 3, "the counter adds up across sessions"
    assert states(buf.path) == {1: "sent", 2: "sent", 3: "pending", 4: "pending", 5: "pending"}


async def test_held_events_wait_uncounted_until_unhold(buf: Buffer) -> None:
    for n in range(4):
        await buf.append(make_event("a", n))
    claimed = await buf.claim(4)
    await buf.hold(claimed[:2])
    await buf.release(claimed[2:])
    assert await buf.unsent_count() == 2, "held ones wait for the next session, uncounted"
    assert await buf.unhold() == 2
    assert await buf.unhold() == 0
    assert buf.transitions["unheld"] == 2
    assert await buf.unsent_count() == 4


async def test_unsent_count_up_to_a_rowid_and_at_most(buf: Buffer) -> None:
    for n in range(6):
        await buf.append(make_event("a", n))
    boundary = await buf.last_rowid()
    for n in range(6, 9):
        await buf.append(make_event("a", n))
    await buf.mark_sent(await buf.claim(2))
    assert await buf.unsent_count() == 7
    assert await buf.unsent_count(boundary) == 4
    assert await buf.unsent_count(at_most=3) == 3
    assert await buf.unsent_count(boundary, at_most=10) == 4
    assert await buf.unsent_count(boundary, at_most=1) == 1


async def test_device_status_is_replaced_each_time(buf: Buffer) -> None:
    await buf.append(make_event("a", 0))
    await buf.set_device_status("a", "connected", "ok", "2026-01-01T00:00:00Z")
    await buf.set_device_status("a", "disconnected", "EOF", "2026-01-01T00:01:00Z")
    a = (await buf.stats()).devices["a"]
    assert (a.status, a.detail, a.since) == ("disconnected", "EOF", "2026-01-01T00:01:00Z")
    assert a.last_seq == 1, "a status never touches the device's seqs"


async def test_prune_gives_back_exactly_the_bytes_it_deleted(buf: Buffer) -> None:
    for n in range(6):
        await buf.append(make_event("a", n, size=10 * n))
    before = buf.stored_bytes
    sent = await buf.claim(3)
    await buf.mark_sent(sent)
    assert await buf.prune(retention=-1) == 3
    assert buf.stored_bytes == before - sum(len(e.payload) for e in sent)
    await buf.mark_sent(await buf.claim(1))
    assert await buf.prune(retention=-1) == 1
    assert buf.transitions["pruned"] == 4
    assert (await buf.stats()).payload_bytes == buf.stored_bytes


async def test_settle_counts_confirmed_and_rejected_apart(buf: Buffer) -> None:
    for n in range(5):
        await buf.append(make_event("a", n))
    await buf.mark_sent(await buf.claim(5))
    await buf.settle([("a-0", True), ("a-1", True), ("a-2", False), ("a-0", False)])
    assert (buf.transitions["confirmed"], buf.transitions["rejected"]) == (2, 1)
    assert states(buf.path) == {
        1: "confirmed",
        2: "confirmed",
        3: "rejected",
        4: "sent",
        5: "sent",
    }


async def test_last_sent_seq_is_the_highest_acknowledged_whatever_the_order(buf: Buffer) -> None:
    """PUBACKs of one batch may be recorded in any order: the checkpoint takes the highest."""
    for n in range(5):
        await buf.append(make_event("a", n))
    claimed = await buf.claim(5)
    await buf.mark_sent(list(reversed(claimed[:4])))
    assert (await buf.stats()).devices["a"].last_sent_seq == 4


async def test_claimed_events_carry_their_commit_time(buf: Buffer) -> None:
    """The publish latency metric is measured from it."""
    before = time.time()
    await buf.append(make_event("a", 0))
    after = time.time()
    (event,) = await buf.claim(1)
    assert before <= event.created <= after


async def test_release_and_hold_add_up_in_the_transition_counters(buf: Buffer) -> None:
    """The counters feed the metrics: each call adds to them, under its own name."""
    for n in range(6):
        await buf.append(make_event("a", n))
    await buf.release(await buf.claim(2))
    await buf.release(await buf.claim(3))
    await buf.hold(await buf.claim(1))
    await buf.hold(await buf.claim(2))
    assert (buf.transitions["released"], buf.transitions["held"]) == (5, 3)


async def test_an_event_that_needs_room_gets_its_seq_and_the_cap_holds(tmp_path: Path) -> None:
    """At the cap, a new device's first event is seq 1 and its payload says so; an event one
    byte over the cap evicts rather than overshoots it."""

    def sized(device: str, n: int, size: int) -> NewEvent:
        return NewEvent(f"{device}-{n}", device, "t", "t", False, lambda _seq: b"x" * size)

    b = await Buffer.open(tmp_path / "b.db", max_bytes=1_000)
    try:
        for n in range(10):
            await b.append(sized("old", n, 100))
        await b.mark_sent(await b.claim(100))
        assert (await b.append(make_event("new", 0))).seq == 1
        (event,) = await b.claim(100)
        assert json.loads(event.payload)["seq"] == 1
        assert b.transitions["evicted_sent"] == 1
        await b.append(sized("pad", 0, b.max_bytes - b.stored_bytes))
        assert b.stored_bytes == b.max_bytes
        await b.append(sized("tiny", 0, 1))
        assert b.transitions["evicted_sent"] == 2
        assert b.stored_bytes == b.max_bytes - 100 + 1
    finally:
        await b.close()


async def test_a_refusal_at_the_cap_fails_only_its_own_event(tmp_path: Path) -> None:
    """In one group commit at the cap, a scan too big to fit is refused (saying the cap) and
    the smaller events after it are still stored, each answered with what was stored."""
    b = await Buffer.open(tmp_path / "b.db", max_bytes=1_000)
    try:
        await b.append(NewEvent("fill", "s", "t", "t", False, lambda _seq: b"x" * 900))
        big = NewEvent("big", "s", "t", "t", False, lambda _seq: b"x" * 200)
        small = NewEvent("small", "s", "2026-01-01T00:00:00Z", "scan", False, lambda _s: b"y")
        results = await asyncio.gather(b.append(big), b.append(small), return_exceptions=True)
        assert isinstance(results[0], BufferFullError)
        assert str(results[0]) == "buffer full (1000 bytes)"
        assert results[1] == StoredEvent("small", "s", 2, "2026-01-01T00:00:00Z", "scan")
    finally:
        await b.close()


def test_only_a_full_disk_becomes_buffer_full() -> None:
    """SQLITE_FULL means the event was refused for room; any other error stays what it is."""
    assert isinstance(
        _translate(sqlite3.OperationalError("database or disk is full")), BufferFullError
    )
    locked = sqlite3.OperationalError("database is locked")
    assert _translate(locked) is locked
    assert str(_translate(sqlite3.OperationalError("disk is full"))) == "disk full: disk is full"


async def test_claims_without_a_drain_are_live_and_sent_adds_up(buf: Buffer) -> None:
    """No drain boundary: nothing claimed is backlog (never marked historical); one event can
    be claimed at a time; the claimed and sent counters add up over batches."""
    for n in range(4):
        await buf.append(make_event("a", n))
    one = await buf.claim(1)
    rest = await buf.claim(10)
    assert [e.seq for e in one] == [1]
    assert [e.backlog for e in one + rest] == [False] * 4
    await buf.mark_sent(one)
    await buf.mark_sent(rest)
    assert (buf.transitions["claimed"], buf.transitions["sent"]) == (4, 4)


async def test_replay_figures_count_the_range_still_unsent(buf: Buffer) -> None:
    """As a replay ends: the events of that device and range not delivered yet (pending or in
    flight), not those of another device or outside the range."""
    for n in range(6):
        await buf.append(make_event("a", n))
        await buf.append(make_event("b", n))
    claimed = await buf.claim(12)
    await buf.mark_sent([e for e in claimed if e.device == "a" and e.seq in (2, 3)])
    await buf.release([e for e in claimed if e.seq == 5])
    assert await buf.replay_figures("a", 2, 5) == (2, [])  # 4 in flight, 5 pending
    assert await buf.replay_figures("a", 1, 6) == (4, [])
    assert await buf.replay_figures("b", 2, 3) == (2, [])


async def test_releasing_more_than_one_chunk_moves_every_count(buf: Buffer) -> None:
    """A release of 1 200 claimed events (three chunks of row ids) moves all of them in the
    per-state counts too, not only the last chunk's."""
    for n in range(1200):
        await buf.append(make_event("a", n))
    claimed = await buf.claim(1200)
    assert len(claimed) == 1200
    assert (await buf.stats()).by_state.get("in_flight") == 1200
    await buf.release(claimed)
    by_state = (await buf.stats()).by_state
    assert by_state.get("pending") == 1200 and not by_state.get("in_flight"), by_state


async def test_acks_around_a_hole_keep_the_oldest_pending_age(buf: Buffer) -> None:
    """PUBACKs for seq 1, then for 2 and 5 of 1..5: 3 and 4 are not sent, so once released they
    are the device's oldest pending events and its age is reported (not skipped as if the whole
    span 2..5 had been sent)."""
    for n in range(5):
        await buf.append(make_event("a", n))
    claimed = await buf.claim(5)
    await buf.mark_sent(claimed[:1])
    await buf.mark_sent([e for e in claimed if e.seq in (2, 5)])
    await buf.release(claimed)
    device = (await buf.stats()).devices["a"]
    assert device.pending == 2 and device.last_sent_seq == 5
    assert device.oldest_pending_age_s is not None


@pytest.mark.parametrize("count", [3, 600], ids=["one-chunk", "two-chunks"])
async def test_acks_for_a_row_released_meanwhile_still_count_it(buf: Buffer, count: int) -> None:
    """One claimed event went back to pending before the PUBACKs were recorded: the broker has
    it, so all become sent, and the counts move the pending one too. With 600 the first chunk
    of 500 row ids was all in flight and the second not: both are counted."""
    for n in range(count):
        await buf.append(make_event("a", n))
    claimed = await buf.claim(count)
    await buf.release([claimed[-2]])
    await buf.mark_sent(claimed)
    assert set(states(buf.path).values()) == {"sent"}
    stats = await buf.stats()
    assert stats.devices["a"].pending == 0 and stats.devices["a"].last_sent_seq == count
    assert stats.by_state.get("pending") == 0 and stats.by_state.get("in_flight") == 0
    assert stats.by_state.get("sent") == count
