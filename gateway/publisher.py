"""The MQTT publisher: the only module that talks to the broker (through aiomqtt).

The buffer, not the client, is the truth. An event is claimed (in flight), published at QoS 1,
and marked sent only after its PUBACK. When the connection drops, aiomqtt's pending publishes
would each wait out their whole timeout and a publish that raised may still have reached the
broker; so on any failure the session is torn down, everything unacknowledged is released back
to pending, and it is sent again (same id, same seq) on the next connection.

It also receives: after each connect it subscribes (QoS 1) to the topics it is given, only under
this gateway's root, and hands every message to ``on_message`` (see gateway/inbound.py). The
session is persistent (``clean_session`` off) so a confirm central sends while we reconnect is
queued by the broker instead of lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections.abc import AsyncIterable, Callable, Sequence
from typing import Any

import aiomqtt
import structlog

from buffer.store import Buffer, OutgoingEvent
from drivers.backoff import Backoff
from gateway import __version__
from gateway.events import mark_historical, rfc3339_now
from gateway.settings import MqttSection
from gateway.topics import Topics

log = structlog.get_logger(__name__)

NO_DELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
"""paho leaves Nagle's algorithm on: a PUBLISH written while an earlier one is unacknowledged
then waits for the broker's delayed ACK, adding ~40 ms to delivery (and to feedback)."""

LIVE_FIRST_BACKLOG = 1000
"""A backlog larger than this (over a second of publishing) lets live events overtake it; a
smaller one simply goes first, so short outages keep strict per-device seq order."""

MAX_QUEUED_INCOMING = 10_000
"""Received messages aiomqtt may hold before we read them; a flood beyond it is dropped."""

DeliveredFn = Callable[[Sequence[OutgoingEvent]], None]
MessageFn = Callable[[str, bytes], None]


class NotConnectedError(ConnectionError):
    """A publish could not be made or got no PUBACK: the connection is down or went down."""


def mqtt_client(
    mqtt: MqttSection,
    client_id: str,
    *,
    window: int,
    will: aiomqtt.Will | None = None,
    clean_session: bool | None = None,
    max_queued_incoming_messages: int | None = None,
) -> aiomqtt.Client:
    """A client with the site's broker settings: TLS, credentials, keepalive, no Nagle."""
    tls_context: ssl.SSLContext | None = None
    if mqtt.tls is not None:
        tls_context = ssl.create_default_context(
            cafile=str(mqtt.tls.ca_file) if mqtt.tls.ca_file else None
        )
        if mqtt.tls.cert_file and mqtt.tls.key_file:
            tls_context.load_cert_chain(str(mqtt.tls.cert_file), str(mqtt.tls.key_file))
        if mqtt.tls.insecure:
            tls_context.check_hostname = False
    client = aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        identifier=client_id,
        username=mqtt.username,
        password=mqtt.password(),
        keepalive=mqtt.keepalive,
        will=will,
        max_inflight_messages=window,
        timeout=mqtt.publish_timeout,
        clean_session=clean_session,
        max_queued_incoming_messages=max_queued_incoming_messages,
        tls_context=tls_context,
        tls_insecure=mqtt.tls.insecure if mqtt.tls else None,
        socket_options=NO_DELAY,
    )
    # aiomqtt warns on every publish beyond 10 outstanding; our window is deliberate.
    client.pending_calls_threshold = window + 10
    return client


