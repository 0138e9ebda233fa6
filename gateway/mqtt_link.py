"""One MQTT connection, through gmqtt, with a PUBACK callback per message.

Why gmqtt: publishing is the hot path of the gateway, and the client's per-message cost decides
how fast a backlog drains. Measured here (QoS 1, 450-byte payloads, window 200, private
Mosquitto): aiomqtt ~15k msg/s (a task, a future and an Event per publish), paho driven directly
~30k msg/s, gmqtt ~105k msg/s at ~9 µs of CPU per message. gmqtt is asyncio-native and reads and
writes on the event loop with no thread.

What this module adds to gmqtt, and why:

- **A PUBACK per message.** The link writes PUBLISH and reads PUBACK itself, so it numbers its
  messages itself (:class:`_PacketIds`, which gmqtt also draws its SUBSCRIBE ids from) and
  turns each PUBACK into ``on_ack(mid)`` (or ``on_refused``): gmqtt's persistent storage stays
  empty, as it may, since gmqtt never resends here (below).
- **No reconnects of its own.** The buffer is the truth, not the client's queue: when the link
  drops, the publisher releases everything unacknowledged to pending and a *new* link sends it
  again. So gmqtt's own reconnect (which would replay its in-memory queue) is switched off and
  :attr:`MqttLink.lost` is set instead.
- **No acks after the end.** Once lost or closed, a link reports nothing more: a PUBACK gmqtt
  parses late would carry a mid that the next link is already reusing for another event.
- **Bounded waits.** CONNACK, SUBACK and awaited PUBACKs each have a timeout; gmqtt would wait
  forever on a blackholed broker.
- **A received message is acknowledged after its effect.** The link speaks MQTT 5 with
  ``optimistic_acknowledgement`` off (below v5 gmqtt always PUBACKs on arrival). ``on_message``
  may return an awaitable: gmqtt sends the PUBACK when our handler coroutine returns, and it
  returns once that awaitable is done (a confirm's verdicts committed). PUBACKs go out in the
  order the messages came (MQTT 5, 4.6). What is not done when the link ends is never
  acknowledged: the coroutine returns only after the transport is closed, so gmqtt's PUBACK
  write goes nowhere, and the broker sends the message again in the next session.
- **A session that persists, with a bounded window.** Clean start off and a session expiry
  interval (:data:`SESSION_EXPIRY_S`) keep our subscriptions and queued confirms across a
  reconnect or restart; Receive Maximum (:data:`RECEIVE_MAXIMUM`) caps how many unacknowledged
  messages the broker pushes at us. The broker's own Receive Maximum caps our publishes:
  :attr:`MqttLink.send_quota`.

asyncio sets TCP_NODELAY on every TCP transport, so a PUBLISH never waits behind Nagle's
algorithm for the broker's delayed ACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import gmqtt
import structlog
from gmqtt.mqtt.constants import MQTTv50

from gateway.mqtt_packets import MAX_PACKET_SIZE
from gateway.settings import MqttSection, secret_source

logging.getLogger("gmqtt").setLevel(logging.CRITICAL)
"""gmqtt logs every lost connection with a traceback on stdlib logging; we log the loss once,
in structured form, where the session ends."""

_NO_RECONNECT = -2
"""gmqtt reconnects while ``failed_connections <= reconnect_retries`` (``-1`` is unlimited):
below that, never. We reconnect ourselves, with jittered backoff and a fresh session."""

SESSION_EXPIRY_S = 7 * 24 * 3600
"""How long the broker keeps our session (subscriptions, queued confirms) while we are away.

MQTT 5 ends a session at disconnect unless this is > 0. A week covers a gateway switched off
over a long weekend or waiting for a spare part; beyond it, the confirms central sent meanwhile
are gone from the broker, and central re-confirms from the checkpoint's ``unconfirmed`` figures
(docs/confirmation.md). The broker may lower it (Mosquitto: ``persistent_client_expiration``).
"""

RECEIVE_MAXIMUM = 32
"""Received QoS 1 messages the broker may have outstanding (sent, not yet PUBACKed) with us.

