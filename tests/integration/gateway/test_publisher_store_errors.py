"""The publisher counts every store error that ends (or keeps from starting) a session, one by
one, on a real buffer file locked by another process (issue 19, mutation run of
gateway/publisher.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from buffer import schema
from buffer.store import Buffer
from gateway.publisher import Publisher
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker
from tests.chaos.faultproxy import FaultProxy
from tests.integration.gateway.test_publisher import TOPICS, event
from tests.integration.gateway.test_publisher_stop import until_in_flight
from tests.integration.gateway.test_store_faults import exclusive_lock
from tests.support import running_publisher, wait_until


async def test_each_store_error_is_counted_once(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the buffer EXCLUSIVE for 3 s (busy timeout 0.5 s here): the
    session start and the releases after it fail several times; ``store_errors`` and the
    logged running count go up by one per failure, and the events are delivered after."""
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_MS", 500)
    db = tmp_path / "buffer.db"
    buf = await Buffer.open(db, max_bytes=10**8)
    delivered: list[str] = []
    try:
        for n in range(3):
            await buf.append(event("dock-1", n))
        mqtt = MqttSection(
            host=broker.host, port=broker.port, reconnect_min=0.05, reconnect_max=0.2
        )
        pub = Publisher(
            mqtt,
            buf,
            TOPICS,
            client_id="gw-store-errors",
            on_delivered=lambda b: delivered.extend(e.id for e in b),
        )
        with capture_logs() as logs:
            async with exclusive_lock(db, 3.0):
                task = asyncio.create_task(pub.run())
                async with asyncio.timeout(10):
                    while pub.store_errors < 2:
                        await asyncio.sleep(0.02)
            try:
                async with asyncio.timeout(20):
                    while len(delivered) < 3:
                        await asyncio.sleep(0.02)
            finally:
                pub.stop()
                async with asyncio.timeout(30):
                    await task
        counts = [e["count"] for e in logs if e["event"] == "publisher_store_error"]
        assert len(counts) >= 2
        assert counts == list(range(1, len(counts) + 1))
        assert pub.store_errors == len(counts)
        assert sorted(delivered) == [f"dock-1-{n:06d}" for n in range(3)]
    finally:
        await buf.close()


async def test_a_release_that_failed_is_done_before_the_next_session(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events in flight when a session ends go back to pending before a later session claims
    them: the session ends (no PUBACK within publish_timeout) while another process holds the
    buffer EXCLUSIVE, so that release fails; once the lock is gone they are released, sent
    again and delivered, with no restart."""
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_MS", 300)
    db = tmp_path / "buffer.db"
    buf = await Buffer.open(db, max_bytes=10**8)
    delivered: list[str] = []
    try:
        async with FaultProxy(broker.host, broker.port) as proxy:
            mqtt = MqttSection(
                host=proxy.host,
                port=proxy.port,
                reconnect_min=0.05,
                reconnect_max=0.2,
                publish_timeout=2.0,
            )
            async with running_publisher(
                mqtt,
                buf,
                TOPICS,
                client_id="gw-release-owed",
                on_delivered=lambda b: delivered.extend(e.id for e in b),
                stop_within=30,
            ) as pub:
                proxy.blackhole()  # the PUBACKs of what comes now never arrive
                for n in range(3):
                    await buf.append(event("dock-1", n))
                await until_in_flight(buf, 3)
                errors = pub.store_errors
                async with exclusive_lock(db, 4.0):
                    # publish_timeout ends the session; its release meets the lock.
                    await wait_until(lambda: pub.store_errors > errors, timeout=10)
                    proxy.heal()
                await wait_until(lambda: len(delivered) == 3, timeout=20)
        assert sorted(delivered) == [f"dock-1-{n:06d}" for n in range(3)]
    finally:
        await buf.close()


LOCK_ON_CUE = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    print("ready", flush=True)
    sys.stdin.readline()
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("ROLLBACK")
    conn.close()
    """
)


