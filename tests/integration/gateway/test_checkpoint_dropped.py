"""The checkpoint and a replay tell deliberate holes from losses (issue 18, finding 7).

Telemetry dropped at the size cap leaves holes in its device's seqs. Before, the checkpoint
said ``last_seq=12, last_sent_seq=12, pending=0`` while only seqs 5-12 existed, and a replay of
1..12 was refused as if events had been lost: central's parity could never close.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt

from buffer.store import Buffer, NewEvent
from simulators.broker import MosquittoBroker
from tests.support import running_gateway, wait_until, write_config

ROOT = "edge/site-test/gw-test"


def reading(n: int) -> NewEvent:
    def render(seq: int) -> bytes:
        body = {
            "id": f"belt-{n}",
            "seq": seq,
            "source": "/site-test/gw-test/belt",
            "pad": "x" * 300,
        }
        return json.dumps(body).encode()

    return NewEvent(f"belt-{n}", "belt", "t", "warehouse.conveyor.reading.v1", True, render)


async def test_dropped_telemetry_is_in_the_checkpoint_and_a_replay_over_it_is_complete(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    state = tmp_path / "state"
    buf = await Buffer.open(state / "buffer.db", max_bytes=4_000)  # a cap that drops readings
    for n in range(30):
        await buf.append(reading(n))
    dropped = buf.transitions["dropped"]
    await buf.close()
    assert dropped > 0
    cfg = write_config(
        tmp_path / "gateway.toml", mqtt_port=broker.port, state_dir=state, devices=[]
    )
    async with aiomqtt.Client(broker.host, broker.port, identifier="central-test") as central:
        await central.subscribe(f"{ROOT}/checkpoint", qos=1)
        await central.subscribe(f"{ROOT}/cmd/result", qos=1)
        async with running_gateway(cfg) as gw:
            async with asyncio.timeout(10):
                await gw.publisher.connected.wait()
            await wait_until(lambda: gw.buffer.transitions["sent"] >= 30 - dropped, timeout=10)
            assert await gw.publish_checkpoint()
            body: dict[str, Any] = {}
            async with asyncio.timeout(10):
                async for message in central.messages:
                    assert isinstance(message.payload, bytes)
                    body = json.loads(message.payload)
                    if (
                        str(message.topic).endswith("/checkpoint")
                        and body["devices"]["belt"]["last_sent_seq"] == 30
                    ):
                        break
            belt = body["devices"]["belt"]
            assert belt["dropped_events"] == dropped
            holes = sum(last - first + 1 for first, last in belt["dropped_ranges"])
            assert holes == dropped and belt["dropped_ranges"][0][0] == 1
            await central.publish(
                f"{ROOT}/cmd/replay",
                json.dumps({"request_id": "r1", "device": "belt", "from_seq": 1, "to_seq": 30}),
                qos=1,
            )
            async with asyncio.timeout(10):
                async for message in central.messages:
                    if str(message.topic).endswith("/cmd/result"):
                        assert isinstance(message.payload, bytes)
                        result = json.loads(message.payload)
                        break
    assert result["ok"] is True, result
    assert result["count"] == 30 - dropped
    assert result["dropped"] == belt["dropped_ranges"]
