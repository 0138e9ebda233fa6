"""The MQTT publisher: the only module that talks to the broker (through gateway/mqtt_link.py).

The buffer, not the client, is the truth. An event is claimed (in flight), published at QoS 1,
and marked sent only after its PUBACK. When the connection drops, a publish may or may not have
reached the broker; so on any failure the session is torn down, everything unacknowledged is
released back to pending, and it is sent again (same id, same seq) on the next connection.

The hot path has no task, future or lock per event: the pump writes each claimed event with
:meth:`MqttLink.send` and records its mid; the PUBACK callback moves it to the acked list, which
one writer marks sent in groups (the acks that arrive during one commit share the next).

It also receives: after each connect it subscribes (QoS 1) to the topics it is given, only under
this gateway's root, and hands every message to ``on_message`` (see gateway/inbound.py), which
may return an awaitable: the message is PUBACKed only once that is done (gateway/mqtt_link.py).
The session is persistent (MQTT 5 clean start off, a session expiry interval) so a confirm
central sends while we reconnect or restart is queued by the broker instead of lost, and one we
received but had not applied when the link went down is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from typing import Any

import structlog

from buffer.rows import OutgoingEvent
from buffer.store import Buffer
from drivers.backoff import Backoff
from gateway import __version__
from gateway.events import mark_historical, rfc3339_now
from gateway.mqtt_link import (
    PACKET_TOO_LARGE,
    LinkError,
    MqttLink,
    PacketTooLargeError,
    RetainUnsupportedError,
)
from gateway.outage_log import OutageLog
from gateway.reload import session_changed
from gateway.settings import MqttSection
from gateway.topics import Topics

log = structlog.get_logger(__name__)

HELD_RETRY_MIN = 5.0
HELD_RETRY_MAX = 300.0
"""Bounds of the backoff between two offers of held (broker-refused) events in one session."""

LIVE_FIRST_BACKLOG = 1000
"""A backlog larger than this (over a second of publishing) lets live events overtake it; a
smaller one simply goes first, so short outages keep strict per-device seq order."""

PUMP_RECHECK_S = 1.0
"""The longest the event pump sleeps without a wake-up (a commit, a freed slot or packet id, a
hold or sent mark while draining): a net, so that a wake-up nobody thought of costs this long
instead of stopping delivery (tests/integration/gateway/test_pump_wakeups.py injects one)."""

ACK_CHECK_INTERVAL = 1.0
"""The longest the PUBACK watcher sleeps with nothing in flight (it also watches the link). With
publishes in flight it wakes when the oldest reaches ``publish_timeout``, and a publish entering
an empty window wakes it, so the timeout fires on time, not up to this much late (issue 14)."""

QUICK_DROP_S = 5.0
QUICK_DROPS_SUSPECT = 3
"""Sessions the broker ends this soon after CONNACK, this many times in a row, look like a
second client with our client id: MQTT lets only one hold it, so each connect drops the other
(issue 14). Logged once per streak, with the client id, so a technician can look for it."""

STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, OSError)
"""What the buffer raises when its file misbehaves (disk full, I/O error, a foreign lock).

Caught *after* :class:`LinkError` (a ``ConnectionError``, so an ``OSError`` too): a store error
ends the session like a lost link does, and the next session starts once the store answers.
"""

DeliveredFn = Callable[[Sequence[OutgoingEvent]], None]
MessageFn = Callable[..., Awaitable[Any] | None]
"""As gateway/mqtt_link.py's: ``(topic, payload)``, or with ``retained=True``."""


