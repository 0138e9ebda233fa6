"""Adversarial review of the session's last fixes, on real parts.

25d2eee: ``MqttLink.arm_ids_freed()`` / ``ids_freed(armed)``: a freed packet id resolves a
shared future, taken in the step of the check, instead of an event each waiter cleared.
6d4302d: ``Buffer.stats()`` / ``_replay_reads`` refuse once closing after closing a spare
reader; ``Gateway._close_buffer`` keeps the run's failure; the demo's view ends with the
gateway's task and a failed gateway makes it log ``demo_gateway_failed`` and exit 1.

Each test pins a hole it proved (fixed since) or a dismissal
(a plain test): a real Mosquitto (``max_inflight_messages`` edited where a small broker window
is the point), real buffer files, the demo as a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import pty
import resource
import select
import signal
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import aiomqtt
import pytest

from buffer.store import Buffer
from central.config import load_central_settings
from central.service import CentralLink
from gateway.mqtt_link import LinkError, MqttLink
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker
from tests.chaos.faultproxy import FaultProxy
from tests.integration.central.conftest import write_central_config
from tests.integration.gateway.test_publisher import TOPICS, event
from tests.support import ROOT, broker_configured, run_python, running_publisher, wait_until

_DEMO_WITH_GATEWAY_FAILING_INTO_A_SLOW_CLOSE = textwrap.dedent(
    """
    import asyncio
    import sys

    from buffer.store import Buffer
    from gateway.cli import main
    from gateway.publisher import Publisher

    real_run = Publisher.run
    real_close = Buffer._close

    async def run(self):  # the injected fault: the essential publisher fails after 3 s
        task = asyncio.ensure_future(real_run(self))
        try:
            await asyncio.sleep(3)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        raise RuntimeError("injected gateway failure")

    async def slow_close(self):  # a close that takes 1 s (a slow disk's last commit, fsync)
        self._closing = True
        await asyncio.sleep(1.0)
        await real_close(self)

    Publisher.run = run
    Buffer._close = slow_close
    sys.exit(main(["demo", "--duration", "12"]))
    """
)


def test_a_gateway_failing_into_a_slow_buffer_close_is_still_said_by_the_demo() -> None:
    """6d4302d ends the view when ``gateway.done()``, checked at the top of each 0.25 s turn,
    then ``take_frame`` awaits the ledger and ``gateway.buffer.stats()``. The gateway's task
    ends only after ``Gateway.run`` has closed its buffer (``_close_buffer``), and
    ``Buffer.close`` sets ``_closing`` in its first step, so for the whole close ``stats()``
    raises ``BufferClosedError`` while the task is not done yet. A close of a few milliseconds
    (a fast disk) makes this a race lost now and then (the fixed test in
    test_review_close4.py passes most runs); a close that takes longer (its last commit's
    fsync on an SD card, a large queued batch) loses it every time: here the close takes 1 s.
    The demo then dies with a ``BufferClosedError`` traceback instead of
    ``demo_gateway_failed: RuntimeError: injected gateway failure``; the exit is non-zero
    either way, and the broker and database are removed.

    Was PROVEN; fixed: the view ends at a frame the closing buffer refuses, and the demo
    then says why its gateway failed."""
    done = run_python(_DEMO_WITH_GATEWAY_FAILING_INTO_A_SLOW_CLOSE, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert "BufferClosedError" not in out, out[-3000:]
    assert "demo_gateway_failed" in out and "injected gateway failure" in out, out[-3000:]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def small_window_broker(tmp_path: Path, inflight: int) -> MosquittoBroker:
    return broker_configured(
        tmp_path / "small",
        lambda text: text.replace("max_inflight_messages 100", f"max_inflight_messages {inflight}"),
    )


class _Counted:
    """Counts the calls of a link's real ``ids_freed``, by caller (the method itself runs)."""

    def __init__(self, link: MqttLink) -> None:
        self.calls: dict[str, int] = {"sender": 0, "publish": 0}
        self.real = link.ids_freed
        self.link = link

    async def __call__(self, armed: asyncio.Future[None] | None = None) -> None:
        caller = sys._getframe(1).f_code.co_name
        self.calls["publish" if caller == "publish" else "sender"] += 1
        await self.real(armed)