class Publisher:
    """Drains the buffer to the broker and keeps the retained status topics current."""

    def __init__(
        self,
        mqtt: MqttSection,
        buffer: Buffer,
        topics: Topics,
        *,
        client_id: str,
        on_delivered: DeliveredFn,
        on_message: MessageFn | None = None,
        subscriptions: Sequence[str] = (),
    ) -> None:
        self._mqtt = mqtt
        self._buffer = buffer
        self._topics = topics
        self._client_id = client_id
        self._on_delivered = on_delivered
        self._on_message = on_message
        self._subscriptions = tuple(subscriptions)
        self._client: aiomqtt.Client | None = None
        self._device_status: dict[str, dict[str, Any]] = {}
        self._in_flight: dict[int, OutgoingEvent] = {}
        self._acked: list[OutgoingEvent] = []
        self._acks_ready = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._publish_failed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._marking: set[asyncio.Future[None]] = set()
        self._answers: set[asyncio.Task[None]] = set()
        self.publish_latencies: list[float] = []
        """Seconds from commit to PUBACK-recorded, most recent last (bounded), for metrics."""
        self.publish_latencies_total = 0
        self._reconnect = asyncio.Event()
        self._stopping = asyncio.Event()
        self._since = rfc3339_now()
        self.connected = asyncio.Event()
        self.draining = False
        self.reconnects = 0
        self.changed = asyncio.Event()
        """Set on connect and when a drain starts or ends: the checkpoint is then republished."""

    # --- connection management -------------------------------------------------------------

    def _status_payload(self, state: str) -> bytes:
        return json.dumps({"state": state, "since": self._since, "version": __version__}).encode()

    def _make_client(self) -> aiomqtt.Client:
        return mqtt_client(
            self._mqtt,
            self._client_id,
            window=self._mqtt.max_inflight,
            will=aiomqtt.Will(self._topics.status, self._status_payload("offline"), 1, True),
            clean_session=not self._subscriptions,
            max_queued_incoming_messages=MAX_QUEUED_INCOMING,
        )

    async def run(self) -> None:
        """Connect, drain, reconnect with backoff, until :meth:`stop` is called."""
        backoff = Backoff(self._mqtt.reconnect_min, self._mqtt.reconnect_max)
        while not self._stopping.is_set():
            self._reconnect.clear()
            try:
                async with self._make_client() as client:
                    self._client = client
                    backoff.reset()
                    await self._session(client)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                if self._stopping.is_set():
                    break
                self.reconnects += 1
                log.warning("mqtt_disconnected", error=str(exc), host=self._mqtt.host)
            finally:
                self._client = None
                self.connected.clear()
                await self._settle()
            if self._reconnect.is_set():
                continue  # new settings: connect again at once
            if not self._stopping.is_set():
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff.next()):
                        await self._stopping.wait()

    async def _session(self, client: aiomqtt.Client) -> None:
        self._since = rfc3339_now()
        await client.publish(self._topics.status, self._status_payload("online"), 1, retain=True)
        for device, payload in list(self._device_status.items()):
            await self._publish_json(client, self._topics.device_status(device), payload)
        for topic in self._subscriptions:
            await client.subscribe(topic, qos=1)
        log.info("mqtt_connected", host=self._mqtt.host, port=self._mqtt.port)
        self.connected.set()
        self.changed.set()
        self._publish_failed.clear()
        pump = asyncio.create_task(self._pump(client), name="publisher-pump")
        tasks = [
            pump,
            asyncio.create_task(self._ack_writer(), name="publisher-acks"),
            asyncio.create_task(self._watch_connection(client), name="publisher-watch"),
            asyncio.create_task(self._publish_failed.wait(), name="publisher-failed"),
            asyncio.create_task(self._stopping.wait(), name="publisher-stop"),
            asyncio.create_task(self._reconnect.wait(), name="publisher-reconnect"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise the MqttError that ended the session
            if self._publish_failed.is_set():
                raise aiomqtt.MqttError("a publish failed or got no PUBACK in time")
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            await self._finish(client)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch_connection(self, client: aiomqtt.Client) -> None:
        """Hand received messages on; iterating them is also how aiomqtt notices a lost link."""
        async for message in client.messages:
            if self._on_message is None:
                continue
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                payload = b"" if payload is None else str(payload).encode()
            try:
                self._on_message(message.topic.value, bytes(payload))
            except Exception:
                log.exception("message_handler_failed", topic=message.topic.value[:200])

    async def _finish(self, client: aiomqtt.Client) -> None:
        """Graceful stop: let in-flight publishes get their PUBACK, then say offline."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._mqtt.publish_timeout):
                while self._in_flight and not self._publish_failed.is_set():
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
        await self._flush_acks()
        await client.publish(self._topics.status, self._status_payload("offline"), 1, retain=True)

    async def _settle(self) -> None:
        """After a session: record the acks we have, release the rest to pending."""
        for task in [*self._tasks, *self._answers]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._answers, *self._marking, return_exceptions=True)
        await self._flush_acks()
        self._in_flight.clear()
        await self._buffer.release_in_flight()

    def stop(self) -> None:
        """Ask :meth:`run` to finish: drain in flight, publish offline, disconnect."""
        self._stopping.set()

    def reconfigure(self, mqtt: MqttSection) -> None:
        """Take new broker settings (a reload): end the session cleanly, connect with them."""
        if mqtt == self._mqtt:
            return
        self._mqtt = mqtt
        self._reconnect.set()

    # --- events ------------------------------------------------------------------------------

    async def _pump(self, client: aiomqtt.Client) -> None:
        live_after = await self._buffer.last_rowid()
        backlog = await self._buffer.unsent_count(live_after)
        self.draining = backlog > LIVE_FIRST_BACKLOG
        if self.draining:
            log.info("backlog_drain_started", events=backlog)
            self.changed.set()
        overtaken = False
        limit = self._mqtt.max_inflight
        while True:
            if self.draining and not await self._buffer.unsent_count(live_after, at_most=1):
                self.draining = False
                log.info("backlog_drain_finished")
                self.changed.set()
            free = limit - len(self._in_flight)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            self._buffer.committed.clear()
            batch = await self._buffer.claim(free, live_after if self.draining else None)
            if not batch:
                self._slot_freed.clear()
                waits = [self._buffer.committed.wait(), self._slot_freed.wait()]
                await _first_of(*waits, timeout=1.0)
                continue
            for event in batch:
                payload = event.payload
                if event.backlog and overtaken:
                    payload = mark_historical(payload)
                elif not event.backlog and self.draining:
                    overtaken = True
                self._in_flight[event.rowid] = event
                task = asyncio.create_task(self._publish_event(client, event, payload))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _publish_event(
        self, client: aiomqtt.Client, event: OutgoingEvent, payload: bytes
    ) -> None:
        try:
            await client.publish(self._topics.events(event.device), payload, 1)
        except aiomqtt.MqttError as exc:
            # Left in flight: the session ends and _settle releases it to pending.
            log.warning("publish_failed", device=event.device, seq=event.seq, error=str(exc))
            self._publish_failed.set()
            return
        if self._in_flight.pop(event.rowid, None) is not None:
            self._acked.append(event)
            self._acks_ready.set()
            self._slot_freed.set()

    async def _ack_writer(self) -> None:
        """Mark PUBACKed events sent in groups: acks arriving during one commit share the next."""
        while True:
            await self._acks_ready.wait()
            self._acks_ready.clear()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        while self._acked:
            batch, self._acked = self._acked, []
            # Shielded: a session torn down mid-write must not leave rows stuck in flight.
            marking = asyncio.ensure_future(self._mark_sent(batch))
            self._marking.add(marking)
            marking.add_done_callback(self._marking.discard)
            await asyncio.shield(marking)

    async def _mark_sent(self, batch: list[OutgoingEvent]) -> None:
        await self._buffer.mark_sent(batch)
        now = time.time()
        self.publish_latencies.extend(now - e.created for e in batch if e.created)
        self.publish_latencies_total += sum(1 for e in batch if e.created)
        if len(self.publish_latencies) > 10_000:
            del self.publish_latencies[:5_000]
        self._on_delivered(batch)

    # --- status topics -----------------------------------------------------------------------

    async def _publish_json(self, client: aiomqtt.Client, topic: str, body: Any) -> None:  # noqa: ANN401
        await client.publish(topic, json.dumps(body).encode(), 1, retain=True)

    def device_status(self, device: str, body: dict[str, Any]) -> None:
        """Remember a device's state and publish it retained when (or once) connected."""
        self._device_status[device] = body
        client = self._client
        if client is not None and self.connected.is_set():
            task = asyncio.create_task(self._publish_quietly(client, device, body))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _publish_quietly(self, client: aiomqtt.Client, device: str, body: Any) -> None:  # noqa: ANN401
        with contextlib.suppress(aiomqtt.MqttError):
            await self._publish_json(client, self._topics.device_status(device), body)

    async def publish_checkpoint(self, body: dict[str, Any]) -> bool:
        """Publish the retained checkpoint if connected; False when it could not be sent."""
        client = self._client
        if client is None or not self.connected.is_set():
            return False
        try:
            await self._publish_json(client, self._topics.checkpoint, body)
        except aiomqtt.MqttError:
            return False
        return True

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """QoS 1 publish on the current session; returns after its PUBACK.

        Raises NotConnectedError when there is no session or it broke meanwhile: the caller
        decides whether to wait for :attr:`connected` and try again.
        """
        client = self._client
        if client is None or not self.connected.is_set():
            raise NotConnectedError("not connected to the broker")
        try:
            await client.publish(topic, payload, 1, retain=retain)
        except aiomqtt.MqttError as exc:
            raise NotConnectedError(str(exc)) from exc

    def publish_soon(self, topic: str, payload: bytes) -> None:
        """Fire-and-forget publish (command answers): dropped, not retried, if disconnected."""

        async def send() -> None:
            with contextlib.suppress(NotConnectedError):
                await self.publish(topic, payload)

        task = asyncio.create_task(send())
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)


async def publish_oneshot(
    mqtt: MqttSection,
    *,
    client_id: str,
    messages: AsyncIterable[tuple[str, bytes]],
    window: int = 10,
) -> int:
    """Connect, publish every message QoS 1 (``window`` awaiting PUBACK at once), disconnect.

    For ``edge-gateway replay``: its own client id, so the daemon's session is not taken over.
    Returns how many got their PUBACK; raises NotConnectedError if the broker is unreachable or
    the connection breaks (some messages may then have been published: they are replays, and
    consumers deduplicate).
    """
    count = 0
    try:
        async with mqtt_client(mqtt, client_id, window=window) as client:
            pending: set[asyncio.Task[None]] = set()
            try:
                async for topic, payload in messages:
                    if len(pending) >= window:
                        done, pending = await asyncio.wait(
                            pending, return_when=asyncio.FIRST_COMPLETED
                        )
                        for task in done:
                            task.result()
                            count += 1
                    pending.add(asyncio.create_task(client.publish(topic, payload, 1)))
                await asyncio.gather(*pending)
                count += len(pending)
                pending.clear()
            finally:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
    except aiomqtt.MqttError as exc:
        raise NotConnectedError(str(exc)) from exc
    return count


async def _first_of(*aws: Any, timeout: float) -> None:  # noqa: ANN401
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