class NotConnectedError(ConnectionError):
    """A publish could not be made or got no PUBACK: the connection is down or went down."""


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
        on_link: Callable[[bool, str], None] | None = None,
    ) -> None:
        self._mqtt = mqtt
        self._buffer = buffer
        self._topics = topics
        self._client_id = client_id
        self._on_delivered = on_delivered
        self._on_message = on_message
        self._subscriptions = tuple(subscriptions)
        self._on_link = on_link
        self._announced = False
        """Told (connected, since) when the session becomes usable and when it ends."""
        self._link: MqttLink | None = None
        self._device_status: dict[str, dict[str, Any]] = {}
        self._in_flight: dict[int, tuple[OutgoingEvent, float]] = {}
        """mid -> (event, monotonic time written), oldest first."""
        # device -> its events topic, made once (_event_topic)
        self._event_topics: dict[str, str] = {}
        self._acked: list[OutgoingEvent] = []
        self._delivering: list[OutgoingEvent] = []
        """PUBACKed events whose delivered feedback is due at the loop's next turn."""
        self._unsent: list[OutgoingEvent] = []
        """Claimed events not written yet for want of a free packet id (released at the end of
        the session like every claimed row)."""
        self._refused: list[tuple[OutgoingEvent, int]] = []
        """Events the broker refused (PUBACK reason code, or too large to send), to be held."""
        self._acks_ready = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._window_opened = asyncio.Event()
        """Set when a publish enters an empty window: the PUBACK watcher then starts its clock."""
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
        self.store_errors = 0
        self._retain = True
        """False once the broker said it cannot retain: statuses are then plain messages."""
        self.refused_by_broker = 0
        """Events the broker would not take (held in the buffer, tried again next session)."""
        """Sessions ended (or kept from starting) by a buffer error, for metrics."""
        self._store_backoff = Backoff(self._mqtt.reconnect_min, self._mqtt.reconnect_max)
        self._release_owed = False
        self._quick_drops = 0
        self._connected_at: float | None = None
        self._outages = OutageLog()
        self.changed = asyncio.Event()
        """Set on connect and when a drain starts or ends: the checkpoint is then republished."""

    # --- connection management -------------------------------------------------------------

    def _status_payload(self, state: str, since: str | None) -> bytes:
        return json.dumps({"state": state, "since": since, "version": __version__}).encode()

    def _make_link(self) -> MqttLink:
        return MqttLink(
            self._mqtt,
            self._client_id,
            on_ack=self._on_ack,
            on_refused=self._on_refused,
            on_message=self._handle_message,
            # The broker sends the will when it notices the loss, which no time set here can
            # date: ``since`` is null, the will's arrival is when the outage began (issue 14).
            will=(self._topics.status, self._status_payload("offline", None)),
            clean_session=not self._subscriptions,
            retain=self._retain,
        )

    async def run(self) -> None:
        """Connect, drain, reconnect with backoff, until :meth:`stop` is called.

        A store error (disk full, I/O error, a lock held by another process) ends the session
        like a lost connection, loudly and counted in :attr:`store_errors`, and backs off on a
        curve of its own: connecting succeeds each time, so the link's backoff would reset and
        a persistent store fault would otherwise reconnect in a tight loop.
        """
        backoff = Backoff(self._mqtt.reconnect_min, self._mqtt.reconnect_max)
        while not self._stopping.is_set():
            self._reconnect.clear()
            store_failed = False
            if self._release_owed and not await self._release():
                store_failed = True
            else:
                link = self._make_link()
                self._connected_at = None
                try:
                    await link.connect()
                    # A fallback holds for this link only: the next connect asks for retain
                    # again, so a broker that gained retain support gets retained statuses.
                    self._retain = True
                    self._connected_at = time.monotonic()
                    self._link = link
                    backoff.reset()
                    await self._session(link)
                except RetainUnsupportedError as exc:
                    self._retain = False  # our retained will was refused: connect without it
                    log.warning("mqtt_broker_cannot_retain", error=str(exc), host=self._mqtt.host)
                    continue
                except LinkError as exc:
                    self.connected.clear()
                    if self._stopping.is_set():
                        break
                    self.reconnects += 1
                    self._outages.failed(
                        str(exc), self._mqtt.host, was_connected=self._connected_at is not None
                    )
                    self._count_quick_drop()
                except STORE_ERRORS as exc:
                    store_failed = True
                    self._store_error("publish", exc)
                finally:
                    self._link = None
                    self._announce_down()
                    self.connected.clear()
                    await link.close()
                    await self._settle()
            if self._reconnect.is_set():
                continue  # new settings: connect again at once
            delay = self._store_backoff.next() if store_failed else backoff.next()
            if not self._stopping.is_set():
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()

    def _announce_down(self) -> None:
        if self._announced and self._on_link is not None:
            self._on_link(False, rfc3339_now())
        self._announced = False

    def _count_quick_drop(self) -> None:
        """Warn once per streak when sessions keep ending right after CONNACK."""
        if self._connected_at is None:  # never connected: not a drop after CONNACK
            return
        lasted = time.monotonic() - self._connected_at
        if lasted >= QUICK_DROP_S:
            self._quick_drops = 0
            return
        self._quick_drops += 1
        if self._quick_drops == QUICK_DROPS_SUSPECT:
            log.warning(
                "mqtt_client_id_in_use_elsewhere",
                client_id=self._client_id,
                drops=self._quick_drops,
                hint="the broker keeps dropping us right after CONNACK: another client may be "
                "using the same client id (a second gateway with this config?)",
            )

    def _store_error(self, during: str, exc: BaseException) -> None:
        """Count and log a buffer error that ended (or followed) a session."""
        self.store_errors += 1
        log.error(
            "publisher_store_error",
            during=during,
            error=f"{type(exc).__name__}: {exc}",
            count=self.store_errors,
        )

    async def _release(self) -> bool:
        """Put every in-flight row back to pending; False (counted) if the store failed.

        Until this succeeds no session starts: rows left in flight would never be claimed.
        """
        try:
            await self._buffer.release_in_flight()
        except STORE_ERRORS as exc:
            self._release_owed = True
            self._store_error("release", exc)
            return False
        self._release_owed = False
        return True

    async def _session(self, link: MqttLink) -> None:
        self._since = rfc3339_now()
        retrying = await self._buffer.unhold()
        if retrying:
            log.info("retrying_events_refused_by_broker", events=retrying)
        online = self._status_payload("online", self._since)
        await link.publish(self._topics.status, online, retain=True)
        sent: dict[str, dict[str, Any]] = {}
        for device in list(self._device_status):
            sent[device] = await self._publish_status(link, device)
        for topic in self._subscriptions:
            await link.subscribe(topic)
        self._outages.connected(self._mqtt.host, self._mqtt.port)
        self.connected.set()
        if self._on_link is not None:
            self._on_link(True, self._since)
        self._announced = True
        self.changed.set()
        # A device that changed while the session was being set up (its change was not sent:
        # not connected yet) is sent now; from connected on, device_status sends each change.
        for device, body in list(self._device_status.items()):
            if sent.get(device) is not body:
                await self._publish_status(link, device)
        pump = asyncio.create_task(self._pump(link), name="publisher-pump")
        tasks = [
            pump,
            asyncio.create_task(self._ack_writer(), name="publisher-acks"),
            asyncio.create_task(self._retry_held(), name="publisher-held"),
            asyncio.create_task(self._watch_link(link), name="publisher-watch"),
            asyncio.create_task(self._stopping.wait(), name="publisher-stop"),
            asyncio.create_task(self._reconnect.wait(), name="publisher-reconnect"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raise the LinkError that ended the session
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            await self._finish(link)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch_link(self, link: MqttLink) -> None:
        """End the session when the link drops or the oldest publish waits too long for PUBACK.

        The timeout is what notices a half-open connection (the broker gone without a FIN):
        keepalive alone would take up to twice its period.
        """
        while True:
            wait = ACK_CHECK_INTERVAL
            self._window_opened.clear()
            if self._in_flight:
                _, written = next(iter(self._in_flight.values()))
                waited = time.monotonic() - written
                if waited >= self._mqtt.publish_timeout:
                    raise LinkError(f"no PUBACK for {waited:.1f} s")
                # Wake when the oldest publish's time is up, not at the next tick: a
                # publish_timeout of 4 s fires after 4 s, not up to 5 (issue 14).
                wait = min(wait, self._mqtt.publish_timeout - waited)
            await _first_of(link.lost.wait(), self._window_opened.wait(), timeout=wait)
            if link.lost.is_set():
                raise LinkError("connection lost")

    def _handle_message(
        self, topic: str, payload: bytes, *, retained: bool = False
    ) -> Awaitable[Any] | None:
        if self._on_message is None:
            return None
        try:
            if retained:
                return self._on_message(topic, payload, retained=True)
            return self._on_message(topic, payload)
        except Exception:
            log.exception("message_handler_failed", topic=topic[:200])
            return None

    async def _finish(self, link: MqttLink) -> None:
        """Graceful stop: let in-flight publishes get their PUBACK, then say offline."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._mqtt.publish_timeout):
                while self._in_flight and not link.lost.is_set():
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
        await self._flush_acks()
        offline = self._status_payload("offline", rfc3339_now())  # stopping now, not at connect
        await link.publish(self._topics.status, offline, retain=True)

    async def _settle(self) -> None:
        """After a session: record the acks we have, release the rest to pending.

        Never raises a store error: acks that could not be recorded stay in flight in the
        buffer and :meth:`_release` puts them back to pending (now, or before the next session),
        so they are sent again with the same id and seq, which the contract allows.
        """
        for task in self._answers:
            task.cancel()
        await asyncio.gather(*self._answers, *self._marking, return_exceptions=True)
        try:
            await self._hold_refused()
            await self._flush_acks()
        except STORE_ERRORS as exc:
            self._acked.clear()  # still in flight in the buffer: released below, sent again
            self._refused.clear()
            self._store_error("mark_sent", exc)
        self._in_flight.clear()
        self._unsent = []
        await self._release()

    def stop(self) -> None:
        """Ask :meth:`run` to finish: drain in flight, publish offline, disconnect."""
        self._stopping.set()

    def reconfigure(self, mqtt: MqttSection) -> None:
        """Take new broker settings (a reload): end the session cleanly, connect with them."""
        if mqtt == self._mqtt:
            return
        reconnect = session_changed(self._mqtt, mqtt)
        self._mqtt = mqtt
        if reconnect:
            self._reconnect.set()

    # --- events ------------------------------------------------------------------------------

    async def _pump(self, link: MqttLink) -> None:
        live_after = await self._buffer.last_rowid()
        backlog = await self._buffer.unsent_count(live_after)
        self.draining = backlog > LIVE_FIRST_BACKLOG
        if self.draining:
            log.info("backlog_drain_started", events=backlog)
            self.changed.set()
        overtaken = store_ok = False
        limit = min(self._mqtt.max_inflight, link.send_quota)
        in_flight = self._in_flight
        while True:
            # Cleared before anything is read, not before each wait: a PUBACK, a sent mark or a
            # commit that lands while this turn reads the buffer must wake the wait that ends
            # it (a clear after the claim lost the sent mark that ended a drain: the 1 s net
            # below noticed it instead).
            self._slot_freed.clear()
            self._buffer.committed.clear()
            ids_freed = link.arm_ids_freed()
            if self.draining and not await self._buffer.unsent_count(live_after, at_most=1):
                self.draining = False
                log.info("backlog_drain_finished")
                self.changed.set()
            if self._unsent:  # claimed, not yet written: no packet id was free for them
                overtaken = self._send(link, self._take_unsent(), overtaken=overtaken)
            free = min(limit - len(in_flight), link.free_ids())
            if free <= 0 or self._unsent:
                await _first_of(
                    self._slot_freed.wait(), link.ids_freed(ids_freed), timeout=PUMP_RECHECK_S
                )
                continue
            batch = await self._buffer.claim(free, live_after if self.draining else None)
            if not store_ok:  # the store answers again: its next fault backs off from low
                store_ok = True
                self._store_backoff.reset()
            if not batch:
                waits = [self._buffer.committed.wait(), self._slot_freed.wait()]
                await _first_of(*waits, timeout=PUMP_RECHECK_S)
                continue
            overtaken = self._send(link, batch, overtaken=overtaken)

    def _send(self, link: MqttLink, batch: list[OutgoingEvent], *, overtaken: bool) -> bool:
        """Write a claimed batch; returns whether live events have overtaken the backlog yet.

        A LinkError here ends the session; _settle releases the whole claim. An event too large
        for the broker is not sent but held (:meth:`_hold_refused`), and the rest go on. No
        await: the PUBACK watcher, woken by a window that was empty, finds it filled.
        """
        now = time.monotonic()
        in_flight = self._in_flight
        if not in_flight:
            self._window_opened.set()
        topics = self._event_topics
        free = link.free_ids()  # each send below takes one; nothing else runs meanwhile
        with link.batch():  # one write for the whole claim
            for index, event in enumerate(batch):
                if free <= 0:
                    # A status or checkpoint took the last id meanwhile (a broker window of 2
                    # has one): keep the rest, claimed, for when an id frees up.
                    self._unsent = batch[index:]
                    break
                payload = event.payload
                if event.backlog and overtaken:
                    payload = mark_historical(payload)
                elif not event.backlog and self.draining:
                    overtaken = True
                topic = topics.get(event.device) or self._event_topic(event.device)
                try:
                    mid = link.send(topic, payload)
                except PacketTooLargeError:  # not sent: it took no packet id
                    self._refused.append((event, PACKET_TOO_LARGE))
                    self._acks_ready.set()
                    continue
                free -= 1
                in_flight[mid] = (event, now)
        return overtaken

    def _event_topic(self, device: str) -> str:
        """A device's events topic, kept: one string per device, not one per event."""
        topic = self._topics.events(device)
        if len(self._event_topics) < 10_000:  # a topic per device: bounded all the same
            self._event_topics[device] = topic
        return topic

    def _on_ack(self, mid: int) -> None:
        """PUBACK for an event (called by the link, on the event loop).

        The wake-ups (the ack writer's, the pump's) are given once per turn, by :meth:`_deliver`:
        what they look at (``_acked``, ``_in_flight``) is already changed here, so a waiter that
        checks in between sees it, and one that waits is woken then.
        """
        entry = self._in_flight.pop(mid, None)
        if entry is not None:
            self._acked.append(entry[0])
            if not self._delivering:
                asyncio.get_running_loop().call_soon(self._deliver)
            self._delivering.append(entry[0])

    def _deliver(self) -> None:
        """Delivered feedback for the PUBACKs of this turn, without waiting for their sent mark.

        ``delivered`` means the broker acknowledged the event (docs/contract.md), which the
        PUBACK says; recording it in the buffer only decides whether a restart publishes it
        again (with the same id and seq), not whether it was delivered. Waiting for that
        commit (behind whatever commit the SQLite thread was running) put one or two more
        fsyncs into every good-read at ``delivered``. The PUBACKs of one read come in one turn
        of the loop, so they are told together.
        """
        delivered, self._delivering = self._delivering, []
        self._acks_ready.set()  # for the sent mark
        self._slot_freed.set()  # for the pump: window space
        self._on_delivered(delivered)

    def _take_unsent(self) -> list[OutgoingEvent]:
        unsent, self._unsent = self._unsent, []
        return unsent

    def _on_refused(self, mid: int, reason: int) -> None:
        """A PUBACK with a failure reason code: the broker did not take the event."""
        entry = self._in_flight.pop(mid, None)
        if entry is not None:
            self._refused.append((entry[0], reason))
            self._acks_ready.set()
            self._slot_freed.set()

    async def _hold_refused(self) -> None:
        """Hold what the broker refused: not sent, not lost, tried again next session.

        Never marked sent and never given delivered feedback. Not put back to pending either:
        the pump would send a refused event again at once, in a loop, and one event the broker
        will never take would stop everything behind it.
        """
        while self._refused:
            batch, self._refused = self._refused, []
            events = [event for event, _ in batch]
            holding = asyncio.ensure_future(self._buffer.hold(events))
            self._marking.add(holding)
            holding.add_done_callback(self._marking.discard)
            await asyncio.shield(holding)
            self._slot_freed.set()  # a drain may have been waiting for these rows alone
            self.refused_by_broker += len(batch)
            event, reason = batch[0]
            log.error(
                "events_refused_by_broker",
                events=len(batch),
                total=self.refused_by_broker,
                reason_code=hex(reason),
                first_device=event.device,
                first_seq=event.seq,
                action="held in the buffer, tried again at the next broker session",
            )

    async def _retry_held(self) -> None:
        """Offer held events to the broker again now and then, within the session.

        A refusal may end without a reconnect (an ACL fixed and reloaded, a quota that freed
        up): held events must not wait for a session that a healthy link never ends. From
        :data:`HELD_RETRY_MIN` s, doubling up to :data:`HELD_RETRY_MAX` s while refusals go on
        (a poison event is tried, and logged, rarely), and from the start again once none is
        held.
        """
        delay = HELD_RETRY_MIN
        while True:
            await asyncio.sleep(delay)
            if await self._buffer.unhold():
                self._buffer.committed.set()
                delay = min(delay * 2, HELD_RETRY_MAX)
            else:
                delay = HELD_RETRY_MIN

    async def _ack_writer(self) -> None:
        """Mark PUBACKed events sent in groups: acks arriving during one commit share the next."""
        while True:
            await self._acks_ready.wait()
            self._acks_ready.clear()
            await self._hold_refused()
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
        if self.draining:  # the last of a backlog: the pump sees the drain end now
            self._slot_freed.set()
        now = time.time()
        latencies = [now - e.created for e in batch if e.created]
        self.publish_latencies.extend(latencies)
        self.publish_latencies_total += len(latencies)
        if len(self.publish_latencies) > 10_000:
            del self.publish_latencies[:5_000]

    # --- status topics -----------------------------------------------------------------------

    async def _publish_json(self, link: MqttLink, topic: str, body: Any) -> None:  # noqa: ANN401
        await link.publish(topic, json.dumps(body).encode(), retain=True)

    def device_status(self, device: str, body: dict[str, Any]) -> None:
        """Remember a device's state and publish it retained when (or once) connected."""
        self._device_status[device] = body
        link = self._link
        if link is not None and self.connected.is_set():
            task = asyncio.create_task(self._publish_quietly(link, device))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _publish_status(self, link: MqttLink, device: str) -> dict[str, Any]:
        """Publish the device's current state retained; again if it changed meanwhile.

        Publishes of one device may overtake each other (each waits for a packet id of its
        own), so whichever finishes last checks that what it sent is still the current state:
        the retained message always ends as the device's state, whatever the interleaving.
        """
        while True:
            body = self._device_status[device]
            await self._publish_json(link, self._topics.device_status(device), body)
            if self._device_status.get(device) is body:
                return body

    async def _publish_quietly(self, link: MqttLink, device: str) -> None:
        with contextlib.suppress(LinkError):
            await self._publish_status(link, device)

    async def publish_checkpoint(self, body: dict[str, Any]) -> bool:
        """Publish the retained checkpoint if connected; False when it could not be sent."""
        link = self._link
        if link is None or not self.connected.is_set():
            return False
        try:
            await self._publish_json(link, self._topics.checkpoint, body)
        except LinkError:
            return False
        return True

    async def publish(self, topic: str, payload: bytes) -> int | None:
        """QoS 1 publish, not retained, on the current session; returns after its PUBACK.

        For replays and command answers: what is retained (status, checkpoint) the publisher
        sends itself, on the session's link.

        Returns None when the broker took it, else the reason code it refused it with (which
        sending again will not change). Raises NotConnectedError when there is no session or
        it broke meanwhile: the caller decides whether to wait for :attr:`connected` and retry.
        """
        link = self._link
        if link is None or not self.connected.is_set():
            raise NotConnectedError("not connected to the broker")
        try:
            return await link.publish(topic, payload)
        except LinkError as exc:
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
    Returns how many the broker took (a PUBACK refusing one, or one over its Maximum Packet
    Size, does not count); raises NotConnectedError if the broker is unreachable or
    the connection breaks (some messages may then have been published: they are replays, and
    consumers deduplicate).
    """
    acked = refused = 0
    slot = asyncio.Event()

    def on_ack(_mid: int) -> None:
        nonlocal acked
        acked += 1
        slot.set()

    def on_refused(_mid: int, _reason: int) -> None:
        nonlocal refused
        refused += 1
        slot.set()

    link = MqttLink(mqtt, client_id, on_ack=on_ack, on_refused=on_refused)
    sent = 0
    try:
        await link.connect()
        async for topic, payload in messages:
            # Within the broker's window too (its Receive Maximum may be 2: one packet id).
            while sent - acked - refused >= min(window, link.send_quota) or link.free_ids() <= 0:
                await _wait_for_ack(link, slot, mqtt.publish_timeout)
            try:
                link.send(topic, payload)
            except PacketTooLargeError:
                continue  # not sent, so not taken: left out of the count
            sent += 1
        while acked + refused < sent:
            await _wait_for_ack(link, slot, mqtt.publish_timeout)
    except LinkError as exc:
        raise NotConnectedError(str(exc)) from exc
    finally:
        await link.close()
    return acked


async def _wait_for_ack(link: MqttLink, slot: asyncio.Event, timeout: float) -> None:
    """Wait for the next PUBACK; LinkError if the link drops or none comes in ``timeout``."""
    slot.clear()
    await _first_of(slot.wait(), link.lost.wait(), timeout=timeout)
    if not slot.is_set():
        raise LinkError("connection lost" if link.lost.is_set() else "no PUBACK in time")


async def _first_of(*aws: Any, timeout: float) -> None:  # noqa: ANN401
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
