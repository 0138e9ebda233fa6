"""``edge-central run``: receive, validate, commit in batches, then PUBACK and confirm.

Flow per MQTT message (QoS 1, shared subscription, persistent session):

    gmqtt -> on_message -> Validator -> queue --(batch)--> PostgreSQL COMMIT
                                                            |-> future done: PUBACK goes out
                                                            |-> confirms on {root}/confirm

The MQTT connection is the gateway's :class:`gateway.mqtt_link.MqttLink` (gmqtt with
``optimistic_acknowledgement`` off): its ``on_message`` may return an awaitable and the PUBACK
goes out only when that is done, in arrival order; a message whose awaitable is not done when
the link drops is never acknowledged, so the broker redelivers it to the next session. The
writer retries a failed batch until PostgreSQL is back: meanwhile nothing is acknowledged and
the broker stops pushing at ``receive_maximum`` unacknowledged messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import random
import time
from collections import deque
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from gmqtt.mqtt.constants import MQTTCommands
from gmqtt.mqtt.package import CommandWithMidPacket

from central.config import CentralSettings
from central.ledger import (
    BatchOutcome,
    Checkpoint,
    Item,
    ReplayResult,
    confirm_payloads,
    write_batch,
)
from central.metrics import CentralMetrics
from central.replayer import Replayer
from central.rules import Rule, load_rule
from central.schema import migrate
from central.validate import Event, Quarantined, Validator
from gateway.mqtt_link import LinkError, MqttLink
from gateway.settings import MqttSection as LinkSection

log = structlog.get_logger("central")

MAX_CONTROL_PAYLOAD = 256 * 1024
"""Checkpoints and replay answers larger than this are quarantined unread."""
DATABASE_AWAY = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)
"""What a batch meets while PostgreSQL restarts or dies: retried quietly until it is back."""
ACKS_READ_TOPIC = "edge-central/acknowledgements-read"
"""Never subscribed: an UNSUBSCRIBE of it is answered only after the broker has read everything
sent before it on the connection (see :meth:`CentralLink.close`)."""


GC_THRESHOLDS = (20_000, 20, 10)
"""The collector's thresholds while an instance runs (Python's are 700, 10, 10), see
:func:`fewer_collections`."""
_gc_users: list[tuple[int, int, int]] = []
"""The thresholds from before the first running instance, once per running instance."""


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect garbage cycles every 20,000 net allocations instead of 700, while running.

    The ingest holds every message it received until its batch commits, a thousand or more
    (the backlog a broker sends at once when a session resumes was 18,000 here), each with
    half a dozen tracked objects (the parsed body, the event, its future, the queue's tuples).
    With the default thresholds they outlived young collections, were promoted and made the
    full collections, which walk every live object, frequent and large: 9-10 µs of the ~42 µs
    of CPU per event went to the collector (bench/central_ingest.py, gc.callbacks). Almost
    nothing here makes cycles, so collecting less often costs little memory: at most 20,000
    young objects wait for the next collection. Process-wide; restored when the last running
    instance stops (several run in one test or bench process).
    """
    _gc_users.append(gc.get_threshold())
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        before = _gc_users.pop()
        if not _gc_users:
            gc.set_threshold(*before)


def link_section(settings: CentralSettings) -> LinkSection:
    """The gateway's MQTT settings model, filled from ``[mqtt]``, for :class:`MqttLink`."""
    mqtt = settings.mqtt
    body: dict[str, Any] = {
        "host": mqtt.host,
        "port": mqtt.port,
        "keepalive": mqtt.keepalive,
        "publish_timeout": mqtt.timeout,
    }
    if mqtt.username:
        body["username"] = mqtt.username
    if mqtt.password_file:
        body["password_file"] = str(mqtt.password_file)
    if mqtt.tls is not None:
        body["tls"] = {
            key: value if isinstance(value, bool) else str(value)
            for key, value in mqtt.tls.model_dump(exclude_none=True).items()
        }
    return LinkSection.model_validate(body, context={"config_dir": Path.cwd()})


