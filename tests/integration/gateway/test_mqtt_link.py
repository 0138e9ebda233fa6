"""gateway/mqtt_link.py against a real Mosquitto: one PUBACK callback per mid, bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import pytest

from gateway.mqtt_link import LinkError, MqttLink
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker, free_port
from tests.support import wait_until


def section(port: int, **overrides: float) -> MqttSection:
    return MqttSection(host="127.0.0.1", port=port, **overrides)


@pytest.fixture
async def subscriber(broker: MosquittoBroker) -> AsyncIterator[list[bytes]]:
    """Payloads received on ``link/#``, in arrival order."""
    received: list[bytes] = []
    ready = asyncio.Event()

    async def listen() -> None:
        async with aiomqtt.Client(broker.host, broker.port, identifier="link-test-sub") as client:
            await client.subscribe("link/#", qos=1)
            ready.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                received.append(message.payload)

    task = asyncio.create_task(listen())
    async with asyncio.timeout(10):
        await ready.wait()
    yield received
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_every_send_gets_exactly_one_ack_for_its_own_mid(
    broker: MosquittoBroker, subscriber: list[bytes]
) -> None:
    """2000 sends in full windows: each mid acked once, every message arrives, in order.

    MQTT 5: the broker's Receive Maximum (here 100) bounds what may await a PUBACK, so the
    sender keeps within ``send_quota``, as the publisher's pump does."""
    acked: list[int] = []
    link = MqttLink(section(broker.port), "link-test", on_ack=acked.append)
    await link.connect()
    try:
        assert 1 <= link.send_quota < 100
        sent: list[int] = []
        for n in range(2000):
            if len(sent) - len(acked) >= link.send_quota:
                await wait_until(lambda: len(sent) - len(acked) < link.send_quota, timeout=10)
            sent.append(link.send(f"link/{n % 3}", f"m{n}".encode()))
        await wait_until(lambda: len(acked) >= 2000, timeout=10)
    finally:
        await link.close()
    assert len(sent) == 2000
    assert sorted(acked) == sorted(sent)
    await wait_until(lambda: len(subscriber) >= 2000, timeout=10)
    assert subscriber == [f"m{n}".encode() for n in range(2000)]


async def test_publish_returns_after_puback_and_fails_once_the_broker_is_gone(
    broker: MosquittoBroker, subscriber: list[bytes]
) -> None:
    link = MqttLink(section(broker.port, publish_timeout=2.0), "link-test")
    await link.connect()
    try:
        await link.publish("link/status", b"online", retain=True)
        await wait_until(lambda: b"online" in subscriber, timeout=5)
        broker.stop()
        async with asyncio.timeout(5):
            await link.lost.wait()
        with pytest.raises(LinkError):
            await link.publish("link/status", b"again")
        with pytest.raises(LinkError):
            link.send("link/x", b"x")
    finally:
        await link.close()


async def test_connecting_to_nothing_is_a_prompt_link_error() -> None:
    link = MqttLink(section(free_port()), "link-test")
    async with asyncio.timeout(5):
        with pytest.raises(LinkError):
            await link.connect()


