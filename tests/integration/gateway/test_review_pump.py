"""Adversarial review of commit 5317475 (the publisher pump's wake-up events), on real parts.

5317475 clears the pump's wake-up events (``_slot_freed``, the buffer's ``committed``) at the
top of each loop turn, before it reads the buffer, and has a hold and a sent mark while
draining set ``_slot_freed``. Each test here pinned a hole it proved (fixed since, now
a plain test) or pins a dismissal: a real Mosquitto (``max_inflight_messages`` edited
where a small broker window is the point), a real buffer file, the real publisher.

Where a test needs the pump's claim to take a while, it holds the buffer file's SQLite write
lock from a second connection for a few milliseconds (as a slow disk or a long commit would):
the claim's ``BEGIN IMMEDIATE`` then waits in aiosqlite's thread, and the test acts while the
pump is inside ``Buffer.claim`` (read from the pump task's coroutine chain, not changed).
"""

from __future__ import annotations

import asyncio
import itertools
import resource
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import gateway.publisher
from buffer.claims_ahead import ClaimsAhead
from buffer.store import Buffer, OutgoingEvent
from gateway.publisher import Publisher
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from tests.integration.gateway.test_broker_refusals import broker_with, device_scan, held_seqs
from tests.integration.gateway.test_publisher import TOPICS, event
from tests.support import broker_configured, publisher_and_central, wait_until


def small_window_broker(tmp_path: Path, inflight: int) -> MosquittoBroker:
    return broker_configured(
        tmp_path / "small",
        lambda text: text.replace("max_inflight_messages 100", f"max_inflight_messages {inflight}"),
    )


def pump_task() -> asyncio.Task[Any]:
    return next(t for t in asyncio.all_tasks() if t.get_name() == "publisher-pump")


def awaiting(task: asyncio.Task[Any], name: str) -> bool:
    """Whether ``task`` is suspended somewhere inside a coroutine function called ``name``."""
    coro: Any = task.get_coro()
    while coro is not None:
        if getattr(getattr(coro, "cr_code", None), "co_name", "") == name:
            return True
        coro = getattr(coro, "cr_await", None)
    return False


