"""gateway/confirmations.py on its own: which event gets which feedback, once, and when.

A real policy per device (from the real driver tables), a recording feedback function; timers
run on the test's event loop with timeouts of a few hundredths of a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from drivers.base import DeviceConfig, Outcome, StoredEvent
from gateway import confirmations
from gateway.confirmations import Confirmations
from gateway.feedback_policy import FeedbackPolicy

SCAN = "warehouse.barcode.scanned.v1"
READING = "warehouse.conveyor.reading.v1"
G, B, P = Outcome.GOOD, Outcome.BAD, Outcome.PENDING


def policy(
    device: str, level: str, *, driver: str = "barcode-serial", timeout: float = 60.0
) -> FeedbackPolicy:
    config = DeviceConfig(id=device, driver=driver, confirm=level, confirm_timeout=timeout)
    return FeedbackPolicy.for_device(config)


def scan(event_id: str, device: str = "dock-1", type_: str = SCAN) -> StoredEvent:
    return StoredEvent(event_id, device, 1, "t", type_)


class Recorder:
    def __init__(self) -> None:
        self.given: list[tuple[str, Outcome]] = []
        self.tracker = Confirmations(lambda device, outcome: self.given.append((device, outcome)))


@pytest.fixture
def rec() -> Iterator[Recorder]:
    recorder = Recorder()
    yield recorder
    recorder.tracker.close()


async def test_stored_level_gives_good_at_once_with_its_latency(rec: Recorder) -> None:
    rec.tracker.stored(policy("dock-1", "stored"), scan("a"), time.monotonic() - 5.0)
    assert rec.given == [("dock-1", G)]
    assert rec.tracker.waiting == 0
    assert len(rec.tracker.latencies) == 1 and 5.0 <= rec.tracker.latencies[0] < 6.0
    assert rec.tracker.latencies_total == 1
    assert rec.tracker.outcomes == {"good": 1, "bad": 0, "pending": 0}


async def test_delivered_level_waits_then_good_once_on_puback(rec: Recorder) -> None:
    """Nothing at commit; good at the PUBACK, with the latency since capture; a second PUBACK
    report or a later verdict for it gives nothing more, and no timeout follows."""
    rec.tracker.stored(policy("dock-1", "delivered", timeout=0.05), scan("a"), time.monotonic() - 2)
    assert rec.given == [] and rec.tracker.waiting == 1
    rec.tracker.delivered(["unknown", "a"])
    assert rec.given == [("dock-1", G)] and rec.tracker.waiting == 0
    assert len(rec.tracker.latencies) == 1 and 2.0 <= rec.tracker.latencies[0] < 3.0
    rec.tracker.delivered(["a"])
    rec.tracker.settled("a", "dock-1", accepted=True, reason=None)
    await asyncio.sleep(0.1)  # past the timeout: its timer was cancelled
    assert rec.given == [("dock-1", G)]
    assert rec.tracker.outcomes["pending"] == 0


async def test_delivered_ids_after_an_unknown_one_are_still_seen(rec: Recorder) -> None:
    """Every id of a PUBACK group is looked at, whatever comes before it."""
    p = policy("dock-1", "delivered")
    for event_id in ("a", "b"):
        rec.tracker.stored(p, scan(event_id), time.monotonic())
    rec.tracker.delivered(["a", "x", "b"])
    assert rec.given == [("dock-1", G), ("dock-1", G)]
    assert rec.tracker.waiting == 0


async def test_accepted_level_ignores_the_puback_and_keeps_waiting(rec: Recorder) -> None:
    rec.tracker.stored(policy("dock-1", "accepted"), scan("a"), time.monotonic())
    rec.tracker.delivered(["a"])
    assert rec.given == [] and rec.tracker.waiting == 1
    rec.tracker.settled("a", "dock-1", accepted=True, reason=None)
    assert rec.given == [("dock-1", G)] and rec.tracker.waiting == 0
    assert rec.tracker.latencies_total == 1


async def test_a_rejection_gives_bad_once_without_a_latency(rec: Recorder) -> None:
    p = policy("dock-1", "accepted", timeout=0.05)
    rec.tracker.stored(p, scan("a"), time.monotonic())
    with capture_logs() as logs:
        rec.tracker.settled("a", "dock-1", accepted=False, reason="bad\nsite " + "x" * 500)
    assert rec.given == [("dock-1", B)]
    assert rec.tracker.latencies == [] and rec.tracker.latencies_total == 0
    rejected = [e for e in logs if e["event"] == "event_rejected"]
    assert len(rejected) == 1 and rejected[0]["id"] == "a" and rejected[0]["device"] == "dock-1"
    shown = rejected[0]["reason"]
    assert shown.startswith("bad\\nsite xxx") and "\n" not in shown, "escaped"
    assert shown.endswith("...(+310 chars)"), "cut at the limit, the rest counted"
    rec.tracker.settled("a", "dock-1", accepted=False, reason=None)
    await asyncio.sleep(0.1)
    assert rec.given == [("dock-1", B)], "once: no second bad, no pending after the timeout"


async def test_a_rejection_without_a_reason_logs_none(rec: Recorder) -> None:
    with capture_logs() as logs:
        rec.tracker.settled("nobody-waits", "dock-1", accepted=False, reason=None)
    assert [e["reason"] for e in logs if e["event"] == "event_rejected"] == [None]
    assert rec.given == []


async def test_an_acceptance_logs_nothing(rec: Recorder) -> None:
    with capture_logs() as logs:
        rec.tracker.settled("nobody-waits", "dock-1", accepted=True, reason="fine")
    assert logs == []


async def test_timeout_gives_pending_once_and_is_logged_with_the_id(rec: Recorder) -> None:
    rec.tracker.stored(policy("dock-1", "delivered", timeout=0.02), scan("a"), time.monotonic())
    with capture_logs() as logs:
        await asyncio.sleep(0.1)
    assert rec.given == [("dock-1", P)] and rec.tracker.waiting == 0
    assert rec.tracker.latencies == []
    assert [(e["event"], e["device"], e["id"]) for e in logs] == [
        ("confirm_timeout", "dock-1", "a")
    ]
    rec.tracker.delivered(["a"])
    rec.tracker.settled("a", "dock-1", accepted=True, reason=None)
    assert rec.given == [("dock-1", P)], "no good after the timeout"


async def test_kinds_nobody_waits_on_are_never_tracked(rec: Recorder) -> None:
    p = policy("conveyor", "delivered", driver="modbus")
    rec.tracker.stored(p, scan("r", "conveyor", READING), time.monotonic())
    rec.tracker.stored_while_stopping(p, scan("s", "conveyor", READING), time.monotonic())
    rec.tracker.refused(p, READING)
    assert rec.tracker.waiting == 0 and rec.given == []


async def test_refused_gives_bad_without_a_latency(rec: Recorder) -> None:
    rec.tracker.refused(policy("dock-1", "stored"), SCAN)
    assert rec.given == [("dock-1", B)]
    assert rec.tracker.latencies == [] and rec.tracker.outcomes["bad"] == 1


@pytest.mark.parametrize(("level", "expected"), [("stored", G), ("delivered", P), ("accepted", P)])
async def test_stored_while_stopping_decides_now(
    rec: Recorder, level: str, expected: Outcome
) -> None:
    """Good (with its latency) where storing is the level, else pending; never a waiter."""
    p = policy("dock-1", level, timeout=0.02)
    rec.tracker.stored_while_stopping(p, scan("a"), time.monotonic() - 3.0)
    assert rec.given == [("dock-1", expected)] and rec.tracker.waiting == 0
    if expected is G:
        assert len(rec.tracker.latencies) == 1 and 3.0 <= rec.tracker.latencies[0] < 4.0
    else:
        assert rec.tracker.latencies == [] and rec.tracker.latencies_total == 0
    await asyncio.sleep(0.05)
    assert rec.given == [("dock-1", expected)]


async def test_device_stopped_answers_only_that_devices_waiters(rec: Recorder) -> None:
    mine, other = policy("dock-1", "delivered", timeout=0.05), policy("dock-2", "delivered")
    rec.tracker.stored(mine, scan("a"), time.monotonic())
    rec.tracker.stored(mine, scan("b"), time.monotonic())
    rec.tracker.stored(other, scan("c", "dock-2"), time.monotonic())
    assert rec.tracker.device_stopped("dock-1") == 2
    assert rec.given == [("dock-1", P), ("dock-1", P)]
    assert rec.tracker.waiting == 1 and rec.tracker.latencies == []
    await asyncio.sleep(0.1)  # past dock-1's timeout: its timers were cancelled
    assert rec.given == [("dock-1", P), ("dock-1", P)]
    rec.tracker.delivered(["a", "b", "c"])
    assert rec.given[2:] == [("dock-2", G)]
    assert rec.tracker.device_stopped("dock-1") == 0


@pytest.mark.parametrize(("level", "expected"), [("stored", G), ("delivered", P), ("accepted", P)])
async def test_an_event_of_a_stopped_driver_instance_is_decided_at_once(
    rec: Recorder, level: str, expected: Outcome
) -> None:
    """A driver instance's event committing after ``device_stopped`` (its emit in a task the
    stop's cancellation missed) gets its level's answer now, never a waiter; the instance
    started after the stop (a reload) and a policy never registered keep waiting as ever."""
    stopped, unregistered = policy("dock-1", level), policy("dock-2", level)
    rec.tracker.driver_started(stopped)
    rec.tracker.device_stopped("dock-1")
    rec.tracker.device_stopped("dock-2")
    rec.tracker.stored(stopped, scan("a"), time.monotonic())
    assert rec.given == [("dock-1", expected)] and rec.tracker.waiting == 0
    # A good answer counts its scan -> feedback latency like any other.
    assert len(rec.tracker.latencies) == (1 if expected is Outcome.GOOD else 0)
    restarted = policy("dock-1", level)
    rec.tracker.driver_started(restarted)
    rec.tracker.stored(stopped, scan("b"), time.monotonic())  # still the old instance's
    assert rec.given == [("dock-1", expected)] * 2 and rec.tracker.waiting == 0
    rec.tracker.stored(restarted, scan("c"), time.monotonic())
    rec.tracker.stored(unregistered, scan("d", "dock-2"), time.monotonic())
    waits = 0 if level == "stored" else 2
    assert rec.tracker.waiting == waits
    rec.tracker.settled("c", "dock-1", accepted=True, reason=None)
    rec.tracker.settled("d", "dock-2", accepted=True, reason=None)
    assert rec.given[2:] == [("dock-1", G), ("dock-2", G)]


async def test_latencies_stay_bounded_and_the_total_counts_all(rec: Recorder) -> None:
    p = policy("dock-1", "stored")
    now = time.monotonic()
    for n in range(10_000):
        rec.tracker.stored(p, scan(f"e{n}"), now)
    assert len(rec.tracker.latencies) == 10_000, "10 000 kept"
    rec.tracker.stored(p, scan("e10000"), now)
    assert len(rec.tracker.latencies) == 5_001, "the oldest half dropped past 10 000"
    assert rec.tracker.latencies_total == 10_001
    rec.tracker.stored(p, scan("last"), now - 100.0)
    assert rec.tracker.latencies[-1] >= 100.0, "most recent last"


async def test_timeout_summary_counts_each_interval_and_close_says_the_rest(
    rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """First timeout logged with its id; then one summary per interval with the count and the
    last id; an interval without timeouts ends the burst; close says what is left."""
    monkeypatch.setattr(confirmations, "TIMEOUT_LOG_INTERVAL", 0.2)
    p = policy("dock-1", "delivered", timeout=0.01)
    with capture_logs() as logs:
        for n in range(3):
            rec.tracker.stored(p, scan(f"a{n}"), time.monotonic())
        await asyncio.sleep(0.05)  # all three timed out: the first logged, two counted
        await asyncio.sleep(0.2)  # the interval ended: a summary of two
        rec.tracker.stored(p, scan("b"), time.monotonic())
        await asyncio.sleep(0.2)  # counted in the second interval, which ended
        rec.tracker.stored(p, scan("c"), time.monotonic())
        await asyncio.sleep(0.05)  # counted in the third, closed 0.1 s before its end
        rec.tracker.close()
    lines = [(e["event"], e.get("count"), e.get("id") or e.get("last_id")) for e in logs]
    assert lines == [
        ("confirm_timeout", None, "a0"),
        ("confirm_timeout_summary", 2, "a2"),
        ("confirm_timeout_summary", 1, "b"),
        ("confirm_timeout_summary", 1, "c"),
    ]
    assert all(e["device"] == "dock-1" for e in logs)
    assert [e.get("interval_s") for e in logs[1:]] == [0.2, 0.2, None], "the last one by close"
    assert rec.given == [("dock-1", P)] * 5


async def test_a_quiet_interval_ends_the_burst(
    rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No timeout during an interval: no summary, and the next timeout is logged with its id."""
    monkeypatch.setattr(confirmations, "TIMEOUT_LOG_INTERVAL", 0.05)
    p = policy("dock-1", "delivered", timeout=0.01)
    with capture_logs() as logs:
        rec.tracker.stored(p, scan("a"), time.monotonic())
        await asyncio.sleep(0.1)  # timed out, then an interval with nothing more
        rec.tracker.stored(p, scan("b"), time.monotonic())
        await asyncio.sleep(0.03)
        rec.tracker.close()
    assert [(e["event"], e.get("id")) for e in logs] == [
        ("confirm_timeout", "a"),
        ("confirm_timeout", "b"),
    ]


async def test_close_cancels_every_timer(rec: Recorder) -> None:
    p = policy("dock-1", "delivered", timeout=0.02)
    rec.tracker.stored(p, scan("a"), time.monotonic())
    rec.tracker.close()
    assert rec.tracker.waiting == 0
    await asyncio.sleep(0.05)
    assert rec.given == []