async def test_a_server_that_never_sends_connack_times_out() -> None:
    """A blackholed broker accepts TCP and says nothing; gmqtt alone would wait forever."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        link = MqttLink(section(port, publish_timeout=0.5), "link-test")
        async with asyncio.timeout(5):
            with pytest.raises(LinkError, match="CONNACK"):
                await link.connect()
        assert accepted, "the connection was made; only the CONNACK was missing"
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_finished_link_reports_no_late_acks(broker: MosquittoBroker) -> None:
    """gmqtt may still parse PUBACKs buffered before a connection died; the next link numbers
    its messages from 1 again, so a late ack handed on would mark the wrong event sent."""
    acked: list[int] = []
    link = MqttLink(section(broker.port), "link-test", on_ack=acked.append)
    await link.connect()
    broker.stop()  # nothing gets acknowledged from here on
    mid = link.send("link/x", b"unacked")
    await link.close()
    link._puback(0x40, mid.to_bytes(2, "big"))  # what gmqtt's read loop gives a late PUBACK
    assert acked == []


async def _publish_one(broker: MosquittoBroker, topic: str, payload: bytes) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier="link-test-pub") as client:
        await client.publish(topic, payload, qos=1)


async def test_a_received_message_is_acknowledged_only_when_its_effect_is_done(
    broker: MosquittoBroker,
) -> None:
    """MQTT 5, no optimistic acks: a message whose effect never finished in one session (held
    future) comes again in the next, since it was never PUBACKed; once its effect is done it is
    acknowledged and does not come back. Subscriptions survive (persistent session)."""
    held: list[bytes] = []

    def hold(_topic: str, payload: bytes) -> asyncio.Future[None]:
        held.append(payload)
        return asyncio.get_running_loop().create_future()  # never done in this session

    link = MqttLink(section(broker.port), "link-recv", on_message=hold, clean_session=False)
    await link.connect()
    await link.subscribe("link/in")
    await _publish_one(broker, "link/in", b"verdict")
    await wait_until(lambda: held == [b"verdict"], timeout=5)
    assert link.unacknowledged == 1
    await link.close()
    # Released without a PUBACK (the transport is closed), and without raising into gmqtt.
    await wait_until(lambda: link.unacknowledged == 0, timeout=2)

    done: list[bytes] = []

    def apply(_topic: str, payload: bytes) -> asyncio.Future[None]:
        done.append(payload)
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    link = MqttLink(section(broker.port), "link-recv", on_message=apply, clean_session=False)
    await link.connect()  # no subscribe: the session kept it
    try:
        await wait_until(lambda: done == [b"verdict"], timeout=5)
        await wait_until(lambda: link.unacknowledged == 0, timeout=5)
    finally:
        await link.close()

    again: list[bytes] = []
    link = MqttLink(
        section(broker.port), "link-recv", on_message=lambda _t, p: again.append(p)
    )  # clean start: the session (and its subscription) ends here
    await link.connect()
    await asyncio.sleep(0.5)
    await link.close()
    assert again == [], "acknowledged in the second session, so not sent a third time"


async def test_acks_go_out_in_arrival_order_and_a_failed_effect_is_never_acked(
    broker: MosquittoBroker,
) -> None:
    """A message done early waits for an earlier one (PUBACKs in order, MQTT 5 4.6); an
    effect that raises is not acknowledged (it comes again next session)."""
    futures: dict[bytes, asyncio.Future[None]] = {}

    def keep(_topic: str, payload: bytes) -> asyncio.Future[None]:
        futures[payload] = asyncio.get_running_loop().create_future()
        return futures[payload]

    link = MqttLink(section(broker.port), "link-order", on_message=keep, clean_session=False)
    await link.connect()
    await link.subscribe("link/in")
    for payload in (b"first", b"second"):
        await _publish_one(broker, "link/in", payload)
    await wait_until(lambda: len(futures) == 2, timeout=5)
    futures[b"second"].set_result(None)
    await asyncio.sleep(0.2)
    assert link.unacknowledged == 2, "second waits for first"
    futures[b"first"].set_exception(RuntimeError("could not apply"))
    await asyncio.sleep(0.2)
    assert link.unacknowledged == 2, "a failed effect holds its PUBACK (and those after it)"
    await link.close()

    seen: list[bytes] = []
    link = MqttLink(
        section(broker.port),
        "link-order",
        on_message=lambda _t, p: seen.append(p),
        clean_session=False,
    )
    await link.connect()
    try:
        await wait_until(lambda: seen == [b"first", b"second"], timeout=5)
    finally:
        await link.close()


def test_the_gmqtt_internals_we_lean_on_are_still_there() -> None:
    """Contract with gmqtt 0.8: fails loudly on the upgrade that moves what the link uses.

    ``optimistic_acknowledgement`` is honoured from MQTT 5 on; a coroutine ``on_message`` gets
    its PUBACK from a done-callback on its task; the CONNACK's properties and the transport are
    where :attr:`MqttLink.send_quota` and the cancellation path look for them.
    """
    import inspect  # noqa: PLC0415

    import gmqtt  # noqa: PLC0415
    from gmqtt.mqtt import handler, utils  # noqa: PLC0415

    assert "optimistic_acknowledgement" in inspect.signature(gmqtt.Client).parameters
    source = inspect.getsource(handler.MqttPackageHandler._handle_qos_1_publish_packet)
    assert "callback=partial(self.__handle_publish_callback" in source
    assert "add_done_callback(callback)" in inspect.getsource(utils.run_coroutine_or_function)
    client = gmqtt.Client("contract")
    assert isinstance(client._package_handler._connack_properties, dict)
    assert hasattr(client, "_connection")
    assert "self._transport" in inspect.getsource(gmqtt.mqtt.connection.MQTTConnection.__init__)


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What reaches the event loop's exception handler ("Exception in callback" and the like)."""
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    loop.set_exception_handler(previous)