A valid confirm or command is at most 64 KiB (gateway/commands.py), so at most ~2 MiB of valid
input waits for us; the broker holds the rest in its queue. Larger packets never reach us:
:data:`MAX_PACKET_SIZE`."""

SEND_RESERVE = 4
"""Packet ids left free, within the broker's Receive Maximum, for status, checkpoint and answers
while the event pump fills its window (:attr:`MqttLink.send_quota`)."""

AckFn = Callable[[int], None]
RefusedFn = Callable[[int, int], None]
"""(mid, reason code) of a message the broker refused in its PUBACK."""
MessageFn = Callable[..., Awaitable[Any] | None]
"""Handles one received message, called as ``(topic, payload)``, or ``(topic, payload,
retained=True)`` for a message the broker kept (retained) and sends because we subscribed. None:
acknowledge it (in order) now; an awaitable: acknowledge it once that is done without error, or
never (the broker sends it again next session)."""


def _log_handler_bug(event: str, topic: str) -> None:
    """A handler bug: logged with its traceback, never raised into gmqtt."""
    structlog.get_logger(__name__).exception(event, topic=topic[:200])


def log_refusal(reason: int) -> None:
    """A publish the broker refused, said where it is noticed (the caller decides what next)."""
    structlog.get_logger(__name__).warning("publish_refused_by_broker", reason_code=hex(reason))


async def _first(*aws: Awaitable[Any]) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


class _Lost(asyncio.Event):
    """The event :attr:`MqttLink.lost`, never cleared, with its state in a plain attribute.

    :attr:`fired` is read on the hot path (each send, each PUBACK) without a call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fired = False

    def set(self) -> None:
        self.fired = True
        super().set()

    def clear(self) -> None:
        raise RuntimeError("a lost link stays lost")


class LinkError(ConnectionError):
    """The broker could not be reached, refused us, or the connection went down."""


class PacketTooLargeError(LinkError):
    """One message is larger than the broker's Maximum Packet Size (its CONNACK), or MQTT's.

    It was not sent, and the link is fine. Sending it would make the broker drop the connection,
    again at every reconnect, so one oversized event would stop all delivery behind it.
    """


class RetainUnsupportedError(LinkError):
    """The broker refused the connection because it does not take retained messages (0x9A).

    Our will is retained, so such a broker refuses every CONNECT: the caller must connect again
    with ``retain=False`` (statuses then are plain messages), or nothing is ever delivered.
    """


RETAIN_NOT_SUPPORTED = 0x9A

PACKET_TOO_LARGE = 0x95
"""The MQTT 5 reason code for a message over the broker's Maximum Packet Size (we note it for
messages we did not send for that reason)."""

REFUSED = 0x80
"""PUBACK reason codes from here up mean the broker did not accept the message (MQTT 5
3.4.2.1: 0x87 not authorized, 0x95 packet too large, 0x97 quota exceeded...). gmqtt 0.8 does
not look at them, so :class:`MqttLink` reads them itself: such a PUBACK is no delivery."""


class _PacketIds:
    """The link's packet ids: ours for PUBLISH, and gmqtt's ``IdGenerator`` for the rest.

    Installed as the client's ``id_generator`` (gmqtt hands it to every connection's protocol),
    so SUBSCRIBE and UNSUBSCRIBE draw from the same ids as our PUBLISHes and none is in use
    twice (MQTT 5, 2.2.1). gmqtt's generator logged at debug level twice per message and kept
    the in-flight PUBLISHes in its persistent storage a second time; the link builds PUBLISH and
    reads PUBACK itself, so it keeps them here, once: :attr:`publishing`.

    Ids are handed out as gmqtt does: counting up, wrapping below ``_max`` (the broker's
    Receive Maximum, which gmqtt sets at CONNACK), skipping ids in use, at most ``_max - 1`` in
    use at once; so a freed id is reused as late as possible (a stray PUBACK for it is
    then ignored, not taken for the next message's).
    """

    __slots__ = ("_last", "_max", "others", "publishing")

    def __init__(self, maximum: int) -> None:
        self._max = maximum
        """gmqtt's name: its handler sets it from the CONNACK's Receive Maximum."""
        self._last = 0
        self.publishing: set[int] = set()
        """Ids of our PUBLISHes awaiting their PUBACK."""
        self.others: set[int] = set()
        """Ids gmqtt took (SUBSCRIBE, UNSUBSCRIBE) and frees itself."""

    def in_use(self) -> int:
        return len(self.publishing) + len(self.others)

    def take_publish(self) -> int:
        """A free id for one of our PUBLISHes; OverflowError if none is free."""
        publishing, others, top = self.publishing, self.others, self._max
        if len(publishing) + len(others) >= top - 1:
            raise OverflowError("every MQTT packet id is in use")
        mid = self._last + 1
        while mid >= top or mid in publishing or mid in others:
            mid = 1 if mid >= top else mid + 1
        self._last = mid
        publishing.add(mid)
        return mid

    def next_id(self) -> int:
        """An id for a packet gmqtt builds (its ``IdGenerator.next_id``), filed as gmqtt's."""
        mid = self.take_publish()
        self.publishing.remove(mid)
        self.others.add(mid)
        return mid

    def free_id(self, mid: int) -> None:
        """Free the id of a packet gmqtt built (``IdGenerator.free_id``, at SUBACK, UNSUBACK)."""
        self.others.discard(mid)


