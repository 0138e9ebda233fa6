"""A simulated central system: subscribes to gateway events and checks them as a consumer would.

It keeps a persistent MQTT session (clean_session off, fixed client id), so events published
while it is reconnecting wait for it at the broker; it deduplicates on (source, id) and tracks
per-source ``seq`` so a test, or the demo's live view, can tell whether it is in parity.

Run alone: ``python -m simulators.central --port 1883``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

EVENTS_TOPIC = "edge/+/+/events/#"


@dataclass
class SourceTrack:
    """What central knows about one device (one CloudEvents source)."""

    seqs: set[int] = field(default_factory=set)
    ids: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    conflicting: int = 0  # same seq under another id: a real bug, never expected

    @property
    def highest(self) -> int:
        """The highest seq seen."""
        return max(self.seqs, default=0)

    def missing(self) -> list[int]:
        """Every seq from 1 to the highest not yet seen."""
        return [s for s in range(1, self.highest + 1) if s not in self.seqs]


class CentralCollector:
    """Receives every event, in a persistent session that survives broker restarts."""

    def __init__(
        self, host: str, port: int, *, topic: str = EVENTS_TOPIC, client_id: str = "central-sim"
    ) -> None:
        self.host, self.port, self.topic, self.client_id = host, port, topic, client_id
        self.messages: list[dict[str, Any]] = []
        self.invalid: list[bytes] = []
        self.sources: dict[str, SourceTrack] = defaultdict(SourceTrack)
        self.connected = asyncio.Event()
        self._arrived = asyncio.Event()

    async def run(self) -> None:
        """Receive until cancelled, reconnecting quickly whenever the broker goes away."""
        while True:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, identifier=self.client_id, clean_session=False
                ) as client:
                    await client.subscribe(self.topic, qos=1)
                    self.connected.set()
                    async for message in client.messages:
                        self._receive(bytes(message.payload))
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.2)

    def _receive(self, payload: bytes) -> None:
        try:
            event = json.loads(payload)
            source, event_id, seq = event["source"], event["id"], int(event["seq"])
        except (ValueError, KeyError, TypeError):
            self.invalid.append(payload)
            return
        self.messages.append(event)
        track = self.sources[source]
        if event_id in track.ids:
            track.duplicates += 1
        elif seq in track.seqs:
            track.conflicting += 1
        track.ids[event_id] = seq
        track.seqs.add(seq)
        self._arrived.set()

    def unique_count(self) -> int:
        """Distinct events received, over all sources."""
        return sum(len(t.ids) for t in self.sources.values())

    async def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` distinct events arrived; False on timeout."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.unique_count() < count:
                    self._arrived.clear()
                    await self._arrived.wait()
        return self.unique_count() >= count


async def _main(host: str, port: int) -> None:
    central = CentralCollector(host, port, client_id="central-cli")
    task = asyncio.create_task(central.run())
    seen = 0
    try:
        while True:
            await asyncio.sleep(1.0)
            for event in central.messages[seen:]:
                print(event["source"], event["seq"], json.dumps(event["data"]))
            seen = len(central.messages)
    finally:
        task.cancel()


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.host, args.port))


if __name__ == "__main__":
    main()