def _printable(text: str) -> str:
    """Text PostgreSQL takes: no NUL, no lone surrogate (both shown escaped)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _as_message(item: Item) -> tuple[str, bytes]:
    """The topic and payload an item came as (re-encoded, ASCII), for the quarantine."""
    if isinstance(item, Quarantined):
        return _printable(item.topic), item.raw
    if isinstance(item, Event):
        topic, body = f"{item.root}/events/{item.device}", item.body
    elif isinstance(item, Checkpoint):
        topic, body = f"{item.root}/checkpoint", item.body
    else:
        topic, body = f"{item.root}/cmd/result", item.body
    return _printable(topic), json.dumps(body).encode()


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """The pool's reset of a connection handed back: nothing beyond asyncpg's own.

    asyncpg still rolls back a transaction left open; its default reset also sends
    ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``, a round trip per batch
    (0.2 ms at the median, 4-6 ms at p99 under load) before the writer could start the next.
    Only the writer uses this pool, and it leaves no session state: its advisory locks are
    transaction-scoped, it opens no cursor, listens to nothing and sets nothing.
    """


class CentralLink(MqttLink):
    """An :class:`MqttLink` with ``[mqtt]``'s session expiry and Receive Maximum, cheaper holds.

    MqttLink fixes both for the gateway; gmqtt keeps CONNECT properties in
    ``_connect_properties`` (pinned by tests/unit/central/test_config.py).

    The gateway's link holds each received message in a task of its own (gmqtt's way: it
    PUBACKs when the handler coroutine returns), with a future per message to keep PUBACKs in
    order, and one socket write per PUBACK. At a thousand events per commit that was most of
    the ingest's CPU. Here the QoS 1 handler is replaced: a message becomes an entry in an
    arrival-ordered queue with its commit future; when futures complete (a whole batch at
    once), one flush PUBACKs every done entry at the head of the queue in a single write. The
    guarantees are MqttLink's: a PUBACK only after the effect is done without error, in arrival
    order; a failed effect holds its own and every later PUBACK; nothing held is acknowledged
    once the link is lost or closed (the broker sends it again in the next session).
    """

    def __init__(self, settings: CentralSettings, on_message: Any) -> None:  # noqa: ANN401
        client_id = settings.central.instance
        super().__init__(
            link_section(settings), client_id, on_message=on_message, clean_session=False
        )
        props = self._client._connect_properties  # noqa: SLF001
        props["session_expiry_interval"] = int(settings.mqtt.session_expiry)
        props["receive_maximum"] = settings.mqtt.receive_maximum
        self._held: deque[tuple[int, asyncio.Future[Any] | None]] = deque()
        self._flush_scheduled = False
        self._closing = False
        self._acks_written = False
        self._unsubacks: dict[int, asyncio.Future[None]] = {}
        self._client.on_unsubscribe = self._unsubscribed
        handler = self._client._package_handler  # noqa: SLF001
        original = handler._handle_qos_1_publish_packet  # noqa: SLF001

        def qos_1(mid: int, packet: bytes, topic: str, properties: Any) -> None:  # noqa: ANN401
            if handler._optimistic_acknowledgement:  # noqa: SLF001 - below MQTT 5: gmqtt's way
                original(mid, packet, topic, properties)
            else:
                self._hold(mid, packet, topic, properties)

        handler._handle_qos_1_publish_packet = qos_1  # noqa: SLF001

    def _no_more_acks(self) -> bool:
        """Closing, lost or released: nothing more is acknowledged (sent again next session)."""
        return (
            self._closing
            or self.lost.is_set()
            or (self._released is not None and self._released.done())
        )

    def _hold(self, mid: int, packet: bytes, topic: str, properties: Any) -> None:  # noqa: ANN401
        if self._no_more_acks():
            return  # the link is finished: never acknowledged, sent again next session
        retained = isinstance(properties, dict) and bool(properties.get("retain"))
        effect = self._start_effect(topic, bytes(packet), retained=retained)
        self._held.append((mid, effect))
        self.unacknowledged += 1
        if effect is not None and not effect.done():
            effect.add_done_callback(self._effect_done)
        else:
            self._effect_done(None)

    def _effect_done(self, _future: object) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """PUBACK the done entries at the head, in order, in one write."""
        self._flush_scheduled = False
        if self._no_more_acks():
            return
        mids = []
        while self._held:
            mid, effect = self._held[0]
            if effect is not None and (
                not effect.done() or effect.cancelled() or effect.exception() is not None
            ):
                break  # not applied (yet, or ever): it and everything after it wait
            self._held.popleft()
            mids.append(mid)
        if not mids:
            return
        self.unacknowledged -= len(mids)
        self._acks_written = True
        protocol = self._client._connection._protocol  # noqa: SLF001
        protocol.write_data(
            b"".join(
                CommandWithMidPacket.build_package(
                    MQTTCommands.PUBACK, mid, False, proto_ver=protocol.proto_ver
                )
                for mid in mids
            )
        )

    async def send_when_room(self, topic: str, payload: bytes) -> None:
        """Send without awaiting the PUBACK, once the window has room.

        At most :attr:`send_quota` such messages await their PUBACK at once, so ``publish``
        keeps its reserve of packet ids, as the gateway's event pump does; in a window of one
        id (a broker's Receive Maximum of 2) the quota is that id, shared with ``publish``,
        where the reserve alone would leave nothing and every confirm would time out.
        LinkError if the link is lost, or if no PUBACK frees an id within ``[mqtt] timeout``.
        """
        try:
            async with asyncio.timeout(self._mqtt.publish_timeout):
                while (free := self.free_ids()) <= 0 or self._id_limit() - free >= self.send_quota:
                    if self.lost.is_set():
                        raise LinkError("not connected")
                    await self.ids_freed()
        except TimeoutError as exc:
            raise LinkError("no free packet id within the timeout") from exc
        self.send(topic, payload)

    async def close(self) -> None:
        """Acknowledge what is done, wait until the broker has read it, then disconnect.

        Closing the socket only hands our last PUBACKs to the kernel. If the next session of
        this client id (a restart, a test) reaches the broker before it read them, the broker
        takes the session over and drops the old connection with them unread: every message
        they acknowledged is sent again (a CI run saw 198 committed messages come back). An
        UNSUBSCRIBE of a topic never subscribed is answered only after the broker read what
        came before it, so its UNSUBACK proves the PUBACKs arrived; it waits at most
        ``[mqtt] timeout``, and without it the socket is dropped at once. What is not done by
        then is held, as before: sent again next time.
        """
        connected = not self.lost.is_set() and self._client.is_connected
        if connected:
            self._flush()
        self._closing = True
        if connected and self._acks_written:
            try:
                await self._acks_read()
            except LinkError:
                if self.lost.is_set():
                    # No UNSUBACK in time: the broker is not reading. A DISCONNECT would wait
                    # behind what it has not read (confirms in flight) for a second timeout:
                    # 2 x 10 s is systemd's whole TimeoutStopSec.
                    self._abort_transport()
        await super().close()

    async def _acks_read(self) -> None:
        try:
            mid = self._client.unsubscribe(ACKS_READ_TOPIC)
        except OverflowError as exc:  # every packet id awaits a PUBACK: nothing to number it
            raise LinkError("no free packet id for the UNSUBSCRIBE") from exc
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unsubacks[int(mid)] = waiter
        try:
            await self._wait(waiter, "UNSUBACK")
        finally:
            self._unsubacks.pop(int(mid), None)

    def _unsubscribed(self, _client: Any, mid: int, _codes: Any) -> None:  # noqa: ANN401
        waiter = self._unsubacks.get(int(mid))
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _release(self) -> None:
        super()._release()
        self.unacknowledged -= len(self._held)
        self._held.clear()  # ends without a PUBACK


class Central:
    """One instance of the group: the MQTT session, the writer, the replay leader."""

    def __init__(self, settings: CentralSettings, *, rule: Rule | None = None) -> None:
        self.settings = settings
        self.rule = rule or load_rule(settings.confirm.rule)
        prefix = settings.central.topic_prefix
        self.validator = Validator(
            prefix=prefix,
            max_payload=settings.ingest.max_payload,
            keep_bytes=settings.ingest.quarantine_bytes,
        )
        group = settings.central.group
        self.subscriptions = (
            f"$share/{group}/{prefix}/+/+/events/#",
            f"$share/{group}/{prefix}/+/+/cmd/result",
            f"{prefix}/+/+/checkpoint",
        )
        self._queue: list[tuple[Item, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._link: CentralLink | None = None
        self.connected = asyncio.Event()
        self.totals: dict[str, int] = dict.fromkeys(
            ("stored", "duplicates", "conflicts", "quarantined", "batches", "confirms", "retries"),
            0,
        )
        self.pool: asyncpg.Pool | None = None
        self.replayer: Replayer | None = None
        self.metrics = CentralMetrics()
        self._confirming: set[asyncio.Task[None]] = set()

    # --- receiving ---------------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes, *, retained: bool = False) -> Awaitable[None]:  # noqa: ARG002
        """Classify and queue; the returned future is done once the batch holding it committed.

        ``retained`` (a checkpoint kept by the broker) is handled like any other message.
        """
        item = self._item(topic, payload)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._wake.set()
        return future

    def _item(self, topic: str, payload: bytes) -> Item:
        prefix = self.settings.central.topic_prefix + "/"
        parts = topic.split("/")
        if topic.startswith(prefix) and len(parts) in (4, 5) and parts[3] != "events":
            if len(payload) > MAX_CONTROL_PAYLOAD:
                return self.validator.quarantine(topic, payload, "control message too large")
            root = "/".join(parts[:3])
            try:
                body = json.loads(payload)
            except (ValueError, RecursionError):
                body = None
            if not isinstance(body, dict):
                return self.validator.quarantine(topic, payload, "not a JSON object")
            if parts[3:] == ["checkpoint"]:
                return Checkpoint(root, body)
            if parts[3:] == ["cmd", "result"]:
                return ReplayResult(root, body)
        return self.validator.check(topic, payload)

    # --- the writer ----------------------------------------------------------------------------

    async def _writer(self) -> None:
        """Commit what arrived while the last commit ran (natural batching), retrying forever."""
        assert self.pool is not None
        delay = 0.05
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = self._queue[: self.settings.ingest.batch_max]
            outcomes: list[BatchOutcome] | None = None
            try:
                async with self.pool.acquire() as conn:
                    began = time.perf_counter()
                    outcomes = await self._write(conn, [item for item, _ in batch])
                    self.metrics.commit_seconds.observe(time.perf_counter() - began)
                    # Before the connection goes back: the pool's reset of it is one more
                    # round trip, and the PUBACKs and confirms need not wait for it.
                    self._committed(batch, outcomes)
            except Exception as exc:  # each kind is told apart below
                if outcomes is not None:
                    # Committed; only handing the connection back to the pool failed (the
                    # database went away just after). Retrying would find every row there,
                    # count the batch as duplicates and hold its PUBACKs through the outage.
                    log.warning("connection_release_failed", error=str(exc)[:300] or repr(exc))
                else:
                    self._batch_failed(exc, len(batch), delay)
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
                    delay = min(self.settings.database.retry_max, delay * 2)
                    continue
            delay = 0.05

    def _committed(
        self, batch: list[tuple[Item, asyncio.Future[None]]], outcomes: list[BatchOutcome]
    ) -> None:
        """The batch is in the ledger: out of the queue, its PUBACKs released, confirms sent."""
        del self._queue[: len(batch)]
        for _, future in batch:
            if not future.done():
                future.set_result(None)
        for outcome in outcomes:
            self._count(outcome)
            if outcome.verdicts:
                # Not in the writer's way: the next batch commits while these PUBACKs travel.
                task = asyncio.create_task(self._confirm(outcome))
                self._confirming.add(task)
                task.add_done_callback(self._confirming.discard)

    def _batch_failed(self, exc: Exception, events: int, retry_s: float) -> None:
        """Count a batch that did not commit, and say why; nothing of it is acknowledged.

        A warning when the database is away (asyncpg's InternalClientError is a connection the
        outage left mid-operation); the whole traceback for anything else, a bug.
        """
        self.totals["retries"] += 1
        self.metrics.batch_failures.inc()
        if isinstance(exc, DATABASE_AWAY):
            log.warning("batch_failed", error=str(exc)[:300], events=events, retry_s=retry_s)
        else:
            log.error("batch_failed_unexpectedly", events=events, retry_s=retry_s, exc_info=exc)

    async def _write(self, conn: Any, items: list[Item]) -> list[BatchOutcome]:  # noqa: ANN401
        """One transaction; when PostgreSQL refuses an item's data, that item is quarantined.

        The rest is committed. A data exception (SQLSTATE class 22, and asyncpg's own for text
        it cannot encode) is the same every time for the same input: a NUL character, a JSON
        ``NaN``, a lone surrogate passed validation and made every retry of the batch fail, so
        nothing was acknowledged again and one gateway's bad event stopped the whole group.
        The batch is halved until the refused item is alone (log2 of the batch in extra
        transactions, for input that should never come); that item is quarantined with
        PostgreSQL's reason.
        """
        try:
            return [await write_batch(conn, items, self.rule)]
        except asyncpg.DataError as exc:
            if len(items) > 1:
                half = len(items) // 2
                return [
                    *await self._write(conn, items[:half]),
                    *await self._write(conn, items[half:]),
                ]
            topic, raw = _as_message(items[0])
            log.error("refused_by_postgresql", topic=topic[:200], error=str(exc)[:300])
            reason = _printable(f"refused by PostgreSQL: {exc}")
            refused = self.validator.quarantine(topic, raw, reason)
            return [await write_batch(conn, [refused], self.rule)]

    def _count(self, outcome: BatchOutcome) -> None:
        self.totals["batches"] += 1
        for key in ("stored", "duplicates", "conflicts", "quarantined"):
            self.totals[key] += getattr(outcome, key)
            self.metrics.events.labels(key).inc(getattr(outcome, key))
        if outcome.conflicts:
            log.error("conflicts_in_batch", count=outcome.conflicts)

    async def _confirm(self, outcome: BatchOutcome) -> None:
        """Verdicts of committed events, one JSON list per gateway and chunk."""
        link = self._link
        if not self.settings.confirm.enabled or link is None or not outcome.verdicts:
            return
        size = self.settings.confirm.batch_max
        # Sent without waiting for each PUBACK, within the broker's window: a batch from a
        # fleet holds verdicts for a hundred gateways, and awaiting each publish (four at a
        # time, the rest woken by every PUBACK) cost ~200 us of CPU per event (bench/
        # central_fleet.py). A confirm lost with the link is sent again when the gateway
        # redelivers the event or its checkpoint shows it unconfirmed.
        try:
            for root, verdicts in outcome.verdicts.items():
                for payload, count in confirm_payloads(verdicts, most=size):
                    await link.send_when_room(f"{root}/confirm", payload)
                    self.totals["confirms"] += count
                    self.metrics.confirms.inc(count)
        except LinkError as exc:
            log.warning("confirm_not_sent", error=str(exc)[:200])

    # --- lifecycle -----------------------------------------------------------------------------

    async def open_database(self) -> asyncpg.Pool:
        """Connect (retrying until PostgreSQL answers) and migrate."""
        delay = 0.1
        while True:
            try:
                pool = await asyncpg.create_pool(
                    self.settings.database.dsn,
                    password=self.settings.database_password(),
                    min_size=1,
                    max_size=self.settings.database.pool_size,
                    reset=_keep_session,
                )
                async with pool.acquire() as conn:
                    await migrate(conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("database_unavailable", error=str(exc)[:300], retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(self.settings.database.retry_max, delay * 2)
            else:
                return pool

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set."""
        with fewer_collections():
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        self.pool = await self.open_database()
        log.info("central_started", instance=self.settings.central.instance)
        if self.settings.metrics.listen:
            self.metrics.serve(self.settings.metrics.listen)
        try:
            async with asyncio.TaskGroup() as tasks:
                writer = tasks.create_task(self._writer())
                session = tasks.create_task(self._sessions(stop))
                if self.settings.replay.enabled:
                    self.replayer = Replayer(self.settings, self._publish, self.metrics)
                    replayer = tasks.create_task(self.replayer.run())
                await stop.wait()
                session.cancel()
                writer.cancel()
                if self.settings.replay.enabled:
                    replayer.cancel()
        finally:
            for task in self._confirming:
                task.cancel()
            await asyncio.gather(*self._confirming, return_exceptions=True)
            self.metrics.close()
            await self.pool.close()
            log.info("central_stopped", **self.totals)

    async def _publish(self, topic: str, body: bytes) -> bool:
        link = self._link
        if link is None:
            return False
        try:
            await link.publish(topic, body)
        except LinkError:
            return False
        return True

    async def _sessions(self, stop: asyncio.Event) -> None:
        delay = self.settings.mqtt.reconnect_min
        while not stop.is_set():
            link = CentralLink(self.settings, self.on_message)
            try:
                await link.connect()
                for topic in self.subscriptions:
                    await link.subscribe(topic)
                self._link = link
                self.connected.set()
                log.info("mqtt_connected", subscriptions=list(self.subscriptions))
                delay = self.settings.mqtt.reconnect_min
                await link.lost.wait()
                log.warning("mqtt_lost")
            except LinkError as exc:
                log.warning("mqtt_unavailable", error=str(exc)[:200], retry_s=delay)
            finally:
                self._link = None
                self.connected.clear()
                with contextlib.suppress(Exception):
                    await link.close()
            await asyncio.sleep(delay)
            delay = min(self.settings.mqtt.reconnect_max, delay * 2)
