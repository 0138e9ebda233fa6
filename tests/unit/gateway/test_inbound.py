"""gateway/inbound.py's bookkeeping: which message may be acknowledged after which commit."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence

import pytest

from buffer.confirms import Settled, SettleResult
from buffer.schema import STATE_CONFIRMED
from gateway import command_limits, inbound
from gateway.confirmations import Confirmations
from gateway.inbound import Inbound
from gateway.topics import Topics

TOPICS = Topics("edge/s/g")


class FakeBuffer:
    """Records each settle; fails the first ``failures`` calls; knows ids starting with 'e'."""

    def __init__(self, failures: int = 0) -> None:
        self.batches: list[list[tuple[str, bool]]] = []
        self.failures = failures
        self.gate = asyncio.Event()
        self.gate.set()

    async def settle(self, verdicts: Sequence[tuple[str, bool]]) -> SettleResult:
        await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database is locked")
        self.batches.append(list(verdicts))
        applied = [Settled(i, "d", 1, STATE_CONFIRMED) for i, _ in verdicts if i.startswith("e")]
        return SettleResult(applied=applied, unknown=len(verdicts) - len(applied))


def make(buffer: FakeBuffer) -> Inbound:
    return Inbound(
        buffer,  # type: ignore[arg-type]
        Confirmations(lambda _device, _outcome: None),
        TOPICS,
        replays=None,  # type: ignore[arg-type]
        answer=lambda _body: None,
    )


def confirms(ids: list[str]) -> bytes:
    return json.dumps([{"id": i, "status": "accepted"} for i in ids]).encode()


async def test_messages_are_done_only_when_every_verdict_is_committed_across_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batches cut through messages: a message is done after the commit of its last verdict."""
    monkeypatch.setattr(inbound, "SETTLE_BATCH", 3)
    buffer = FakeBuffer()
    buffer.gate.clear()
    box = make(buffer)
    runner = asyncio.create_task(box.run())
    first = box.handle(TOPICS.confirm, confirms(["e1", "e2"]))
    second = box.handle(TOPICS.confirm, confirms(["e3", "e4", "e5"]))
    assert first is not None and second is not None
    await asyncio.sleep(0)
    assert not first.done() and not second.done()
    buffer.gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), 2)
    assert buffer.batches == [
        [("e1", True), ("e2", True), ("e3", True)],
        [("e4", True), ("e5", True)],
    ]
    assert box.counters["confirm_accepted"] == 5
    assert box.pending_bytes == 0
    runner.cancel()


async def test_invalid_input_is_acknowledged_at_once() -> None:
    box = make(FakeBuffer())
    assert box.handle(TOPICS.confirm, b"not json") is None
    assert box.handle(TOPICS.confirm, b'{"id": "x", "status": "maybe"}') is None
    assert box.handle("edge/s/g/other", b"{}") is None
    assert box.counters["confirm_invalid"] == 2


async def test_a_failed_settle_is_retried_and_the_message_done_only_after_it_commits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(inbound, "SETTLE_RETRY_MIN_S", 0.01)
    monkeypatch.setattr(inbound, "SETTLE_RETRY_MAX_S", 0.02)
    buffer = FakeBuffer(failures=3)
    box = make(buffer)
    runner = asyncio.create_task(box.run())
    done = box.handle(TOPICS.confirm, confirms(["e1"]))
    assert done is not None
    await asyncio.wait_for(done, 2)
    assert box.counters["confirm_store_retry"] == 3
    assert buffer.batches == [[("e1", True)]]
    runner.cancel()


async def test_over_the_byte_bound_a_message_waits_and_is_never_shed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payload = confirms(["e1"])
    monkeypatch.setattr(inbound, "MAX_PENDING_BYTES", 2 * len(payload))
    buffer = FakeBuffer()
    buffer.gate.clear()
    box = make(buffer)
    runner = asyncio.create_task(box.run())
    futures = [box.handle(TOPICS.confirm, confirms([f"e{n}"])) for n in range(5)]
    await asyncio.sleep(0)
    assert box.pending_bytes == 2 * len(payload), "two admitted, three waiting"
    assert box.counters["confirm_backpressure"] == 3
    buffer.gate.set()
    await asyncio.wait_for(asyncio.gather(*futures), 2)  # type: ignore[arg-type]
    assert sorted(i for batch in buffer.batches for i, _ in batch) == [f"e{n}" for n in range(5)]
    runner.cancel()


async def test_after_stop_accepting_every_message_is_held() -> None:
    box = make(FakeBuffer())
    runner = asyncio.create_task(box.run())
    await asyncio.wait_for(box.drain(), 1)
    held = box.handle(TOPICS.confirm, confirms(["e1"]))
    bad = box.handle(TOPICS.confirm, b"not json")
    await asyncio.sleep(0.05)
    assert held is not None and not held.done()
    assert bad is not None and not bad.done()
    assert box.counters["held_at_stop"] == 2
    runner.cancel()


def test_the_request_window_is_bounded_by_count_and_age(monkeypatch: pytest.MonkeyPatch) -> None:
    """request_ids are remembered for a while, at most so many: memory stays bounded under a
    flood of fresh ids, and ``1`` and ``"1"`` are different requests (issue 18, finding 3)."""
    now = [1000.0]
    monkeypatch.setattr(command_limits.time, "monotonic", lambda: now[0])
    window = command_limits.RequestWindow(period=60.0, size=100)
    window.add(1)
    assert 1 in window and "1" not in window
    for n in range(10_000):
        window.add(f"r{n}")
    assert len(window) == 100
    assert 1 not in window and "r9999" in window and "r9899" not in window
    now[0] += 61
    assert "r9999" not in window and len(window) == 0