async def test_100k_pubacks_through_the_shared_future_leak_nothing_and_spin_nothing(
    tmp_path: Path,
) -> None:
    """DISMISSED (leak or spin in ``arm_ids_freed``/``ids_freed``). A real Mosquitto with a
    window of 20 (19 packet ids, a reserve of 4); a sender does what the pump does (arm at the
    top of its turn, send up to the quota in one batch, else wait on the armed future) for
    100k events while 6 tasks ``publish()`` in a loop, so those past the reserve of 4 wait in
    publish's while loop (``len(_waiters) >= reserve``, ids free). Measured (one run: traced
    41 KB and 39 futures at 20k, 18 KB and 13 at the end; at most 2 callbacks on the shared
    future; 128k PUBACKs, 6.9k sender waits, 14.5k publish loop turns for 28.5k publishes):

    - memory: tracemalloc's traced size after 100k PUBACKs is within 256 KiB of its size after
      20k, and live Futures/Tasks do not grow (each resolved future is dropped at the next
      arm; a shield's callback on the shared future is removed when its wait is cancelled:
      ``shield``'s ``_outer_done_callback``);
    - callbacks on the shared future never exceed the waiters (8), whatever the number of turns;
    - spin: publish's loop turns are at most one per PUBACK per waiting task (each turn needs a
      new PUBACK to resolve a fresh future), and the sender waits at most once per PUBACK."""
    n_events = 100_000
    broker = small_window_broker(tmp_path, 20)
    acked = 0

    def on_ack(_mid: int) -> None:
        nonlocal acked
        acked += 1

    link = MqttLink(
        MqttSection(host="127.0.0.1", port=broker.port, publish_timeout=10),
        "rf-leak",
        on_ack=on_ack,
    )
    counted = _Counted(link)
    link.ids_freed = counted  # type: ignore[method-assign]
    most_callbacks = 0
    publishes = 0
    done = asyncio.Event()

    async def publisher(n: int) -> None:
        nonlocal publishes
        while not done.is_set():
            assert await link.publish(f"rf/status/{n}", b"s") is None
            publishes += 1

    def futures() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, asyncio.Future))

    pubs: list[asyncio.Task[None]] = []
    try:
        await link.connect()
        quota = link.send_quota
        assert link.free_ids() == 19 and quota == 15
        pubs += [asyncio.create_task(publisher(n)) for n in range(6)]
        tracemalloc.start()
        sent = 0
        mark: tuple[int, int] | None = None
        while sent < n_events:
            armed = link.arm_ids_freed()
            most_callbacks = max(most_callbacks, len(armed._callbacks or ()))
            room = min(quota - (sent - acked), link.free_ids())
            room = min(room, n_events - sent)
            if room <= 0:
                await link.ids_freed(armed)
                continue
            with link.batch():
                for _ in range(room):
                    link.send("rf/events", b"e")
            sent += room
            if mark is None and sent >= 20_000:
                await asyncio.sleep(0.2)
                gc.collect()
                mark = (tracemalloc.get_traced_memory()[0], futures())
        await wait_until(lambda: acked >= n_events, timeout=60)
        done.set()
        await asyncio.gather(*pubs)
        gc.collect()
        end = (tracemalloc.get_traced_memory()[0], futures())
        tracemalloc.stop()
    finally:
        for task in pubs:
            task.cancel()
        await asyncio.gather(*pubs, return_exceptions=True)
        await link.close()
        broker.stop()
    assert mark is not None
    total_pubacks = acked + publishes
    print(
        f"mark={mark} end={end} callbacks<={most_callbacks} calls={counted.calls}"
        f" publishes={publishes} pubacks={total_pubacks}"
    )
    assert end[0] - mark[0] < 256 * 1024
    assert end[1] <= mark[1] + 8
    assert most_callbacks <= 8
    assert counted.calls["sender"] <= total_pubacks
    assert counted.calls["publish"] <= 2 * total_pubacks


