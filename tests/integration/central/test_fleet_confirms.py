"""Confirms for a fleet: one batch with verdicts for more gateways than the broker's window.

They go out without waiting for each PUBACK, within the window (Mosquitto's
``max_inflight_messages``, 100 for the private broker: 95 ids after the reserve), waiting for
packet ids when it is full. Every verdict must arrive, on its own gateway's topic.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import aiomqtt

from central.service import Central
from tests.support import wait_until

from .conftest import running_central
from .helpers import raw, scan_event, topic_of

GATEWAYS = 150


async def test_a_batch_for_150_gateways_confirms_every_event_on_its_own_topic(
    broker, central_settings
):
    settings = central_settings(replay={"enabled": False})
    bodies = [scan_event(seq, gateway=f"gw{g}") for g in range(GATEWAYS) for seq in (1, 2)]
    async with running_central(settings):
        pass  # the session exists: what comes now waits in it, and arrives in a few batches
    confirms: dict[str, set[str]] = defaultdict(set)
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe("edge/s1/+/confirm", qos=1)

        async def listen() -> None:
            async for message in client.messages:
                gateway = str(message.topic).split("/")[2]
                confirms[gateway].update(v["id"] for v in json.loads(message.payload))

        listener = asyncio.create_task(listen())
        for body in bodies:
            await client.publish(topic_of(body), raw(body), qos=1)
        async with running_central(settings) as central:
            await wait_until(lambda: central.totals["stored"] == len(bodies), timeout=20)
            await wait_until(lambda: sum(map(len, confirms.values())) == len(bodies), timeout=20)
            assert central.totals["batches"] < len(bodies) / 10  # they came in big batches
            assert isinstance(central, Central)
        listener.cancel()
    for g in range(GATEWAYS):
        assert confirms[f"gw{g}"] == {
            b["id"] for b in bodies if b["source"].endswith(f"/gw{g}/dock")
        }