async def until_awaiting(task: asyncio.Task[Any], name: str, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not awaiting(task, name):
            await asyncio.sleep(0)


def write_lock(path: Path) -> sqlite3.Connection:
    """The buffer file's SQLite write lock, taken from a second connection (see the module)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def count_calls(monkeypatch: pytest.MonkeyPatch, buffer: Buffer, name: str) -> Callable[[], int]:
    """Count the pump's calls of a buffer method (each still runs the real one)."""
    real: Callable[..., Awaitable[Any]] = getattr(buffer, name)
    calls = 0

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(buffer, name, counted)
    return lambda: calls


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- PROVEN ------------------------------------------------------------------------------------


async def test_an_event_a_checkpoint_kept_from_its_packet_id_is_sent_when_the_id_frees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker window of 2 (Receive Maximum 2: one packet id, shared by the events and the
    statuses). An event is appended; the pump counts one free id and claims it; while the claim
    waits for the file's write lock, a checkpoint takes the id; the lock goes, and the claim's
    answer and the checkpoint's PUBACK reach the loop in the same turn, the claim first (the
    loop is busy for 30 ms meanwhile, as a loaded box is). The pump finds no id, keeps the event
    in ``_unsent`` and waits for an id; the PUBACK freeing it is read before the wait's
    ``ids_freed()`` starts and clears the link's event. Nothing else wakes the pump: the event
    goes out at the 1 s net. Measured 1.03 s in 20 of 20 runs on 5317475 and on 5317475^
    (0.03 s, the busy loop alone, once ``ids_freed`` returns when an id is already free).
    Was PROVEN; fixed: the pump takes ``MqttLink.arm_ids_freed()``'s future at the top of its
    turn, in the same step as its checks, and a PUBACK resolves it whenever it is read.

    Commits claiming ahead (buffer/claims_ahead.py) are switched off: the race needs the
    claim's transaction, which the pump still runs whenever an older event is pending; with
    them on, each event here reaches the pump from memory, without a wait."""
    taken = ClaimsAhead.pending_taken
    monkeypatch.setattr(ClaimsAhead, "pending_taken", lambda self, _room: taken(self, 0))
    monkeypatch.setattr(ClaimsAhead, "widen", lambda _self, _window: None)
    broker = small_window_broker(tmp_path, 2)
    delivered: dict[str, float] = {}

    def on_delivered(batch: list[OutgoingEvent]) -> None:
        delivered.update((e.id, time.monotonic()) for e in batch)

    loop = asyncio.get_running_loop()
    took: list[float] = []
    checkpoints: list[asyncio.Task[bool]] = []
    async with publisher_and_central(
        tmp_path, broker, TOPICS, name="unsent-id", on_delivered=on_delivered
    ) as rig:
        await asyncio.sleep(0.2)
        pump = pump_task()
        for n in range(5):
            ev = event("a", n)
            started = time.monotonic()
            await rig.buffer.append(ev)
            lock = write_lock(rig.buffer.path)
            await until_awaiting(pump, "claim")  # free ids counted: 1; the claim waits
            checkpoints.append(asyncio.create_task(rig.publisher.publish_checkpoint({"n": n})))

            def release(lock: sqlite3.Connection = lock) -> None:
                lock.execute("ROLLBACK")
                lock.close()
                time.sleep(0.03)  # the loop busy: the claim ends, the PUBACK arrives

            loop.call_soon(release)  # after the checkpoint's first step: it has the id then
            await wait_until(lambda ev=ev: ev.id in delivered, timeout=5)
            took.append(delivered[ev.id] - started)
            await asyncio.sleep(0.05)
        assert all(await asyncio.gather(*checkpoints))
    assert max(took) < 0.5, "from append to PUBACK: " + " ".join(f"{t:.3f}" for t in took)


# --- DISMISSED (pinned) ------------------------------------------------------------------------


async def test_an_idle_publisher_does_not_spin_before_or_after_a_drain_that_held_an_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spin: a wake-up event left set would loop the pump without waiting. Each turn clears
    both events first and nothing but a PUBACK, a commit, a hold, a sent mark (while draining)
    or the held retry sets them, so an idle pump turns once a second (its net). Pinned on the
    two paths 5317475 added: a drain (``LIVE_FIRST_BACKLOG`` lowered to 2) whose backlog holds
    an event the broker's ACL refuses (``_hold_refused`` sets ``_slot_freed``, the marks set it
    while draining), then idle: pump turns (claims) and the process's CPU over 2 s. Measured
    before/after with a plain idle publisher (/tmp script, 5 s): 0.004 s CPU on 5317475^ and on
    5317475 alike."""
    monkeypatch.setattr(gateway.publisher, "LIVE_FIRST_BACKLOG", 2)
    acl = tmp_path / "acl"
    acl.write_text(
        "pattern write edge/site-test/gw-test/status\n"
        "pattern write edge/site-test/gw-test/events/ok\n"
        "pattern read #\n"
    )
    broker = broker_with(tmp_path, f"acl_file {acl}\n")
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**9)
    for ev in (device_scan("ok", 1), device_scan("no", 1), device_scan("ok", 2)):
        await buf.append(ev)
    await buf.close()
    async with publisher_and_central(tmp_path, broker, TOPICS, name="idle") as rig:
        await rig.central.wait_for(2, timeout=5)
        await wait_until(lambda: not rig.publisher.draining, timeout=2)
        await wait_until(lambda: held_seqs(rig.buffer.path) == {1}, timeout=2)
        claims = count_calls(monkeypatch, rig.buffer, "claim")
        cpu, started = cpu_seconds(), time.monotonic()
        await asyncio.sleep(2.0)
        cpu, idle = cpu_seconds() - cpu, time.monotonic() - started
        assert claims() <= 4, f"{claims()} pump turns in {idle:.2f} s idle"
        assert cpu < 0.1 * idle, f"{cpu:.3f} s CPU in {idle:.2f} s idle"
        assert rig.publisher.refused_by_broker == 1, "the held event was offered again"


