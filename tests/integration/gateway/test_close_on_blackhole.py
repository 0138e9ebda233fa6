"""Found by the third review of issue 13 (fixed; the text says what went wrong before): the PUBACK watcher fires on a blackholed link, but the session's end awaits
``link.close()`` (gmqtt: transport.close() then ``await protocol.closed``) before anything else.
With more bytes written than the dead peer's socket buffers hold (a window of large events),
the transport never finishes flushing, ``closed`` never resolves, and the publisher never
settles the session nor connects again: no new connection attempt is made at all."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from buffer.store import Buffer, NewEvent
from gateway.events import render_event
from gateway.publisher import Publisher
from gateway.settings import MqttSection
from tests.chaos.faultproxy import FaultProxy
from tests.integration.gateway.test_publisher import TOPICS
from tests.integration.gateway.test_small_broker_window import small_window_broker

PUBLISH_TIMEOUT = 2.0
N = 1500
BIG = "x" * 50_000


def big_event(n: int) -> NewEvent:
    event_id = f"big-{n:06d}"

    def render(seq: int) -> bytes:
        return render_event(
            event_id=event_id,
            source="/site-test/gw-test/big",
            type_="warehouse.barcode.scanned.v1",
            time_="2026-11-24T00:00:00.000000Z",
            seq=seq,
            data={"code": BIG},
        )

    return NewEvent(event_id, "big", "t", "warehouse.barcode.scanned.v1", False, render)


async def test_session_ends_and_reconnect_is_tried_after_puback_timeout(tmp_path: Path) -> None:
    broker = small_window_broker(tmp_path, 2000)
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**10)
    try:
        async with FaultProxy(broker.host, broker.port) as proxy:
            mqtt = MqttSection(
                host=proxy.host,
                port=proxy.port,
                keepalive=60,
                max_inflight=2000,
                publish_timeout=PUBLISH_TIMEOUT,
                reconnect_min=0.05,
                reconnect_max=0.3,
            )
            pub = Publisher(mqtt, buf, TOPICS, client_id="gw-r3-big", on_delivered=lambda b: None)
            task = asyncio.create_task(pub.run())
            try:
                async with asyncio.timeout(10):
                    await pub.connected.wait()
                proxy.blackhole()  # the broker hangs: TCP stays up, nothing is read
                await asyncio.gather(*(buf.append(big_event(i)) for i in range(N)))
                start = time.monotonic()
                deadline = start + 6 * PUBLISH_TIMEOUT
                while proxy.accepted < 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                chain, coro = [], task.get_coro()
                while coro is not None and hasattr(coro, "cr_code"):
                    chain.append(coro.cr_code.co_qualname)
                    coro = coro.cr_await
                assert proxy.accepted >= 2, (
                    f"no reconnect attempt {time.monotonic() - start:.1f} s after the blackhole"
                    f" (publish_timeout {PUBLISH_TIMEOUT} s): reconnects={pub.reconnects},"
                    f" connected={pub.connected.is_set()}, in_flight={len(pub._in_flight)},"
                    f" publisher awaiting {' -> '.join(chain)}"
                )
            finally:
                proxy.heal()
                pub.stop()
                async with asyncio.timeout(60):
                    await task
    finally:
        await buf.close()
        broker.stop()