def _message_tasks() -> list[asyncio.Task[Any]]:
    """gmqtt's task for each received message (our handler coroutine)."""
    return [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") == "MqttLink._received"
    ]


async def _redelivered(broker: MosquittoBroker, client_id: str) -> list[bytes]:
    seen: list[bytes] = []
    link = MqttLink(
        section(broker.port),
        client_id,
        on_message=lambda _t, p: seen.append(p),
        clean_session=False,
    )
    await link.connect()
    try:
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: bool(seen), timeout=3)
    finally:
        await link.close()
    return seen


async def test_a_cancelled_message_task_is_neither_acked_nor_noisy(
    broker: MosquittoBroker, loop_errors: list[dict[str, Any]]
) -> None:
    """If gmqtt's task for a held message is cancelled (the loop shutting down under us), the
    link aborts its socket first: no PUBACK leaves, nothing raises into gmqtt's callback."""

    def hold(_topic: str, _payload: bytes) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    link = MqttLink(section(broker.port), "link-cancel", on_message=hold, clean_session=False)
    await link.connect()
    await link.subscribe("link/in")
    await _publish_one(broker, "link/in", b"held")
    await wait_until(lambda: link.unacknowledged == 1, timeout=5)
    (task,) = _message_tasks()
    task.cancel()
    await wait_until(lambda: link.unacknowledged == 0, timeout=2)
    assert link.lost.is_set()
    await link.close()
    await asyncio.sleep(0.1)  # gmqtt's done-callback has run by now
    assert loop_errors == []
    assert await _redelivered(broker, "link-cancel") == [b"held"]


async def test_a_held_message_when_the_broker_goes_away_is_neither_acked_nor_noisy(
    broker: MosquittoBroker, loop_errors: list[dict[str, Any]]
) -> None:
    """The connection drops while a message is held: the link releases it (gmqtt's PUBACK
    write meets a closed socket), with no error on the loop; it comes again next session."""

    def hold(_topic: str, _payload: bytes) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    link = MqttLink(section(broker.port), "link-gone", on_message=hold, clean_session=False)
    await link.connect()
    await link.subscribe("link/in")
    await _publish_one(broker, "link/in", b"held")
    await wait_until(lambda: link.unacknowledged == 1, timeout=5)
    broker.stop()  # graceful: Mosquitto saves its sessions and queues
    async with asyncio.timeout(5):
        await link.lost.wait()
    await wait_until(lambda: link.unacknowledged == 0, timeout=2)
    await link.close()
    await asyncio.sleep(0.1)
    assert loop_errors == []
    broker.start()
    assert await _redelivered(broker, "link-gone") == [b"held"]


async def test_a_server_that_drops_the_connection_fails_connect_at_once() -> None:
    """A broker going down (SIGTERM) accepts TCP and closes it: connect fails then, not after
    ``publish_timeout`` (issue 15: the gateway idled 5 s or more after a restart for nothing)."""
    accepted: list[int] = []

    async def dropping(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(dropping, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        link = MqttLink(section(port, publish_timeout=30.0), "link-test")
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(10):
            with pytest.raises(LinkError):
                await link.connect()
        assert loop.time() - started < 2.0
        assert accepted, "the TCP connection was accepted, then dropped"
    finally:
        server.close()
        await server.wait_closed()
