"""The reference central (simulators/central.py) confirms every event it receives.

The chaos and confirmation tests wait for every event to end ``confirmed``: a confirm the
reference central forgets looks exactly like one the gateway lost. Found in the confirm-stop
chaos test: verdicts queued while a confirm's PUBACK was awaited stayed in the outbox until the
next event arrived, and the stream's last events were never confirmed.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import aiomqtt

from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from tests.chaos.faultproxy import FaultProxy

ROOT = "edge/site-x/gw-x"


def event(seq: int, event_id: str) -> bytes:
    """A valid CloudEvent of a type with no schema of its own (only the envelope is checked)."""
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": "/site-x/gw-x/dock",
            "type": "test.event.v1",
            "time": "2026-11-30T10:00:00Z",
            "seq": seq,
            "data": {},
        }
    ).encode()


async def test_events_arriving_while_a_confirm_is_in_flight_are_confirmed_too(
    broker: MosquittoBroker,
) -> None:
    """Central's replies reach it 0.5 s late, so its first confirm's PUBACK is awaited while the
    second event arrives; nothing arrives after that. Both must be confirmed."""
    async with FaultProxy(broker.host, broker.port, delay=0.5) as proxy:
        central = CentralCollector(proxy.host, proxy.port, client_id="central-ref", confirm=True)
        task = asyncio.create_task(central.run())
        try:
            async with asyncio.timeout(10):
                await central.connected.wait()
            proxy.delay_replies()
            async with aiomqtt.Client(broker.host, broker.port, identifier="gw-x") as gateway:
                await gateway.subscribe(f"{ROOT}/confirm", qos=1)
                ids = [str(uuid.uuid4()), str(uuid.uuid4())]
                await gateway.publish(f"{ROOT}/events/dock", event(1, ids[0]), qos=1)
                await asyncio.sleep(0.2)  # central's first confirm now awaits its PUBACK
                await gateway.publish(f"{ROOT}/events/dock", event(2, ids[1]), qos=1)
                confirmed: list[dict[str, str]] = []
                async with asyncio.timeout(5):
                    async for message in gateway.messages:
                        body = json.loads(message.payload)  # type: ignore[arg-type]
                        confirmed.extend(body if isinstance(body, list) else [body])
                        if len(confirmed) == 2:
                            break
            assert [c["id"] for c in confirmed] == ids
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
