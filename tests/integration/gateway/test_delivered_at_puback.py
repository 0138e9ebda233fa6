"""``delivered`` feedback is told when the PUBACK arrives, not once the buffer recorded it.

``delivered`` means the broker acknowledged the event (docs/contract.md); the sent mark that
follows only decides whether a restart publishes the event again. Waiting for that commit put
one or two more fsyncs (behind whatever the SQLite thread was committing) into every good-read
at ``delivered`` (issue 16: p50 5.3-5.5 -> 2.5-3.0 ms in ``bench.latency``). A real Mosquitto
behind the fault proxy (PUBACKs late, so the events are surely in flight first), a real buffer
file, and a second SQLite connection holding the write lock so the sent mark cannot commit.
"""

from __future__ import annotations

import asyncio
import sqlite3

from buffer.schema import STATE_IN_FLIGHT
from buffer.store import Buffer
from simulators.broker import MosquittoBroker
from tests.integration.gateway import test_publisher_stop
from tests.integration.gateway.test_publisher import event
from tests.integration.gateway.test_publisher_stop import behind_proxy, until_in_flight

buffer = test_publisher_stop.buffer  # the same fixture: a new buffer file per test


async def test_delivered_is_told_at_the_puback_while_the_sent_mark_waits(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """Three events in flight, their PUBACKs 1 s late; the buffer's write lock is taken by
    another connection before they come. All three are told delivered, once each, while their
    rows are still in flight in the file; once the lock goes, they are recorded sent."""
    async with behind_proxy(buffer, broker, "gw-delivered-at-puback", 15.0) as (
        pub,
        proxy,
        delivered,
    ):
        proxy.delay_replies(1.0)
        for n in range(3):
            await buffer.append(event("dock-1", n))
        await until_in_flight(buffer, 3)
        assert delivered == [], "published is not delivered: the PUBACKs are 1 s away"
        holder = sqlite3.connect(buffer.path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # the sent mark now waits for us
            async with asyncio.timeout(3):  # well inside the buffer's 5 s busy timeout
                while len(delivered) < 3:
                    await asyncio.sleep(0.01)
            (in_flight,) = holder.execute(
                "SELECT count(*) FROM events WHERE state = ?", (STATE_IN_FLIGHT,)
            ).fetchone()
            assert in_flight == 3, "told delivered before the sent mark committed"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        async with asyncio.timeout(10):
            while (await buffer.stats()).devices["dock-1"].last_sent_seq < 3:
                await asyncio.sleep(0.02)
    assert sorted(delivered) == [f"dock-1-{n:06d}" for n in range(3)], "each told once"
    assert (await buffer.stats()).unsent == 0
    assert pub.store_errors == 0
