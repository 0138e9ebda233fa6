"""gateway/inbound.py on real parts: a buffer file, the confirmations tracker, a replay worker.

What central sends is counted (the gateway's confirm and command metrics), applied to the
buffer, turned into feedback, and answered on ``cmd/result``: each of those is checked here
(issue 19, mutation run). The replay worker is not started: a command it takes stays queued.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from buffer.event_ids import id_text
from buffer.schema import STATE_CONFIRMED, STATE_REJECTED
from buffer.store import Buffer, NewEvent
from drivers.base import DeviceConfig, Outcome
from gateway import inbound, replay
from gateway.command_limits import COMMAND_BURST
from gateway.confirmations import Confirmations
from gateway.feedback_policy import FeedbackPolicy
from gateway.inbound import Inbound
from gateway.replay import MAX_QUEUED, ReplayWorker
from gateway.topics import Topics

TOPICS = Topics("edge/s/g")
SCAN = "warehouse.barcode.scanned.v1"


class Rig:
    """Inbound wired as the daemon wires it; feedback and answers recorded."""

    def __init__(self, buffer: Buffer, *, feedback_fails: bool = False) -> None:
        self.buffer = buffer
        self.given: list[tuple[str, Outcome]] = []
        self.answers: list[dict[str, Any]] = []

        def feedback(device: str, outcome: Outcome) -> None:
            if feedback_fails:
                raise RuntimeError("driver gone")
            self.given.append((device, outcome))

        async def send(_topic: str, _payload: bytes) -> None:
            return None

        async def connected() -> None:
            await asyncio.Event().wait()  # never: a replay waits for a link that is not there

        def answer(body: bytes) -> None:
            self.answers.append(json.loads(body))

        self.confirmations = Confirmations(feedback)
        self.replays = ReplayWorker(
            buffer, TOPICS, send=send, connected=connected, answer=answer, rate=100.0
        )
        self.inbound = Inbound(buffer, self.confirmations, TOPICS, self.replays, answer)
        self.policy = FeedbackPolicy.for_device(
            DeviceConfig(id="dock-1", driver="barcode-serial", confirm="accepted")
        )

    async def scans(self, count: int) -> list[str]:
        """``count`` scans committed to the buffer and waiting for central's verdict."""
        ids = []
        for n in range(count):
            stored = await self.buffer.append(
                NewEvent(f"id-{n}", "dock-1", "t", SCAN, False, lambda seq: b'{"s": %d}' % seq)
            )
            self.confirmations.stored(self.policy, stored, time.monotonic())
            ids.append(stored.id)
        return ids

    def states(self) -> dict[str, int]:
        with sqlite3.connect(self.buffer.path) as conn:
            rows = conn.execute("SELECT id, state FROM events").fetchall()
        return {id_text(i): int(s) for i, s in rows}

    def command(self, request_id: object, *, retained: bool = False, **body: object) -> None:
        payload = json.dumps({"request_id": request_id, "device": "dock-1", **body}).encode()
        if retained:
            assert self.inbound.handle(TOPICS.cmd_replay, payload, retained=True) is None
        else:  # as the link hands over a message that was not retained
            assert self.inbound.handle(TOPICS.cmd_replay, payload) is None


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    buffer = await Buffer.open(tmp_path / "buffer.db", max_bytes=2**20)
    rig = Rig(buffer)
    runner = asyncio.create_task(rig.inbound.run())
    yield rig
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    rig.confirmations.close()
    await buffer.close()


def verdicts(*items: tuple[str, str] | tuple[str, str, str]) -> bytes:
    body = [{"id": i[0], "status": i[1], **({"reason": i[2]} if len(i) > 2 else {})} for i in items]
    return json.dumps(body).encode()


async def test_verdicts_are_stored_counted_and_fed_back(rig: Rig) -> None:
    """Accepted, rejected (with its reason), a repeat and an unknown id in one message: each
    counted as what it is, the two verdicts in the file, good and bad to the worker."""
    a, b = await rig.scans(2)
    message = verdicts((a, "accepted"), (b, "rejected", "no such order"), (a, "accepted"))
    with capture_logs() as logs:
        done = rig.inbound.handle(TOPICS.confirm, message)
        assert done is not None
        await asyncio.wait_for(done, 2)
        for _ in range(2):
            unknown = rig.inbound.handle(TOPICS.confirm, verdicts(("never-stored", "accepted")))
            assert unknown is not None
            await asyncio.wait_for(unknown, 2)
    assert rig.states() == {a: STATE_CONFIRMED, b: STATE_REJECTED}
    assert rig.given == [("dock-1", Outcome.GOOD), ("dock-1", Outcome.BAD)]
    counters = rig.inbound.counters
    assert counters["confirm_messages"] == 3
    assert (counters["confirm_accepted"], counters["confirm_rejected"]) == (1, 1)
    assert (counters["confirm_duplicate"], counters["confirm_unknown"]) == (1, 2)
    rejected = [e for e in logs if e["event"] == "event_rejected"]
    assert [(e["device"], e["id"], e["reason"]) for e in rejected] == [
        ("dock-1", b, "no such order")
    ]
    assert [e["ids"] for e in logs if e["event"] == "confirm_unknown_ids"] == [1]  # per burst
    assert rig.inbound.pending_bytes == 0


