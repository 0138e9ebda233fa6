"""Found by the third review of issue 13 (fixed; the text says what went wrong before): with a broker window of 2 (one packet id) a status publish that gets no PUBACK
holds the only id; the pump then never sends, nothing is in ``_in_flight`` and the PUBACK
watcher (_watch_link) never fires. The status publish's own timeout is swallowed by
``_publish_quietly``. A blackholed link is then noticed only by gmqtt's keepalive (2 x keepalive),
not by ``publish_timeout``: events pending meanwhile wait that long."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from buffer.store import Buffer
from gateway.settings import MqttSection
from tests.chaos.faultproxy import FaultProxy
from tests.integration.gateway.test_publisher import TOPICS, event
from tests.integration.gateway.test_small_broker_window import small_window_broker
from tests.support import running_publisher

PUBLISH_TIMEOUT = 2.0


@pytest.mark.parametrize("holder", ["device_status", "checkpoint"])
async def test_blackholed_link_with_status_holding_the_only_id_times_out(
    tmp_path: Path, holder: str
) -> None:
    broker = small_window_broker(tmp_path, 2)
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**9)
    try:
        async with FaultProxy(broker.host, broker.port) as proxy:
            mqtt = MqttSection(
                host=proxy.host,
                port=proxy.port,
                keepalive=60,
                publish_timeout=PUBLISH_TIMEOUT,
                reconnect_min=0.05,
                reconnect_max=0.3,
            )
            ck: asyncio.Task[bool] | None = None
            try:
                async with running_publisher(
                    mqtt, buf, TOPICS, client_id="gw-r3", stop_within=30
                ) as pub:
                    try:
                        proxy.blackhole()
                        if holder == "device_status":
                            pub.device_status("dev0", {"state": "up", "since": "x", "detail": ""})
                        else:  # what gateway/housekeeping.py does every checkpoint_interval
                            ck = asyncio.create_task(pub.publish_checkpoint({"devices": {}}))
                        await asyncio.sleep(0.1)  # the status holds the one packet id
                        await buf.append(event("a", 0))
                        start = time.monotonic()
                        # The link is dead: publish_timeout (plus slack) must end the session.
                        deadline = start + 4 * PUBLISH_TIMEOUT
                        while pub.reconnects == 0 and time.monotonic() < deadline:
                            await asyncio.sleep(0.05)
                        waited = time.monotonic() - start
                        assert pub.reconnects >= 1, (
                            f"blackholed link not noticed in {waited:.1f} s (publish_timeout"
                            f" {PUBLISH_TIMEOUT} s); link still"
                            f" 'connected'={pub.connected.is_set()},"
                            f" in_flight={len(pub._in_flight)} unsent={len(pub._unsent)}"
                        )
                    finally:
                        proxy.heal()
            finally:
                if ck is not None:
                    await asyncio.gather(ck, return_exceptions=True)
    finally:
        await buf.close()
        broker.stop()