async def test_a_sent_mark_failing_after_the_session_ended_leaves_the_publisher_running(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PUBACKs arrive (0.8 s late) while another process holds the buffer EXCLUSIVE (3 s), and
    the connection is reset while their sent mark waits for the lock: the session's end waits
    for that mark, which fails (busy timeout 0.8 s, 1.2 s before the lock goes). The failure is
    not let out of the publisher: it carries on, and the events, still in flight, are
    released, sent again and delivered once the lock is gone."""
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_MS", 800)
    db = tmp_path / "buffer.db"
    buf = await Buffer.open(db, max_bytes=10**8)
    delivered: list[str] = []
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_ON_CUE, str(db), "3.0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert (await asyncio.to_thread(holder.stdout.readline)).strip() == "ready"
        async with FaultProxy(broker.host, broker.port) as proxy:
            mqtt = MqttSection(
                host=proxy.host, port=proxy.port, reconnect_min=0.05, reconnect_max=0.2
            )
            pub = Publisher(
                mqtt,
                buf,
                TOPICS,
                client_id="gw-mark-late",
                on_delivered=lambda b: delivered.extend(e.id for e in b),
            )
            task = asyncio.create_task(pub.run())
            try:
                await wait_until(pub.connected.is_set, timeout=10)
                proxy.delay_replies(0.8)  # the PUBACKs of what comes now arrive 0.8 s late
                for n in range(3):
                    await buf.append(event("dock-1", n))
                await wait_until(lambda: len(pub._in_flight) == 3, timeout=10)
                holder.stdin.write("go\n")
                holder.stdin.flush()
                assert (await asyncio.to_thread(holder.stdout.readline)).strip() == "locked"
                assert len(pub._in_flight) == 3, "the PUBACKs came before the lock"
                await wait_until(lambda: bool(pub._marking), timeout=10)  # the mark waits
                proxy.cut()
                proxy.heal()
                await wait_until(lambda: len(delivered) == 3 or task.done(), timeout=20)
                assert not task.done(), "the publisher ended"
            finally:
                pub.stop()
                async with asyncio.timeout(30):
                    await task
        assert sorted(delivered) == [f"dock-1-{n:06d}" for n in range(3)]
    finally:
        holder.stdin.close()
        await asyncio.to_thread(holder.wait, 15)
        await buf.close()


LOCK_BETWEEN_CUES = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    print("ready", flush=True)
    sys.stdin.readline()
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.readline()
    conn.execute("ROLLBACK")
    conn.close()
    """
)


async def test_no_session_starts_while_the_release_of_the_last_one_keeps_failing(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events in flight when the connection is reset, the buffer held EXCLUSIVE by another
    process: the release at the session's end fails, and while it keeps failing no new session
    starts (no connection reaches the broker for 1 s of retries): one would not claim the rows
    left in flight. Once the lock goes, they are released, sent again and delivered."""
    monkeypatch.setattr(schema, "BUSY_TIMEOUT_MS", 300)
    db = tmp_path / "buffer.db"
    buf = await Buffer.open(db, max_bytes=10**8)
    delivered: list[str] = []
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_BETWEEN_CUES, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None

    def cue() -> None:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()

    try:
        assert (await asyncio.to_thread(holder.stdout.readline)).strip() == "ready"
        async with FaultProxy(broker.host, broker.port) as proxy:
            mqtt = MqttSection(
                host=proxy.host, port=proxy.port, reconnect_min=0.05, reconnect_max=0.2
            )
            with capture_logs() as logs:
                async with running_publisher(
                    mqtt,
                    buf,
                    TOPICS,
                    client_id="gw-release-first",
                    on_delivered=lambda b: delivered.extend(e.id for e in b),
                    stop_within=30,
                ):
                    proxy.blackhole()  # their PUBACKs never come
                    for n in range(3):
                        await buf.append(event("dock-1", n))
                    await until_in_flight(buf, 3)
                    cue()
                    assert (await asyncio.to_thread(holder.stdout.readline)).strip() == "locked"
                    proxy.cut()
                    proxy.heal()

                    def release_failed() -> bool:
                        return any(
                            e["event"] == "publisher_store_error" and e["during"] == "release"
                            for e in logs
                        )

                    await wait_until(release_failed, timeout=10)
                    accepted = proxy.accepted
                    await asyncio.sleep(1.0)
                    assert proxy.accepted == accepted, "a session started with rows in flight"
                    cue()
                    await wait_until(lambda: len(delivered) == 3, timeout=20)
        assert sorted(delivered) == [f"dock-1-{n:06d}" for n in range(3)]
    finally:
        holder.stdin.close()
        await asyncio.to_thread(holder.wait, 15)
        await buf.close()