def _id_limit(client: gmqtt.Client) -> int:
    """Packet ids gmqtt can hand out at once: the broker's Receive Maximum - 1."""
    # gmqtt keeps the CONNACK's properties as lists; absent means 65535 (MQTT 5 3.2.2.3.3).
    values = client._package_handler._connack_properties.get("receive_maximum")  # noqa: SLF001
    broker = int(values[0]) if values else 65535
    return max(1, broker - 1)


def _max_packet_size(client: gmqtt.Client) -> int | None:
    values = client._package_handler._connack_properties.get("maximum_packet_size")  # noqa: SLF001
    return int(values[0]) if values else None


LARGEST_PACKET = 1 + 4 + 268_435_455
"""MQTT's largest packet: a Remaining Length has at most four bytes (1.5.5). Beyond it a PUBLISH
cannot be written (gmqtt's ``Message`` refused it): a five-byte length is malformed, and the
broker drops the connection."""


class _Wire:
    """What a connected gmqtt client writes PUBLISH packets with, and what it knows per session.

    The packet is the one gmqtt's ``PublishPacket.build_package`` builds for a QoS 1 message
    with no properties (tests/unit/gateway/test_mqtt_wire.py compares them byte for byte), in
    four parts: the fixed header, the topic (length-prefixed), the packet id with the empty
    property list, the payload. The parts that repeat are made once: a topic's part per topic,
    a fixed header per Remaining Length.
    """

    __slots__ = (
        "id_limit",
        "ids",
        "max_packet_size",
        "mid_shift",
        "mid_width",
        "packet_limit",
        "plain",
        "protocol",
        "retained",
        "topics",
        "transport",
    )

    def __init__(
        self,
        protocol: Any,  # noqa: ANN401
        ids: _PacketIds,
        id_limit: int,
        max_packet_size: int | None,
        transport: Any = None,  # noqa: ANN401
    ) -> None:
        self.protocol = protocol
        self.transport = transport
        """The connection's transport: :meth:`MqttLink.send` refuses to write once it closes."""
        self.ids = ids
        v5 = protocol.proto_ver == MQTTv50
        self.mid_width, self.mid_shift = (3, 8) if v5 else (2, 0)
        """The packet id's bytes, and in MQTT 5 an empty property list after it: ``mid << 8``
        written in three bytes gives both."""
        self.id_limit = id_limit
        self.max_packet_size = max_packet_size
        self.packet_limit = min(max_packet_size or LARGEST_PACKET, LARGEST_PACKET)
        """The largest PUBLISH we may write: the broker's Maximum Packet Size, or MQTT's own."""
        self.topics: dict[str, bytes] = {}
        """Topic -> its length-prefixed UTF-8 form, the part of a PUBLISH that repeats."""
        self.plain: dict[int, bytes] = {}
        self.retained: dict[int, bytes] = {}
        """Remaining Length -> the fixed header (a not retained, a retained QoS 1 PUBLISH)."""

    @classmethod
    def of(cls, client: gmqtt.Client, ids: _PacketIds) -> _Wire:
        connection = client._connection  # noqa: SLF001
        protocol = connection._protocol  # noqa: SLF001
        if protocol.id_generator is not ids:  # gmqtt must number its packets from ours
            raise LinkError("gmqtt's protocol does not use the link's packet ids")
        return cls(
            protocol,
            ids,
            _id_limit(client),
            _max_packet_size(client),
            connection._transport,  # noqa: SLF001
        )

    def topic_head(self, topic: str) -> bytes:
        encoded = topic.encode("utf-8", errors="replace")  # as gmqtt's Message does
        head = len(encoded).to_bytes(2, "big") + encoded
        if len(self.topics) < 10_000:  # a topic per device: bounded all the same
            self.topics[topic] = head
        return head

    def fixed_header(self, remaining: int, *, retain: bool) -> bytes:
        """A QoS 1 PUBLISH's fixed header for this Remaining Length (kept for the next one)."""
        known = self.retained if retain else self.plain
        header = known.get(remaining)
        if header is None:
            header = (_PUBLISH_QOS1_RETAIN if retain else _PUBLISH_QOS1) + _remaining_length(
                remaining
            )
            if len(known) < 10_000:  # a length per payload size: bounded all the same
                known[remaining] = header
        return header


