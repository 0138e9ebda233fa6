"""Durable end-to-end events/s against the floor of the same MQTT client with no buffer.

emit -> group commit (synchronous=FULL) -> QoS 1 publish -> PUBACK -> marked sent, into a private
Mosquitto; then, in the same run, the same number of messages published at QoS 1 by the same
client (gmqtt through gateway/mqtt_link.py, same window) with no buffer. Prints one JSON object with
``ratio_to_floor`` as context (issue 16 retired issue 8's ratio target: the floor is above what a
durable pipeline reaches on two cores) and issue 16's targets: >= 25,000 events/s end to end at
<= 30 µs of gateway CPU per event (``cpu_s_per_1k_events`` <= 0.030, all threads).

    .venv/bin/python -m bench.throughput [--events 50000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time

from bench import BARE_PAYLOAD, BARE_TOPIC, BARE_WINDOW, logs_to_stderr, private_broker
from bench.durable_floor import durable_floor
from bench.quick import PRODUCERS, throughput
from gateway.mqtt_link import MqttLink
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker


async def floor(broker: MosquittoBroker, events: int) -> float:
    """Messages/s of the bare client: QoS 1, ``BARE_WINDOW`` awaiting PUBACK, nothing else.

    The same client and the same calls as the publisher's hot path (``MqttLink.send`` and the
    per-message PUBACK callback), with no buffer behind it.
    """
    mqtt = MqttSection(host=broker.host, port=broker.port, max_inflight=BARE_WINDOW)
    done = asyncio.Event()
    sent = acked = 0

    def top_up() -> None:
        nonlocal sent
        # Within the broker's window too, as the publisher's pump: Mosquitto's Receive Maximum
        # (max_inflight_messages) is below BARE_WINDOW, and gmqtt has no packet id beyond it.
        while sent - acked < window and sent < events:
            link.send(BARE_TOPIC, BARE_PAYLOAD)
            sent += 1

    def on_ack(_mid: int) -> None:
        nonlocal acked
        acked += 1
        if acked == events:
            done.set()
        else:
            top_up()

    link = MqttLink(mqtt, "bench-floor", on_ack=on_ack)
    await link.connect()
    window = min(BARE_WINDOW, link.send_quota)
    try:
        started = time.perf_counter()
        top_up()
        await asyncio.wait_for(done.wait(), 300)
        return events / (time.perf_counter() - started)
    finally:
        await link.close()


async def main(events: int, producers: int) -> None:
    """Pipeline first, then the floor, against one private broker."""
    with private_broker() as (root, broker):
        pipeline = await throughput(root, broker, events, producers)
        bare = await floor(broker, events)
        lean = await durable_floor(root, broker, events, producers)
    rate = pipeline["end_to_end_per_s"]
    print(
        json.dumps(
            {
                "benchmark": "throughput",
                "producers": producers,
                **pipeline,
                "floor_per_s": round(bare),
                "ratio_to_floor": round(rate / bare, 3),
                "durable_floor": {
                    "end_to_end_per_s": lean["end_to_end_per_s"],
                    "cpu_s_per_1k_events": lean["cpu_s_per_1k_events"],
                },
                "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "targets": {"end_to_end_per_s": 25000, "cpu_s_per_1k_events": 0.030},
            }
        )
    )


if __name__ == "__main__":
    logs_to_stderr()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50000)
    parser.add_argument(
        "--producers", type=int, default=PRODUCERS, help="concurrent emitters (devices)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.events, args.producers))
