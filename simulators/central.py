"""The reference central consumer: what a central team copies to start (contract sections 4-7).

- Receives ``edge/+/+/events/#``, with an MQTT 5 shared subscription (``$share/<group>/...``)
  when ``share_group`` is set, so several instances split the stream.
- Validates each event with the CloudEvents SDK and the repo's JSON Schemas (gateway/schemas).
- Deduplicates on (``source``, ``id``) and tracks per-source ``seq``.
- Confirms or rejects each event on ``{root}/confirm`` by a rule (default: accept; with a SKU
  list, reject barcodes not in it), batched: everything received in one loop turn goes out as
  one JSON list.
- Compares with each gateway's retained ``checkpoint``: :meth:`parity` says, per device, whether
  central holds every seq the gateway stored, which ranges are missing, and how many duplicates
  it saw. A gap that does not fill within ``replay_after`` seconds (and no drain under way) is
  asked for again on ``{root}/cmd/replay``; answers arrive on ``{root}/cmd/result``.

Its session is persistent (MQTT 5 clean start off, one-hour session expiry, fixed client id),
so events published while it reconnects wait for it at the broker. In a shared group each
instance tracks only its own share: gap detection and parity need one ledger for the group (a
database in real life; pass the same :class:`Ledger` to instances of one process here).

Run alone: ``python -m simulators.central --port 1883 [--group central] [--skus FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

EVENTS_TOPIC = "edge/+/+/events/#"
CHECKPOINT_TOPIC = "edge/+/+/checkpoint"
RESULT_TOPIC = "edge/+/+/cmd/result"

Rule = Callable[[dict[str, Any]], str | None]
"""Returns why an event is rejected, or None to accept it."""


def accept_all(_event: dict[str, Any]) -> str | None:
    """The default rule: every valid event is accepted."""
    return None


def sku_rule(skus: Iterable[str]) -> Rule:
    """Reject barcode scans whose code is not a known SKU (exercises bad-read feedback)."""
    known = frozenset(skus)

    def rule(event: dict[str, Any]) -> str | None:
        if event.get("type") != "warehouse.barcode.scanned.v1":
            return None
        code = event.get("data", {}).get("code")
        return None if code in known else f"unknown SKU {code!r}"

    return rule


class Validator:
    """CloudEvents SDK + JSON Schema per type; degrades to a JSON check without them."""

    def __init__(self) -> None:
        self._validators: dict[str, Any] = {}
        try:
            import jsonschema  # noqa: PLC0415 - optional at runtime
            from cloudevents.core.formats.json import JSONFormat  # noqa: PLC0415
        except ImportError:  # pragma: no cover - installed with the dev extra
            self._format: Any = None
            return
        self._format = JSONFormat()
        checker = jsonschema.FormatChecker()
        for item in resources.files("gateway").joinpath("schemas").iterdir():
            if item.name.endswith(".json"):
                schema = json.loads(item.read_text())
                cls = jsonschema.validators.validator_for(schema)
                self._validators[item.name[:-5]] = cls(schema, format_checker=checker)

    def check(self, payload: bytes) -> dict[str, Any]:
        """The event as a dict; raises ValueError when it is not a valid event."""
        event = json.loads(payload)
        if not isinstance(event, dict):
            raise TypeError("not a JSON object")
        if self._format is not None:
            try:
                self._format.read(None, payload)
            except Exception as exc:
                raise ValueError(f"not a CloudEvent: {exc}") from exc
            validator = self._validators.get(str(event.get("type")))
            if validator is not None:
                error = next(iter(validator.iter_errors(event)), None)
                if error is not None:
                    raise ValueError(f"schema: {error.message}")
        if not isinstance(event.get("seq"), int) or not isinstance(event.get("source"), str):
            raise TypeError("seq or source missing")
        return event


@dataclass
class SourceTrack:
    """What central knows about one device (one CloudEvents source)."""

    seqs: set[int] = field(default_factory=set)
    ids: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    replayed: int = 0  # redeliveries we asked for: not counted as duplicates
    conflicting: int = 0  # same seq under another id: a real bug, never expected
    root: str | None = None
    device: str | None = None
    next_replay_at: float = 0.0

    @property
    def highest(self) -> int:
        """The highest seq seen."""
        return max(self.seqs, default=0)

    def missing(self, upto: int | None = None) -> list[int]:
        """Every seq from 1 to ``upto`` (default the highest seen) not yet seen."""
        end = self.highest if upto is None else max(upto, self.highest)
        return [s for s in range(1, end + 1) if s not in self.seqs]


def ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted seqs as contiguous (first, last) ranges."""
    out: list[tuple[int, int]] = []
    for _key, group in itertools.groupby(enumerate(seqs), lambda p: p[1] - p[0]):
        items = [s for _i, s in group]
        out.append((items[0], items[-1]))
    return out