_PUBLISH_QOS1 = b"\x32"
_PUBLISH_QOS1_RETAIN = b"\x33"


def _remaining_length(n: int) -> bytes:
    """MQTT's variable byte integer (1.5.5)."""
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def tls_context(mqtt: MqttSection) -> ssl.SSLContext | None:
    """The TLS context for ``[mqtt.tls]``, or None for plain TCP."""
    if mqtt.tls is None:
        return None
    tls = mqtt.tls
    # A systemd credential read from a shell (replay): its LoadCredential= source, as root.
    ca_file, cert_file, key_file = (
        None if path is None else str(secret_source(path)[0])
        for path in (tls.ca_file, tls.cert_file, tls.key_file)
    )
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file and key_file:
        context.load_cert_chain(cert_file, key_file)
    if tls.insecure:
        context.check_hostname = False  # the name only: the chain is still verified
    return context


class MqttLink:
    """One connection to the broker: QoS 1 publishes with per-message PUBACK, subscriptions.

    ``send`` is the hot path: it writes the PUBLISH and returns its mid at once; ``on_ack(mid)``
    is called from the event loop when the PUBACK arrives. ``publish`` awaits its own PUBACK,
    for the few messages (status, checkpoint, answers) that are not in the buffer.
    """

    def __init__(
        self,
        mqtt: MqttSection,
        client_id: str,
        *,
        on_ack: AckFn | None = None,
        on_refused: RefusedFn | None = None,
        on_message: MessageFn | None = None,
        will: tuple[str, bytes] | None = None,
        clean_session: bool = True,
        retain: bool = True,
    ) -> None:
        self._mqtt = mqtt
        self._on_ack = on_ack
        self._on_message = on_message
        self._waiters: dict[int, asyncio.Future[int | None]] = {}
        self._subacks: dict[int, asyncio.Future[None]] = {}
        self._next_free: asyncio.Future[None] | None = None
        """Resolved (and replaced at the next :meth:`arm_ids_freed`) when a PUBACK frees an id."""
        self._released: asyncio.Future[None] | None = None
        self._gates: set[asyncio.Future[None]] = set()
        """One per held message waiting for its effect or its predecessor; opened on release."""
        """Done once the transport is closed: held messages then end without a PUBACK."""
        self._ack_tail: asyncio.Future[None] | None = None
        self.unacknowledged = 0
        """Received messages whose PUBACK waits for their effect."""
        self.retain = retain
        """Whether retained publishes (and the will) are retained; off for a broker that
        cannot retain (:class:`RetainUnsupportedError`, or Retain Available 0 in its CONNACK)."""
        will_message = gmqtt.Message(will[0], will[1], qos=1, retain=retain) if will else None
        self._client = gmqtt.Client(
            client_id,
            clean_session=clean_session,
            optimistic_acknowledgement=False,
            will_message=will_message,
            receive_maximum=RECEIVE_MAXIMUM,
            maximum_packet_size=MAX_PACKET_SIZE,
            session_expiry_interval=0 if clean_session else SESSION_EXPIRY_S,
        )
        self._wire: _Wire | None = None
        """The connection's writing side, known once connected (:meth:`connect`)."""
        self._corked: list[bytes] | None = None
        """Packets gathered by :meth:`batch`, written when it ends."""
        self._on_refused = on_refused
        handler = self._client._package_handler  # noqa: SLF001
        self._ids = _PacketIds(handler.id_generator._max)  # noqa: SLF001
        handler.id_generator = self._ids  # before connect: each protocol takes the handler's
        handler._handle_puback_packet = self._puback  # noqa: SLF001
        self._client.reconnect_retries = _NO_RECONNECT
        self._client.on_message = self._received
        self._client.on_subscribe = self._subscribed
        self._client.on_disconnect = self._disconnected
        if mqtt.username:
            self._client.set_auth_credentials(mqtt.username, mqtt.password())
        self.lost = _Lost()
        """Set once the connection is gone; this link is then finished and reports no more acks."""

    async def connect(self) -> None:
        """Connect and wait for CONNACK; raises LinkError (timeout: ``publish_timeout``)."""
        try:
            async with asyncio.timeout(self._mqtt.publish_timeout):
                connecting = asyncio.ensure_future(
                    self._client.connect(
                        self._mqtt.host,
                        self._mqtt.port,
                        ssl=tls_context(self._mqtt) or False,
                        keepalive=self._mqtt.keepalive,
                        version=MQTTv50,
                    )
                )
                # A broker shutting down accepts TCP and drops it: gmqtt would then wait for a
                # CONNACK until the timeout. Lost means failed, at once.
                await _first(connecting, self.lost.wait())  # cancels the loser
                if not connecting.done() or connecting.cancelled():
                    raise LinkError("connection closed during connect")
                connecting.result()
        except TimeoutError as exc:
            await self.close()
            raise LinkError(f"no CONNACK within {self._mqtt.publish_timeout:g} s") from exc
        except gmqtt.MQTTConnectError as exc:
            await self.close()
            if getattr(exc, "_code", None) == RETAIN_NOT_SUPPORTED:
                raise RetainUnsupportedError(str(exc)) from exc
            raise LinkError(str(exc)) from exc
        except (OSError, ssl.SSLError) as exc:
            await self.close()
            raise LinkError(str(exc) or type(exc).__name__) from exc
        if not self._client.is_connected:
            await self.close()
            raise LinkError("connection closed during connect")
        available = self._client._package_handler._connack_properties.get("retain_available")  # noqa: SLF001
        if available and not available[0]:
            self.retain = False
        self._wire = _Wire.of(self._client, self._ids)

    def _id_limit(self) -> int:
        """Packet ids gmqtt can hand out at once: the broker's Receive Maximum - 1."""
        if self._wire is not None:
            return self._wire.id_limit
        return _id_limit(self._client)

    def _reserve(self) -> int:
        """Ids kept for status, checkpoint and answers.

        :data:`SEND_RESERVE`, or half of a small window (a broker's Receive Maximum may be 2).
        """
        return max(1, min(SEND_RESERVE, self._id_limit() // 2))

    def free_ids(self) -> int:
        """Packet ids gmqtt can still hand out now (each publish awaiting its PUBACK holds one)."""
        return self._id_limit() - self._ids.in_use()

    def arm_ids_freed(self) -> asyncio.Future[None]:
        """The future the next freed packet id resolves, for :meth:`ids_freed`.

        Taken in the same step as the check that found no id free, so a PUBACK read before the
        wait's own first step still counts. Waiting on a shared event that each waiter cleared
        as its wait began (a task's first step runs a loop turn after its creation) lost such a
        PUBACK, and a waiter could also clear one another waiter was about to see: it then
        slept until the next PUBACK, or its own timeout (the event pump's 1 s net, whenever a
        status or checkpoint took the last id: tests/integration/gateway/test_review_pump.py).
        """
        if self._next_free is None or self._next_free.done():
            self._next_free = asyncio.get_running_loop().create_future()
        return self._next_free

    async def ids_freed(self, armed: asyncio.Future[None] | None = None) -> None:
        """Return once a PUBACK frees a packet id (or the link is lost).

        Counted from ``armed`` (:meth:`arm_ids_freed`) when given, else from now.
        """
        freed = armed if armed is not None else self.arm_ids_freed()
        await _first(asyncio.shield(freed), self.lost.wait())

    @property
    def send_quota(self) -> int:
        """How many events may await their PUBACK at once: the broker's window minus a reserve.

        MQTT 5 lets the broker cap this with its Receive Maximum (Mosquitto: its
        ``max_inflight_messages``, 20 by default); gmqtt then refuses the next packet id. The
        event pump keeps within this; :meth:`publish` keeps within the reserve, so the two
        together never ask gmqtt for more ids than it has.
        """
        return max(1, self._id_limit() - self._reserve())

    @property
    def max_packet_size(self) -> int | None:
        """The broker's Maximum Packet Size from its CONNACK; None when it set none."""
        if self._wire is not None:
            return self._wire.max_packet_size
        return _max_packet_size(self._client)

    def _puback(self, _cmd: int, packet: bytes) -> None:
        """One PUBACK: free its packet id, then report it (gmqtt's handler, replaced).

        gmqtt 0.8's ``_handle_puback_packet`` freed the id and removed the message from its
        persistent storage, with debug log calls and indirections per PUBACK; the link keeps
        its in-flight ids itself (:class:`_PacketIds`) and handles the PUBACK in this one
        call. It also reads the reason code, which gmqtt ignores: 0x80 or more is a refusal,
        reported as one. Only for a message in flight: a stray PUBACK (a misbehaving broker)
        is ignored, so it cannot ack or refuse the next message that gets the same id.
        """
        mid = packet[0] << 8 | packet[1]
        try:
            self._ids.publishing.remove(mid)
        except KeyError:
            return
        freed = self._next_free
        if freed is not None:
            self._next_free = None  # the next arm_ids_freed makes a new one
            if not freed.done():
                freed.set_result(None)
        if self.lost.fired:
            # gmqtt's read loop may still parse PUBACKs buffered before the connection died,
            # after we have moved on. The next link numbers its messages from 1 again, so a
            # late ack would mark the wrong event sent (found by the broker-restart chaos
            # test). A finished link reports nothing: its unacknowledged events are resent.
            return
        refused = packet[2] if len(packet) > 2 and packet[2] >= REFUSED else None
        waiter = self._waiters.pop(mid, None) if self._waiters else None
        if waiter is not None:
            if refused is not None:
                log_refusal(refused)
            if not waiter.done():
                waiter.set_result(refused)
        elif refused is not None and self._on_refused is not None:
            self._on_refused(mid, refused)
        elif self._on_ack is not None:
            self._on_ack(mid)

    def send(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Write one QoS 1 PUBLISH and return its mid; its PUBACK comes to ``on_ack``.

        Builds the packet itself (:class:`_Wire`) rather than through ``gmqtt.Client.publish``,
        which made a ``Message``, parsed empty properties and logged at debug level for each:
        about half the CPU of a publish. Between :meth:`batch`'s start and end the packets'
        parts are gathered and written at once: one system call (and one copy) per claim
        instead of one per event.
        """
        wire, corked = self._wire, self._corked
        # The transport is asked once per batch: until the batch ends nothing is written to
        # it, and its loss reaches us only between two turns of the loop.
        if wire is None or self.lost.fired or (not corked and wire.transport.is_closing()):
            self.lost.set()
            raise LinkError("not connected")
        head = wire.topics.get(topic) or wire.topic_head(topic)
        # Fixed header (<= 5), topic (2 + its bytes), packet id (2), properties (>= 1): an upper
        # bound of the PUBLISH written (we set no properties).
        size = len(head) + len(payload)
        if size + 8 > wire.packet_limit:
            raise PacketTooLargeError(
                f"{len(payload)} bytes on {topic[:120]} exceed the broker's maximum packet"
                f" size of {wire.packet_limit} bytes"
            )
        try:
            mid = wire.ids.take_publish()
        except OverflowError as exc:  # every packet id in use: the broker stopped acking
            self.lost.set()
            raise LinkError("no free MQTT packet id") from exc
        size += wire.mid_width
        fixed = None if retain else wire.plain.get(size)
        if fixed is None:
            fixed = wire.fixed_header(size, retain=retain and self.retain)
        parts = (fixed, head, (mid << wire.mid_shift).to_bytes(wire.mid_width, "big"), payload)
        if corked is not None:
            corked += parts
        else:
            wire.protocol.write_data(b"".join(parts))
        return mid

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Gather what :meth:`send` writes meanwhile and write it in one go at the end.

        For a loop of sends with no await inside: nothing else can write in between, so the
        broker sees the same bytes in the same order, in one system call.
        """
        if self._corked is not None:  # already gathering: the outer batch writes
            yield
            return
        corked: list[bytes] = []
        self._corked = corked
        try:
            yield
        finally:
            self._corked = None
            if corked and self._wire is not None:
                self._wire.protocol.write_data(b"".join(corked))

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int | None:
        """QoS 1 publish that returns after its PUBACK; raises LinkError if none comes.

        Returns None when the broker took it, or the reason it refused it: a PUBACK reason code
        of 0x80 or more, or 0x95 when it is larger than the broker's Maximum Packet Size (then
        it was not sent).

        Waits (bounded by ``publish_timeout``) for one of the reserved packet ids (those the event
        pump leaves free, :meth:`_reserve`) rather than failing when all are in use.
        """
        if len(self._waiters) >= self._reserve() or self.free_ids() <= 0:
            try:
                async with asyncio.timeout(self._mqtt.publish_timeout):
                    while len(self._waiters) >= self._reserve() or self.free_ids() <= 0:
                        if self.lost.is_set():
                            raise LinkError("not connected")
                        await self.ids_freed()  # armed in this step, with the check
            except TimeoutError as exc:
                raise LinkError("no free packet id within publish_timeout") from exc
        try:
            mid = self.send(topic, payload, retain=retain)
        except PacketTooLargeError:
            return PACKET_TOO_LARGE
        waiter: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._waiters[mid] = waiter
        await self._wait(waiter, "PUBACK")
        return waiter.result()

    async def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK."""
        if self.lost.is_set():
            raise LinkError("not connected")
        # Retain Handling 1: retained messages only for a new subscription, not again each
        # time our persistent session resubscribes (issue 18, finding 3).
        mid = self._client.subscribe(topic, qos=1, retain_handling_options=1)
        waiter = asyncio.get_running_loop().create_future()
        self._subacks[int(mid)] = waiter
        await self._wait(waiter, "SUBACK")

    async def _wait(self, waiter: asyncio.Future[Any], what: str) -> None:
        lost: asyncio.Future[Any] = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, lost},
                timeout=self._mqtt.publish_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            lost.cancel()
        if waiter not in done or waiter.cancelled():
            waiter.cancel()
            was_lost = self.lost.is_set()
            # No answer within publish_timeout is what a dead link looks like, whoever asked:
            # the link is finished, so the session ends at once (a status or checkpoint holding
            # the only packet id of a small broker window must not hide it from the watcher).
            self.lost.set()
            raise LinkError(f"no {what}" + (": connection lost" if was_lost else ""))

    async def close(self) -> None:
        """Disconnect cleanly (the broker then discards the will) and stop for good.

        Received messages still held (their effect not done) end without a PUBACK, only now
        that the transport is closed: the broker sends them again in the next session.
        """
        self.lost.set()
        # Closing a broken link can fail in many ways; it is closed either way. Bounded: to a
        # peer that stopped reading (a hung broker, a blackholed path), gmqtt's disconnect
        # waits for its write buffer to drain, for ever; then the socket is aborted, so the
        # publisher settles (releases what is in flight) and connects again.
        try:
            async with asyncio.timeout(self._mqtt.publish_timeout):
                with contextlib.suppress(Exception):
                    await self._client.disconnect()
        except TimeoutError:
            self._abort_transport()
        self._fail_waiters()
        self._release()

    def _release(self) -> None:
        if self._released is None:
            self._released = asyncio.get_running_loop().create_future()
        if not self._released.done():
            self._released.set_result(None)
        for gate in self._gates:
            if not gate.done():
                gate.set_result(None)

    def _abort_transport(self) -> bool:
        """Close the socket at once (no further bytes go out); False if gmqtt has no transport."""
        transport = getattr(getattr(self._client, "_connection", None), "_transport", None)
        if transport is None:
            return False
        self.lost.set()
        transport.abort()
        return True

    # --- gmqtt callbacks ---------------------------------------------------------------------

    def _subscribed(self, _client: Any, mid: int, _qos: Any, _properties: Any) -> None:  # noqa: ANN401
        waiter = self._subacks.pop(int(mid), None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _received(
        self,
        _client: Any,  # noqa: ANN401
        topic: str,
        payload: bytes,
        _qos: int,
        properties: Any,  # noqa: ANN401
    ) -> int:
        """Handle one message; gmqtt runs this as a task and PUBACKs (QoS 1) when it returns.

        gmqtt's done-callback calls ``result()``: an exception or a cancellation here would be
        an "Exception in callback" from the event loop, so this never raises. It returns when
        the message's effect is done and every earlier message's PUBACK went out (MQTT 5 4.6:
        PUBACKs in order), or when the link is released (transport closed: the PUBACK gmqtt
        then writes goes nowhere). Cancelled (the loop shutting down under us), it aborts the
        transport first so that nothing unfinished is acknowledged.
        """
        loop = asyncio.get_running_loop()
        if self._released is None:
            self._released = loop.create_future()
        released = self._released
        previous, mine = self._ack_tail, loop.create_future()
        self._ack_tail = mine
        self.unacknowledged += 1
        try:
            retained = isinstance(properties, dict) and bool(properties.get("retain"))
            effect = self._start_effect(topic, bytes(payload), retained=retained)
            if effect is not None:
                await self._either(effect, released)
                if not effect.done() or effect.cancelled() or effect.exception() is not None:
                    await released  # not applied: never acknowledged, sent again next session
            if previous is not None and not previous.done():
                await self._either(previous, released)
        except asyncio.CancelledError:
            if not released.done() and not self._abort_transport():
                raise  # cannot make sure no PUBACK goes out: let gmqtt see the cancellation
        finally:
            self.unacknowledged -= 1
            mine.set_result(None)
            if self._ack_tail is mine:
                self._ack_tail = None
        return 0  # PUBACK reason code: success

    async def _either(self, future: asyncio.Future[Any], released: asyncio.Future[None]) -> None:
        """Wait until ``future`` is done or the link released, at O(1) cost per message.

        ``asyncio.wait({future, released})`` adds and removes a callback on the one shared
        ``released`` future per held message: O(held) per removal, quadratic over a window (the
        central ingest holds a thousand messages per commit; 1.4 s of CPU per 10k messages).
        """
        if future.done() or released.done():
            return
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def open_gate(_: object) -> None:
            if not gate.done():
                gate.set_result(None)

        future.add_done_callback(open_gate)
        self._gates.add(gate)
        try:
            await gate
        finally:
            self._gates.discard(gate)
            future.remove_done_callback(open_gate)

    def _start_effect(
        self, topic: str, payload: bytes, *, retained: bool
    ) -> asyncio.Future[Any] | None:
        if self._on_message is None:
            return None
        try:
            if retained:
                effect = self._on_message(topic, payload, retained=True)
            else:
                effect = self._on_message(topic, payload)
        except Exception:
            _log_handler_bug("message_handler_failed", topic)
            return None
        return None if effect is None else asyncio.ensure_future(effect)

    def _disconnected(self, _client: Any, _packet: Any, _exc: Any = None) -> None:  # noqa: ANN401
        self.lost.set()
        self._fail_waiters()
        self._release()  # gmqtt calls this from connection_lost: the transport is closed

    def _fail_waiters(self) -> None:
        waiters: list[asyncio.Future[Any]] = [*self._waiters.values(), *self._subacks.values()]
        for waiter in waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()
        self._subacks.clear()