async def test_in_a_window_of_one_id_each_freed_id_wakes_the_publishes_and_a_lost_link_ends_them(
    tmp_path: Path,
) -> None:
    """DISMISSED (a waiter left asleep although an id was freed; ``_acked`` on a lost link).
    A broker window of 2 leaves one packet id; the broker's replies come 0.4 s late (a proxy):
    an event holds the id, three ``publish()`` calls (status, checkpoint, answer) wait for it
    in publish's loop. Each PUBACK resolves the one shared future all three hold (replaced only
    once done, so no waiter holds a future that nobody resolves); one wins the id, the others
    arm the next future in the same step as their check. All three are through in about
    4 x 0.4 s, far from ``publish_timeout`` (10 s). Then a publish waiting behind a held id
    ends with LinkError at once when the connection is cut: ``lost`` is one of its two waits,
    and ``_acked`` resolves the future before it returns early on a lost link, so a PUBACK
    parsed after the loss still wakes its waiters, which then see ``lost``."""
    broker = small_window_broker(tmp_path, 2)
    try:
        async with FaultProxy(broker.host, broker.port) as proxy:
            link = MqttLink(
                MqttSection(host="127.0.0.1", port=proxy.port, publish_timeout=10), "rf-one"
            )
            await link.connect()
            try:
                assert link.free_ids() == 1
                proxy.delay_replies(0.4)
                loop = asyncio.get_running_loop()
                began = loop.time()
                link.send("rf/events", b"event")
                waiting = [
                    asyncio.create_task(link.publish(f"rf/status/{n}", b"s")) for n in range(3)
                ]
                await asyncio.sleep(0.2)
                assert not any(t.done() for t in waiting)
                assert link.free_ids() == 0
                async with asyncio.timeout(5):
                    assert await asyncio.gather(*waiting) == [None, None, None]
                took = loop.time() - began
                assert 1.5 <= took < 3.0, took
                link.send("rf/events", b"held")
                blocked = asyncio.create_task(link.publish("rf/status/x", b"s"))
                await asyncio.sleep(0.1)
                cut = loop.time()
                proxy.cut()
                with pytest.raises(LinkError):
                    async with asyncio.timeout(3):
                        await blocked
                assert loop.time() - cut < 1.0
            finally:
                await link.close()
    finally:
        broker.stop()


async def test_central_confirms_and_a_publish_share_a_window_of_one_id_without_timing_out(
    tmp_path: Path,
) -> None:
    """DISMISSED (``CentralLink.send_when_room`` broken by 25d2eee). It calls ``ids_freed()``
    unarmed, but awaits it directly, so ``arm_ids_freed()`` runs in the same step as its
    check: no PUBACK can land in between. Pinned: a broker window of 2 (one id, which is the
    confirm quota too, shared with ``publish``), replies 0.3 s late, six confirms and one
    replay-request publish all waiting at once: each freed id wakes them, one goes, and all
    seven are through in about 7 x 0.3 s, none reaching ``[mqtt] timeout`` (5 s); the
    subscriber gets every confirm."""
    broker = small_window_broker(tmp_path, 2)
    try:
        async with (
            FaultProxy(broker.host, broker.port) as proxy,
            aiomqtt.Client(broker.host, broker.port, identifier="rf-central-sub") as client,
        ):
            await client.subscribe("central/out", qos=1)
            config = write_central_config(
                tmp_path / "central.toml",
                broker=broker,
                dsn="postgresql://review@127.0.0.1/unused",  # the link never opens the database
                instance="rf-central",
                mqtt={"port": proxy.port, "timeout": 5},
            )
            link = CentralLink(load_central_settings(config), lambda _t, _p: None)
            await link.connect()
            try:
                assert link.free_ids() == 1 and link.send_quota == 1
                proxy.delay_replies(0.3)
                loop = asyncio.get_running_loop()
                began = loop.time()
                confirms = [
                    asyncio.create_task(link.send_when_room("central/out", b"confirm %d" % n))
                    for n in range(6)
                ]
                request = asyncio.create_task(link.publish("central/request", b"replay"))
                async with asyncio.timeout(6):
                    await asyncio.gather(*confirms)
                    assert await request is None
                took = loop.time() - began
                assert took < 4.0, took
                got: list[bytes] = []
                async with asyncio.timeout(5):
                    async for message in client.messages:
                        got.append(bytes(message.payload))  # type: ignore[arg-type]
                        if len(got) == 6:
                            break
                assert sorted(got) == sorted(b"confirm %d" % n for n in range(6))
            finally:
                await link.close()
    finally:
        broker.stop()