async def test_a_known_verdict_logs_no_unknown_ids(rig: Rig) -> None:
    (a,) = await rig.scans(1)
    with capture_logs() as logs:
        done = rig.inbound.handle(TOPICS.confirm, verdicts((a, "accepted")))
        assert done is not None
        await asyncio.wait_for(done, 2)
    assert not [e for e in logs if e["event"] == "confirm_unknown_ids"]


async def test_a_failing_feedback_is_counted_and_the_confirm_still_acknowledged(
    tmp_path: Path,
) -> None:
    buffer = await Buffer.open(tmp_path / "buffer.db", max_bytes=2**20)
    rig = Rig(buffer, feedback_fails=True)
    runner = asyncio.create_task(rig.inbound.run())
    try:
        a, b = await rig.scans(2)
        done = rig.inbound.handle(TOPICS.confirm, verdicts((a, "accepted"), (b, "accepted")))
        assert done is not None
        await asyncio.wait_for(done, 2)
        assert rig.inbound.counters["feedback_error"] == 2, "each verdict tried"
        assert rig.inbound.counters["confirm_accepted"] == 2
        assert rig.states() == {a: STATE_CONFIRMED, b: STATE_CONFIRMED}
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        rig.confirmations.close()
        await buffer.close()


async def test_partly_invalid_verdicts_are_counted_and_the_valid_ones_applied(rig: Rig) -> None:
    a, b = await rig.scans(2)
    bad = {"id": "x", "status": "maybe"}
    for body in (
        [{"id": a, "status": "accepted"}, bad],
        [bad, {"id": b, "status": "accepted"}, bad],
    ):
        done = rig.inbound.handle(TOPICS.confirm, json.dumps(body).encode())
        assert done is not None
        await asyncio.wait_for(done, 2)
    assert rig.inbound.counters["confirm_invalid_verdicts"] == 3
    assert rig.inbound.counters["confirm_invalid"] == 0
    assert rig.states() == {a: STATE_CONFIRMED, b: STATE_CONFIRMED}


async def test_unexpected_input_is_counted_and_never_raises(rig: Rig) -> None:
    for _ in range(2):
        assert rig.inbound.handle("edge/s/g/other", b"{}") is None
        assert rig.inbound.handle(TOPICS.confirm, None) is None  # type: ignore[arg-type]
    assert rig.inbound.counters["foreign_topic"] == 2
    assert rig.inbound.counters["handler_error"] == 2
    assert rig.inbound.counters["confirm_messages"] == 2
    assert rig.inbound.subscriptions == (TOPICS.confirm, TOPICS.cmd_replay)