async def test_an_event_committed_during_an_empty_claim_is_sent_at_once(tmp_path: Path) -> None:
    """Events committed during a claim: the pump clears ``committed`` before it claims, so a
    commit that the claim does not see (here it waits behind the claim, which waits for the
    file's write lock) sets it after the clear, and the wait after the empty claim returns at
    once. The event is delivered within milliseconds (0.5 s allowed), not at the 1 s net.

    A claim after one that took every pending row runs no transaction (``Buffer.claim``); an
    ``unhold`` with nothing held moves no row, but the buffer cannot know that before its
    transaction, so the pump's next claim (at the net) runs one, finding nothing."""
    delivered: dict[str, float] = {}

    def on_delivered(batch: list[OutgoingEvent]) -> None:
        delivered.update((e.id, time.monotonic()) for e in batch)

    broker = MosquittoBroker(tmp_path / "b")
    broker.start()
    took: list[float] = []
    async with publisher_and_central(
        tmp_path, broker, TOPICS, name="commit-claim", on_delivered=on_delivered
    ) as rig:
        pump = pump_task()
        for n in range(3):
            assert await rig.buffer.unhold() == 0
            lock = write_lock(rig.buffer.path)
            # Its idle claim (after the last PUBACK, or at the net), waiting for the lock: one
            # may have begun before the lock was taken (a CI run counted no new claim here).
            await until_awaiting(pump, "claim")
            ev = event("c", n)
            stored = rig.buffer.append_nowait(ev)
            started = time.monotonic()
            await asyncio.sleep(0.01)
            lock.execute("ROLLBACK")
            lock.close()
            await stored
            await wait_until(lambda ev=ev: ev.id in delivered, timeout=5)
            took.append(delivered[ev.id] - started)
    assert max(took) < 0.5, " ".join(f"{t:.3f}" for t in took)


async def test_a_windowed_drain_with_live_events_keeps_order_window_and_ends_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PUBACK or a sent mark during the drain's ``unsent_count`` read, a window limit, order.
    ``max_inflight`` 2 and a backlog of 60 (``LIVE_FIRST_BACKLOG`` lowered to 10): every turn of
    the drain reads the count, and PUBACKs and marks land during those reads; ``_slot_freed``
    is cleared before the read, so none is lost: no gap of the 1 s net between two deliveries
    (0.8 s allowed on a loaded box), and the drain ends within 0.8 s of the last PUBACK (on
    5317475^ it ended 1.0 s after it: this test fails there). Never more than 2 events in
    flight (sampled at every loop turn); per device the live events and the backlog each
    arrive in seq order, the backlog flagged historical once overtaken."""
    monkeypatch.setattr(gateway.publisher, "LIVE_FIRST_BACKLOG", 10)
    broker = MosquittoBroker(tmp_path / "b")
    broker.start()
    path = tmp_path / "buffer.db"
    buf = await Buffer.open(path, max_bytes=10**9)
    for n in range(60):
        await buf.append(event(f"d{n % 3}", n))
    await buf.close()
    buf = await Buffer.open(path, max_bytes=10**9)
    central = CentralCollector(broker.host, broker.port, client_id="central-window")
    central_task = asyncio.create_task(central.run())
    times: list[float] = []
    mqtt = MqttSection(host=broker.host, port=broker.port, max_inflight=2)
    pub = Publisher(
        mqtt,
        buf,
        TOPICS,
        client_id="gw-window",
        on_delivered=lambda b: times.extend(time.monotonic() for _ in b),
    )
    most = 0
    ended_at = 0.0

    async def sample() -> None:
        nonlocal most, ended_at
        while True:
            most = max(most, len(pub._in_flight))
            if pub.connected.is_set() and not pub.draining and not ended_at and times:
                ended_at = time.monotonic()
            await asyncio.sleep(0)

    await central.connected.wait()
    sampler = asyncio.create_task(sample())
    task = asyncio.create_task(pub.run())
    try:
        await pub.connected.wait()
        for n in range(20):
            await buf.append(event(f"d{n % 3}", 100 + n))
        assert await central.wait_for(80, timeout=20)
        await wait_until(lambda: bool(ended_at), timeout=3)
    finally:
        pub.stop()
        await task
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
        await buf.close()
        central_task.cancel()
        await asyncio.gather(central_task, return_exceptions=True)
        broker.stop()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < 0.8, f"a {max(gaps):.2f} s gap between two deliveries"
    late = ended_at - times[-1]  # the drain may end before the last live event's PUBACK
    assert late < 0.8, f"the drain's end noticed {late:.2f} s after the last PUBACK"
    assert most <= 2, f"{most} events in flight with max_inflight 2"
    assert any(m.get("historical") for m in central.messages), "no live event overtook"
    for index, device in enumerate(("d0", "d1", "d2")):
        mine = [m for m in central.messages if m["source"].endswith(f"/{device}")]
        live = [m["seq"] for m in mine if not m.get("historical") and m["seq"] > 20]
        backlog = [m["seq"] for m in mine if m["seq"] <= 20]
        assert live == sorted(live), f"{device}: live {live}"
        assert backlog == sorted(backlog), f"{device}: backlog {backlog}"
        live_count = sum(1 for n in range(20) if n % 3 == index)
        assert sorted({m["seq"] for m in mine}) == list(range(1, 21 + live_count))