async def test_a_stalled_full_window_with_the_reserve_taken_does_not_spin_the_pump_or_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DISMISSED (a spin in the real pump or in publish's loop: ids free, the reserve used).
    A broker window of 6 (5 ids: a quota of 3 events, a reserve of 2), the broker's replies
    held 2.5 s by a proxy; 40 events in a real buffer: the pump fills its quota and waits
    (``free <= 0``). Three checkpoints: two take the reserve's ids, the third waits in
    publish's loop. While nothing is acknowledged (1.5 s), ``arm_ids_freed`` (the real one,
    counted) is called by the pump at most at its 1 s net and by the waiting publish at most
    once (each turn needs a new PUBACK to resolve a fresh future), and the process's CPU stays
    idle. Once the replies flow, all 40 events and the checkpoints go through."""
    arms: dict[str, int] = {}
    real_arm = MqttLink.arm_ids_freed

    def counted(self: MqttLink) -> asyncio.Future[None]:
        caller = sys._getframe(1).f_code.co_name
        arms[caller] = arms.get(caller, 0) + 1
        return real_arm(self)

    monkeypatch.setattr(MqttLink, "arm_ids_freed", counted)
    broker = small_window_broker(tmp_path, 6)
    buffer = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**9)
    delivered: set[str] = set()
    try:
        async with FaultProxy(broker.host, broker.port) as proxy:
            mqtt = MqttSection(host=broker.host, port=proxy.port, publish_timeout=5)
            async with running_publisher(
                mqtt,
                buffer,
                TOPICS,
                client_id="gw-rf-stall",
                on_delivered=lambda batch: delivered.update(e.id for e in batch),
                stop_within=15,
            ) as publisher:
                await asyncio.sleep(0.2)
                proxy.delay_replies(2.5)
                for n in range(40):
                    await buffer.append(event("a", n))
                checkpoints = [
                    asyncio.create_task(publisher.publish_checkpoint({"n": n})) for n in range(3)
                ]
                await asyncio.sleep(0.3)
                arms.clear()
                cpu, began = cpu_seconds(), time.monotonic()
                await asyncio.sleep(1.5)
                cpu, stalled = cpu_seconds() - cpu, time.monotonic() - began
                turns = dict(arms)
                link = publisher._link
                assert link is not None
                state = (len(publisher._in_flight), link.free_ids(), len(link._waiters))
                waiting = sum(not c.done() for c in checkpoints)
                proxy.heal()
                async with asyncio.timeout(15):
                    assert all(await asyncio.gather(*checkpoints))
                await wait_until(lambda: len(delivered) == 40, timeout=15)
    finally:
        await buffer.close()
        broker.stop()
    print(f"turns={turns} state={state} waiting={waiting} cpu={cpu:.3f}")
    assert state == (3, 0, 2), "quota full, the reserve taken by two checkpoints"
    assert waiting == 3, "two await their PUBACK, the third an id"
    assert turns.get("_pump", 0) <= 3, turns
    assert turns.get("publish", 0) <= 2, turns
    assert cpu < 0.1 * stalled, f"{cpu:.3f} s CPU in {stalled:.2f} s stalled"


def _demo_in_a_terminal(seconds: float, keys: bytes) -> tuple[int, str, float]:
    """``python -m gateway demo`` on a pty (its keys work there), ``keys`` typed after
    ``seconds``; returns its exit code, what it drew, and how long it took to exit."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the demo, as a technician starts it in a terminal
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "gateway", "demo", "--scanners", "1"])
    out = bytearray()

    def read_for(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # the child closed the pty: it exited
                    return True
                if not chunk:
                    return True
                out.extend(chunk)
        return False

    try:
        read_for(seconds)
        typed = time.monotonic()
        os.write(fd, keys)
        read_for(40)
        _, status = os.waitpid(pid, 0)
        return (
            os.waitstatus_to_exitcode(status),
            out.decode(errors="replace"),
            time.monotonic() - typed,
        )
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


@pytest.mark.slow
def test_the_demo_quit_with_q_in_a_terminal_still_exits_0() -> None:
    """DISMISSED (6d4302d changed the demo's exit on a clean stop). ``_exit_code`` is 1 only
    for a gateway task that ended with an exception; a stop by ``q`` sets the gateway's stop
    event and its run returns None (a stop that overran the demo's 15 s wait cancels it:
    also 0). Run by hand from this worktree: ``edge-gateway demo --duration 8`` exit 0,
    SIGTERM and SIGINT after 6 s exit 0, ``--duration 8 --outage-every 4 --outage-for 6``
    (the broker down at the stop) exit 0; the signals and a duration with outages are pinned
    in test_demo_signals.py and test_demo.py. Pinned here: ``q`` typed on a terminal."""
    code, drawn, took = _demo_in_a_terminal(9.0, b"q")
    assert code == 0, drawn[-2000:]
    assert "Traceback" not in drawn and "demo_gateway_failed" not in drawn
    assert "ledger:" in drawn and took < 30