async def test_waiting_messages_are_admitted_in_order_as_room_frees(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the byte bound, messages wait; each commit admits what fits, first come first."""
    ids = await rig.scans(4)
    payloads = [verdicts((i, "accepted")) for i in ids]
    monkeypatch.setattr(inbound, "MAX_PENDING_BYTES", len(payloads[0]) + 1)
    done = [rig.inbound.handle(TOPICS.confirm, p) for p in payloads]
    assert all(d is not None for d in done)
    assert rig.inbound.pending_bytes == len(payloads[0]), "one admitted, three wait"
    assert rig.inbound.counters["confirm_backpressure"] == 3
    order: list[int] = []
    for n, future in enumerate(done):
        assert future is not None
        future.add_done_callback(lambda _f, n=n: order.append(n))
    await asyncio.wait_for(asyncio.gather(*done), 2)  # type: ignore[arg-type]
    assert order == [0, 1, 2, 3]
    assert rig.inbound.pending_bytes == 0
    await asyncio.wait_for(rig.inbound.drain(), 1)


async def test_a_waiting_message_joins_the_commit_that_finishes_a_cut_message(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Room freed by a commit that cut through a message is given at once: the waiting
    message shares the next commit and is acknowledged with the cut one, not one commit
    later."""
    monkeypatch.setattr(inbound, "SETTLE_BATCH", 3)
    a, b, c, d, e, f = await rig.scans(6)
    first, cut, waiting = (
        verdicts((a, "accepted")),
        verdicts(*[(i, "accepted") for i in (b, c, d, e)]),
        verdicts((f, "accepted")),
    )
    assert len(waiting) == len(first)
    monkeypatch.setattr(inbound, "MAX_PENDING_BYTES", len(first) + len(cut))
    done = [rig.inbound.handle(TOPICS.confirm, p) for p in (first, cut, waiting)]
    assert rig.inbound.counters["confirm_backpressure"] == 1, "the third waits"
    assert done[1] is not None and done[2] is not None
    waiting_done_with_cut: list[bool] = []
    done[1].add_done_callback(lambda _f: waiting_done_with_cut.append(done[2].done()))
    await asyncio.wait_for(asyncio.gather(*done), 2)  # type: ignore[arg-type]
    assert waiting_done_with_cut == [True]
    assert set(rig.states().values()) == {STATE_CONFIRMED}


async def test_drain_waits_for_the_commit_of_what_was_received(rig: Rig) -> None:
    """Then every message is held (never acknowledged this session), logged once."""
    a, b = await rig.scans(2)
    done = rig.inbound.handle(TOPICS.confirm, verdicts((a, "accepted")))
    await asyncio.wait_for(rig.inbound.drain(), 2)
    assert done is not None and done.done()
    with capture_logs() as logs:
        held = [rig.inbound.handle(TOPICS.confirm, verdicts((b, "accepted"))) for _ in range(3)]
        await asyncio.sleep(0.05)
    assert all(h is not None and not h.done() for h in held)
    assert rig.inbound.counters["held_at_stop"] == 3
    assert [e["event"] for e in logs] == ["inbound_held_for_next_session"]
    assert rig.states() == {a: STATE_CONFIRMED, b: 0}


# --- replay commands ------------------------------------------------------------------------


async def test_a_valid_command_is_queued_once_and_not_answered(rig: Rig) -> None:
    rig.command("r1", from_seq=1)
    rig.command("r1", from_seq=1)  # a redelivery: ignored
    rig.command("r1", from_seq=1)  # and again
    rig.command(1, from_seq=1)  # 1 is not "1", nor "r1": a new request
    counters = rig.inbound.counters
    assert (counters["cmd_messages"], counters["cmd_replay_queued"]) == (4, 2)
    assert counters["cmd_duplicate"] == 2
    assert rig.answers == []


async def test_an_invalid_command_is_answered_with_why(rig: Rig) -> None:
    rig.command("r1", from_seq=5, to_seq=2)
    rig.command(None, from_seq=0)  # no readable request_id: nothing to answer to
    assert rig.answers == [
        {"request_id": "r1", "ok": False, "detail": "to_seq 2 is before from_seq 5"}
    ]
    assert rig.inbound.counters["cmd_invalid"] == 2
    rig.command("r1", from_seq=1)  # the invalid one was not remembered: this one runs
    assert rig.inbound.counters["cmd_replay_queued"] == 1


async def test_a_retained_command_is_refused_and_remembered(rig: Rig) -> None:
    rig.command("r1", retained=True, from_seq=1)
    rig.command("r2", retained=True, from_seq=1)
    detail = (
        "retained command not run (it would run again on every subscription):"
        " publish commands with retain=false and clear this retained message"
    )
    assert rig.answers == [
        {"request_id": "r1", "ok": False, "detail": detail},
        {"request_id": "r2", "ok": False, "detail": detail},
    ]
    assert rig.inbound.counters["cmd_retained"] == 2
    assert rig.inbound.counters["cmd_replay_queued"] == 0
    rig.command("r1", from_seq=1)  # the same command again, not retained: already answered
    assert rig.inbound.counters["cmd_duplicate"] == 1
    assert rig.inbound.counters["cmd_replay_queued"] == 0 and len(rig.answers) == 2


async def test_a_busy_worker_refuses_and_the_same_id_may_come_back(rig: Rig) -> None:
    for n in range(MAX_QUEUED):
        rig.command(f"r{n}", from_seq=1)
    rig.command("late", from_seq=1)
    assert rig.answers == [
        {
            "request_id": "late",
            "ok": False,
            "detail": f"busy: {MAX_QUEUED} replays already queued, retry later",
        }
    ]
    assert rig.inbound.counters["cmd_busy"] == 1
    rig.command("late", from_seq=1)  # not remembered: refused again, not ignored
    assert rig.inbound.counters["cmd_busy"] == 2 and rig.inbound.counters["cmd_duplicate"] == 0
    assert rig.inbound.counters["cmd_replay_queued"] == MAX_QUEUED


async def test_commands_over_the_rate_are_answered_rate_limited(rig: Rig) -> None:
    burst = int(COMMAND_BURST)
    for n in range(burst):
        rig.command(f"bad{n}", from_seq=0)  # invalid, but each costs a token all the same
    rig.command("over", from_seq=1)
    rig.command(None, from_seq=1)  # over too, nothing to answer to
    counters = rig.inbound.counters
    assert counters["cmd_rate_limited"] >= 1 and counters["cmd_replay_queued"] == 0
    assert rig.answers[-1] == {
        "request_id": "over",
        "ok": False,
        "detail": "rate limited: at most 5 commands/s; retry later",
    }
    assert len(rig.answers) == burst + 1
    assert counters["cmd_messages"] == burst + 2


async def test_answers_are_bounded_too(rig: Rig) -> None:
    """A flood of answerable commands gets at most about 50 answers; the rest are counted."""
    started = time.monotonic()
    for n in range(200):
        rig.command(f"r{n}", from_seq=0)
    refilled = (time.monotonic() - started) * 50.0  # answers per second after the burst
    suppressed = rig.inbound.counters["answers_suppressed"]
    assert 50 <= len(rig.answers) <= 50 + refilled, "a burst of 50, then 50/s"
    assert suppressed == 200 - len(rig.answers)
    assert rig.inbound.counters["cmd_invalid"] + rig.inbound.counters["cmd_rate_limited"] == 200


class Clock:
    """``time`` as gateway/replay.py's token buckets see it, with a monotonic clock the test
    moves by hand (the rest is the real module)."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


async def test_answers_refill_at_fifty_a_second(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer bound is a burst of 50, then 50 a second: 0.99 s after a flood spent the
    burst, 49 more answers go out (49.5 earned), not 50 (``Inbound.__init____mutmut_19``
    refilled at 51/s). The buckets' clock is driven, so no second is waited for."""
    clock = Clock()
    monkeypatch.setattr(replay, "time", clock)
    for n in range(200):
        rig.command(f"a{n}", from_seq=0)
    assert len(rig.answers) == 50, "the burst"
    clock.now += 0.99
    for n in range(200):
        rig.command(f"b{n}", from_seq=0)
    assert len(rig.answers) == 50 + 49
    assert rig.inbound.counters["answers_suppressed"] == 400 - 99


async def test_refusals_past_the_answer_bound_are_counted_not_answered(rig: Rig) -> None:
    """Invalid commands within the command rate but past the answer bound (no waiting)."""
    while rig.inbound._answers.try_take():  # spent, as by an earlier flood
        pass
    rig.command("r1", from_seq=0)
    rig.command("r2", from_seq=0)
    assert rig.answers == [] and rig.inbound.counters["answers_suppressed"] == 2
    assert rig.inbound.counters["cmd_invalid"] == 2


async def test_a_command_the_worker_refuses_may_be_sent_again(rig: Rig) -> None:
    """A command the worker cannot admit (the replays queued already cover as many events as
    may wait) is answered busy, and its request_id is forgotten: a retry is taken, not ignored.

    The first replay is held up waiting for the link, the second (a million events) waits
    behind it, the third is over the bound."""
    await rig.scans(1)
    await rig.buffer.mark_sent(await rig.buffer.claim(1))  # a replayable event
    worker = asyncio.create_task(rig.replays.run())
    try:
        rig.command("active", from_seq=1, to_seq=1)
        async with asyncio.timeout(2):
            while rig.replays.active is None:
                await asyncio.sleep(0.01)
        rig.command("queued", from_seq=1, to_seq=1_000_000)
        rig.command("over", from_seq=1, to_seq=1)
        async with asyncio.timeout(2):
            while not rig.answers:
                await asyncio.sleep(0.01)
        assert [(a["request_id"], a["ok"]) for a in rig.answers] == [("over", False)]
        assert rig.answers[0]["detail"].startswith("busy: replays already queued cover 1000000")
        rig.command("over", from_seq=1, to_seq=1)
        assert rig.inbound.counters["cmd_duplicate"] == 0
        assert rig.inbound.counters["cmd_replay_queued"] == 4
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