class Ledger(dict[str, SourceTrack]):
    """Per-source tracks; share one between instances of a group to see the whole stream."""

    def __missing__(self, key: str) -> SourceTrack:
        track = self[key] = SourceTrack()
        return track


class CentralCollector:
    """Receives, validates, deduplicates, confirms, and checks parity; reconnects forever."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        topic: str = EVENTS_TOPIC,
        client_id: str = "central-sim",
        share_group: str | None = None,
        confirm: bool = False,
        rule: Rule = accept_all,
        replay_after: float | None = None,
        ledger: Ledger | None = None,
        clean: bool = False,
    ) -> None:
        self.host, self.port, self.topic, self.client_id = host, port, topic, client_id
        self.share_group, self.confirm, self.rule = share_group, confirm, rule
        self.replay_after, self.clean = replay_after, clean
        self.messages: list[dict[str, Any]] = []
        self.invalid: list[bytes] = []
        self.sources: Ledger = ledger if ledger is not None else Ledger()
        self.checkpoints: dict[str, dict[str, Any]] = {}
        self.results: list[dict[str, Any]] = []
        self.confirms_sent: dict[str, int] = defaultdict(int)
        self.connected = asyncio.Event()
        self._arrived = asyncio.Event()
        self._validator = Validator()
        self._outbox: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._client: aiomqtt.Client | None = None
        self.left_over = 0
        """Messages taken from a dropped connection's queue (see ``_receive_left_over``)."""
        self._flush: asyncio.Task[None] | None = None
        self._requests = itertools.count(1)

    @property
    def subscription(self) -> str:
        """The events filter as subscribed: shared when a group is set."""
        return f"$share/{self.share_group}/{self.topic}" if self.share_group else self.topic

    async def run(self) -> None:
        """Receive until cancelled, reconnecting quickly whenever the broker goes away."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0 if self.clean else 3600
        while True:
            client: aiomqtt.Client | None = None
            try:
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=self.client_id,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=self.clean,
                    properties=props,
                    # paho leaves Nagle on: confirms would wait ~40 ms for a delayed ACK.
                    socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
                ) as client:
                    self._client = client
                    await client.subscribe(self.subscription, qos=1)
                    await client.subscribe(CHECKPOINT_TOPIC, qos=1)
                    await client.subscribe(RESULT_TOPIC, qos=1)
                    self.connected.set()
                    self._start_flush()  # verdicts left while the broker was away
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._receive_all(client))
                        if self.replay_after is not None:
                            group.create_task(self._watch_gaps(client))
            except* aiomqtt.MqttError:
                self.connected.clear()
                self._client = None
                if client is not None:
                    self._receive_left_over(client)
                await asyncio.sleep(0.2)

    def _receive_left_over(self, client: aiomqtt.Client) -> None:
        """Take the messages a dropped connection left in aiomqtt's queue.

        paho acknowledged them on arrival, so the broker will not send them again, but
        aiomqtt's iterator gives up as soon as it sees the disconnect, before draining its
        queue: without this, a broker restart while a burst was queued here would lose events
        on the consumer's side. (Suspected in a broker-restart chaos failure, but the counter
        ``left_over`` stayed 0 in every later run: that failure's cause is still unknown.) A
        real consumer must do the same, or acknowledge only after processing.
        """
        queue = client._queue  # noqa: SLF001 - aiomqtt has no public way to reach them
        while not queue.empty():
            self.left_over += 1
            self._handle(queue.get_nowait())

    async def _receive_all(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self._handle(message)

    def _handle(self, message: aiomqtt.Message) -> None:
        payload = message.payload if isinstance(message.payload, bytes) else b""
        topic = message.topic.value
        if topic.endswith("/checkpoint"):
            with contextlib.suppress(ValueError):
                self.checkpoints[topic.rsplit("/", 1)[0]] = json.loads(payload)
        elif topic.endswith("/cmd/result"):
            self._result(payload)
        else:
            self._receive(payload, topic)

    def _result(self, payload: bytes) -> None:
        with contextlib.suppress(ValueError):
            body = json.loads(payload)
            self.results.append(body)
            if isinstance(body, dict) and body.get("ok"):
                for track in self.sources.values():
                    track.next_replay_at = min(track.next_replay_at, time.monotonic() + 0.5)

    def _receive(self, payload: bytes, topic: str = "") -> None:
        try:
            event = self._validator.check(payload)
            source, event_id, seq = event["source"], str(event["id"]), int(event["seq"])
        except (ValueError, KeyError, TypeError):
            self.invalid.append(payload)
            return
        self.messages.append(event)
        track = self.sources[source]
        if "/events/" in topic:
            track.root, track.device = topic.rsplit("/events/", 1)
        if event_id in track.ids:
            if event.get("replayed"):
                track.replayed += 1
            else:
                track.duplicates += 1
        elif seq in track.seqs:
            track.conflicting += 1
        track.ids[event_id] = seq
        track.seqs.add(seq)
        if self.confirm and track.root is not None:
            self._queue_confirm(track.root, event)
        self._arrived.set()

    def _queue_confirm(self, root: str, event: dict[str, Any]) -> None:
        reason = self.rule(event)
        verdict: dict[str, Any] = {"id": event["id"], "status": "accepted"}
        if reason is not None:
            verdict = {"id": event["id"], "status": "rejected", "reason": reason}
        self._outbox[root].append(verdict)
        self._start_flush()

    def _start_flush(self) -> None:
        if self._outbox and (self._flush is None or self._flush.done()):
            self._flush = asyncio.create_task(self._send_confirms())

    async def _send_confirms(self) -> None:
        """Send the outbox until it is empty.

        Verdicts queued while a publish is awaited land in the next outbox, and no new flush
        starts while this one runs: stopping after one round stranded them whenever the
        stream ended during a publish (the last events never confirmed).
        """
        await asyncio.sleep(0)  # let this loop turn's messages join the batch
        while self._outbox and self._client is not None:
            outbox, self._outbox = self._outbox, defaultdict(list)
            client = self._client
            for root, verdicts in outbox.items():
                for start in range(0, len(verdicts), 500):
                    chunk = verdicts[start : start + 500]
                    body = chunk[0] if len(chunk) == 1 else chunk
                    with contextlib.suppress(aiomqtt.MqttError):
                        await client.publish(f"{root}/confirm", json.dumps(body), qos=1)
                        self.confirms_sent[root] += len(chunk)

    # --- parity and gaps ---------------------------------------------------------------------

    def _expected(self) -> dict[str, tuple[str, str, dict[str, Any]]]:
        """Source -> (root, device, checkpoint figures), from every checkpoint seen."""
        out = {}
        for root, body in self.checkpoints.items():
            site, gateway = body.get("site"), body.get("gateway")
            if not site or not gateway:
                parts = root.split("/")
                site, gateway = parts[-2], parts[-1]
            for device, figures in (body.get("devices") or {}).items():
                out[f"/{site}/{gateway}/{device}"] = (root, device, figures)
        return out

    def parity(self) -> dict[str, dict[str, Any]]:
        """Per source: in parity, missing ranges, duplicates, against the latest checkpoint."""
        report: dict[str, dict[str, Any]] = {}
        expected = self._expected()
        for source in sorted(set(self.sources) | set(expected)):
            track = self.sources[source]
            figures = expected.get(source, ("", "", {}))[2]
            last_seq = int(figures.get("last_seq", 0))
            missing = ranges(track.missing(last_seq))
            report[source] = {
                "in_parity": not missing and track.highest >= last_seq,
                "held": len(track.ids),
                "gateway_last_seq": last_seq,
                "gateway_pending": figures.get("pending"),
                "missing": missing,
                "duplicates": track.duplicates,
                "replayed": track.replayed,
            }
        return report

    async def _watch_gaps(self, client: aiomqtt.Client) -> None:
        assert self.replay_after is not None
        while True:
            await asyncio.sleep(min(0.25, self.replay_after / 2))
            for topic, request in self._gap_requests(time.monotonic(), self.replay_after):
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.publish(topic, json.dumps(request), qos=1)

    def _gap_requests(self, now: float, wait: float) -> list[tuple[str, dict[str, Any]]]:
        """Replay requests for gaps older than the reorder timeout, unless a drain is on."""
        expected = self._expected()
        for source, (root, device, _figures) in expected.items():
            track = self.sources[source]
            track.root, track.device = track.root or root, track.device or device
        requests = []
        for source, track in list(self.sources.items()):
            if track.root is None or track.device is None:
                continue
            if self.checkpoints.get(track.root, {}).get("draining"):
                continue
            sent = int(expected.get(source, ("", "", {}))[2].get("last_sent_seq", 0))
            missing = track.missing(sent)
            if not missing:
                track.next_replay_at = 0.0
                continue
            if track.next_replay_at == 0.0:
                track.next_replay_at = now + wait  # the reorder timeout starts
            if now < track.next_replay_at:
                continue
            track.next_replay_at = now + max(5.0, wait * 4)
            for first, last in ranges(missing)[:10]:
                request_id = f"{self.client_id}-{next(self._requests)}"
                body: dict[str, Any] = {"request_id": request_id, "device": track.device}
                body |= {"from_seq": first, "to_seq": last}
                requests.append((f"{track.root}/cmd/replay", body))
        return requests

    # --- for tests and the demo ---------------------------------------------------------------

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


async def _main(args: argparse.Namespace) -> None:
    rule: Rule = accept_all
    if args.skus:
        with open(args.skus, encoding="utf-8") as handle:  # noqa: PTH123, ASYNC230 - at start-up
            rule = sku_rule(line.strip() for line in handle if line.strip())
    central = CentralCollector(
        args.host,
        args.port,
        client_id=args.client_id,
        share_group=args.group or None,
        confirm=not args.no_confirm,
        rule=rule,
        replay_after=args.replay_after,
    )
    task = asyncio.create_task(central.run())
    seen = 0
    try:
        while True:
            await asyncio.sleep(1.0)
            for event in central.messages[seen:]:
                print(event["source"], event["seq"], json.dumps(event["data"]))
            seen = len(central.messages)
            for source, row in central.parity().items():
                if not row["in_parity"]:
                    print("parity", source, json.dumps(row))
    finally:
        task.cancel()


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description="reference central consumer for edge-gateway")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--client-id", default="central-cli")
    parser.add_argument("--group", default="central", help='shared-subscription group, "" = none')
    parser.add_argument("--skus", default=None, help="file of accepted codes, one a line")
    parser.add_argument("--no-confirm", action="store_true", help="receive only")
    parser.add_argument("--replay-after", type=float, default=2.0, help="reorder timeout, s")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
