"""The publisher's session against a real Mosquitto: device statuses kept retained, messages
handed on with their retained flag, and new settings applied (issue 19, mutation run)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from structlog.testing import capture_logs

from buffer.store import Buffer, NewEvent
from gateway import __version__, publisher
from gateway.publisher import Publisher
from gateway.settings import MqttSection
from gateway.topics import Topics
from simulators.broker import MosquittoBroker
from tests.chaos.faultproxy import FaultProxy
from tests.support import running_publisher

TOPICS = Topics("edge/site-test/gw-session")


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[Buffer]:
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**8)
    yield buf
    await buf.close()


async def retained(broker: MosquittoBroker, topic: str) -> Any:
    """The retained message on ``topic`` now (None if there is none within 0.5 s)."""
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(topic, qos=1)
        try:
            async with asyncio.timeout(0.5):
                async for message in client.messages:
                    return json.loads(bytes(message.payload))  # type: ignore[arg-type]
        except TimeoutError:
            return None
    return None


@contextlib.asynccontextmanager
async def statuses_seen(broker: MosquittoBroker) -> AsyncIterator[list[tuple[str, Any]]]:
    """Every device status published from now on (not those already retained), in order."""
    seen: list[tuple[str, Any]] = []
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(TOPICS.device_status("+"), qos=1)

        async def watch() -> None:
            async for message in client.messages:
                if not message.retain:
                    body = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                    seen.append((str(message.topic), body))

        watching = asyncio.create_task(watch())
        try:
            yield seen
        finally:
            watching.cancel()


async def until_retained(broker: MosquittoBroker, topic: str, expected: object) -> None:
    async with asyncio.timeout(5):
        while (got := await retained(broker, topic)) != expected:
            del got
            await asyncio.sleep(0.02)


async def test_device_statuses_are_retained_before_and_during_a_session(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """A status set before the connect is published with the session; one set during it is
    published at once; the retained message always ends as the device's latest state."""
    mqtt = MqttSection(host=broker.host, port=broker.port)
    async with running_publisher(
        mqtt,
        buffer,
        TOPICS,
        client_id="gw-devices",
        before_run=lambda pub: pub.device_status("dock-1", {"state": "up", "n": 1}),
    ) as pub:
        assert await retained(broker, TOPICS.device_status("dock-1")) == {"state": "up", "n": 1}
        pub.device_status("dock-2", {"state": "down"})
        pub.device_status("dock-1", {"state": "down", "n": 2})
        await until_retained(broker, TOPICS.device_status("dock-2"), {"state": "down"})
        await until_retained(broker, TOPICS.device_status("dock-1"), {"state": "down", "n": 2})


async def test_messages_are_handed_on_with_their_retained_flag(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """A message the broker kept (retained) is handed on as such, so a command in it is not
    run; one published while we listen is handed on as live."""
    topic = TOPICS.cmd_replay
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(topic, b"kept", qos=1, retain=True)
    seen: list[tuple[str, bytes, bool]] = []
    arrived = asyncio.Event()

    def on_message(topic: str, payload: bytes, *, retained: bool = False) -> None:
        seen.append((topic, payload, retained))
        arrived.set()

    mqtt = MqttSection(host=broker.host, port=broker.port)
    try:
        async with running_publisher(
            mqtt,
            buffer,
            TOPICS,
            client_id="gw-handed-on",
            on_message=on_message,
            subscriptions=[topic],
            connect=False,  # the kept message's arrival is waited for instead
        ):
            async with asyncio.timeout(10):
                await arrived.wait()
            arrived.clear()
            async with aiomqtt.Client(broker.host, broker.port) as client:
                await client.publish(topic, b"live", qos=1)
            async with asyncio.timeout(5):
                await arrived.wait()
            assert seen == [(topic, b"kept", True), (topic, b"live", False)]
    finally:
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.publish(topic, b"", qos=1, retain=True)  # cleared


async def test_new_session_settings_reconnect_and_others_do_not(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """The same settings, or a pacing one (``replay_rate``), keep the session; a session
    setting (``keepalive``) ends it cleanly and connects again at once with the new one."""
    links: list[bool] = []
    mqtt = MqttSection(host=broker.host, port=broker.port, keepalive=30)
    async with running_publisher(
        mqtt,
        buffer,
        TOPICS,
        client_id="gw-reload",
        on_link=lambda up, _since: links.append(up),
    ) as pub:
        pub.reconfigure(mqtt.model_copy())
        pub.reconfigure(mqtt.model_copy(update={"replay_rate": mqtt.replay_rate / 2}))
        await asyncio.sleep(0.2)
        assert links == [True], "no new session"
        pub.reconfigure(mqtt.model_copy(update={"keepalive": 20}))
        async with asyncio.timeout(5):
            while links != [True, False, True]:
                await asyncio.sleep(0.02)
        assert pub.reconnects == 0, "a clean end, not a lost link"
    assert links == [True, False, True, False]


async def test_online_status_checkpoint_and_publish_latencies(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """The retained online status says since when (the time the link callback is told too);
    the checkpoint goes out only while connected; each PUBACKed event adds one latency, from
    its commit, to the publish metrics."""
    links: list[tuple[bool, str]] = []
    mqtt = MqttSection(host=broker.host, port=broker.port)

    async def not_connected_yet(pub: Publisher) -> None:
        assert not await pub.publish_checkpoint({"n": 0}), "not connected yet"

    async with running_publisher(
        mqtt,
        buffer,
        TOPICS,
        client_id="gw-online",
        on_link=lambda up, since: links.append((up, since)),
        before_run=not_connected_yet,
    ) as pub:
        status = await retained(broker, TOPICS.status)
        assert status["state"] == "online" and isinstance(status["since"], str)
        assert status["version"] == __version__, "central tells the fleet's versions apart"
        assert links == [(True, status["since"])]
        assert await pub.publish_checkpoint({"n": 1})
        assert await retained(broker, TOPICS.checkpoint) == {"n": 1}
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.subscribe(TOPICS.events("dock-1"), qos=1)
            for batch in range(2):
                for n in range(3):
                    await buffer.append(scan(f"e{batch}-{n}"))
                async with asyncio.timeout(5):
                    while pub.publish_latencies_total < 3 * (batch + 1):
                        await asyncio.sleep(0.01)
            got = []
            async with asyncio.timeout(5):
                async for message in client.messages:
                    got.append(json.loads(bytes(message.payload))["id"])  # type: ignore[arg-type]
                    if len(got) == 6:
                        break
        assert sorted(got) == [f"e{b}-{n}" for b in range(2) for n in range(3)], "device topic"
        assert pub.publish_latencies_total == 6
        assert len(pub.publish_latencies) == 6
        assert all(0 <= latency < 5 for latency in pub.publish_latencies)
    assert not await pub.publish_checkpoint({"n": 2}), "stopped"
    # The link's end is told too, with the time it went down (``status`` shows it as since).
    assert [up for up, _ in links] == [True, False]
    down_since = links[1][1]
    assert isinstance(down_since, str) and down_since >= status["since"], links
    offline = await retained(broker, TOPICS.status)
    assert offline["state"] == "offline" and offline["since"] > status["since"], "since the stop"
    assert await retained(broker, TOPICS.checkpoint) == {"n": 1}


def scan(event_id: str) -> NewEvent:
    def render(seq: int) -> bytes:
        return json.dumps({"id": event_id, "seq": seq}).encode()

    return NewEvent(event_id, "dock-1", "t", "warehouse.barcode.scanned.v1", False, render)


async def test_sessions_dropped_right_after_connack_are_reported_once_per_streak(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """Another client taking our client id drops each session right after CONNACK: the third
    such drop in a row is reported once, with the client id; further drops are not."""
    mqtt = MqttSection(host=broker.host, port=broker.port, reconnect_min=0.01, reconnect_max=0.02)
    async with running_publisher(mqtt, buffer, TOPICS, client_id="gw-twice", connect=False) as pub:
        with capture_logs() as logs:
            for kick in range(5):
                async with asyncio.timeout(10):
                    while not pub.connected.is_set() or pub.reconnects < kick:
                        await asyncio.sleep(0.01)
                async with aiomqtt.Client(broker.host, broker.port, identifier="gw-twice"):
                    pass  # connecting with our id ends our session
            async with asyncio.timeout(10):
                while pub.reconnects < 5:
                    await asyncio.sleep(0.01)
        warnings = [e for e in logs if e["event"] == "mqtt_client_id_in_use_elsewhere"]
        assert [(e["client_id"], e["drops"]) for e in warnings] == [("gw-twice", 3)]


async def test_a_session_that_lasted_ends_the_streak(
    buffer: Buffer, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two quick drops, then a session that lasted: the streak starts again from zero, so the
    report comes only after three more quick drops."""
    monkeypatch.setattr(publisher, "QUICK_DROP_S", 0.3)
    mqtt = MqttSection(host=broker.host, port=broker.port, reconnect_min=0.01, reconnect_max=0.02)
    async with running_publisher(mqtt, buffer, TOPICS, client_id="gw-streak", connect=False) as pub:

        async def kick(*, after: float = 0.0) -> None:
            drops = pub.reconnects
            async with asyncio.timeout(10):
                while not pub.connected.is_set():
                    await asyncio.sleep(0.01)
            await asyncio.sleep(after)
            async with aiomqtt.Client(broker.host, broker.port, identifier="gw-streak"):
                pass
            async with asyncio.timeout(10):
                while pub.reconnects == drops:
                    await asyncio.sleep(0.01)

        with capture_logs() as logs:
            await kick()
            await kick()
            await kick(after=0.4)  # lasted: the streak ends
            await kick()
            await kick()
            assert not [e for e in logs if e["event"] == "mqtt_client_id_in_use_elsewhere"]
            await kick()
        warnings = [e for e in logs if e["event"] == "mqtt_client_id_in_use_elsewhere"]
        assert [e["drops"] for e in warnings] == [3]


async def test_publish_latencies_keep_the_newest_ten_thousand_at_most(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """The latency samples for metrics are bounded: up to 10 000 are kept; past that the
    oldest 5 000 go (the total keeps counting every PUBACK)."""
    mqtt = MqttSection(host=broker.host, port=broker.port)
    async with running_publisher(mqtt, buffer, TOPICS, client_id="gw-latencies") as pub:
        await asyncio.gather(*(buffer.append(scan(f"l{n}")) for n in range(10_000)))
        async with asyncio.timeout(60):
            while pub.publish_latencies_total < 10_000:
                await asyncio.sleep(0.05)
        assert len(pub.publish_latencies) == 10_000, "at the bound: all kept"
        newest = pub.publish_latencies[-1]
        await buffer.append(scan("one-more"))
        async with asyncio.timeout(10):
            while pub.publish_latencies_total < 10_001:
                await asyncio.sleep(0.01)
        assert len(pub.publish_latencies) == 5_001, "over it: the oldest 5 000 dropped"
        assert pub.publish_latencies[-2] == newest


async def test_an_outage_is_announced_down_once_however_many_attempts_fail(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """The broker goes away and every reconnect fails: the link is told down once, with the
    time it went down, not again (with a later time) at each failed attempt."""
    links: list[tuple[bool, str]] = []
    mqtt = MqttSection(host=broker.host, port=broker.port, reconnect_min=0.05, reconnect_max=0.1)
    try:
        async with running_publisher(
            mqtt,
            buffer,
            TOPICS,
            client_id="gw-outage",
            on_link=lambda up, since: links.append((up, since)),
        ) as pub:
            broker.stop()
            async with asyncio.timeout(10):
                while pub.reconnects < 4:  # the session's loss, then failed attempts
                    await asyncio.sleep(0.02)
            assert [up for up, _ in links] == [True, False], links
    finally:
        broker.start()
    assert [up for up, _ in links] == [True, False], "stopping while down says nothing more"


async def test_a_lost_session_counts_one_reconnect(buffer: Buffer, broker: MosquittoBroker) -> None:
    """The connection is reset once and the next attempt succeeds: ``reconnects`` (the
    metric an operator alerts on) is exactly one."""
    async with FaultProxy(broker.host, broker.port) as proxy:
        mqtt = MqttSection(host=proxy.host, port=proxy.port, reconnect_min=0.05, reconnect_max=0.1)
        async with running_publisher(mqtt, buffer, TOPICS, client_id="gw-once") as pub:
            proxy.cut()
            async with asyncio.timeout(10):
                while pub.connected.is_set():
                    await asyncio.sleep(0.01)
                await pub.connected.wait()
            assert pub.reconnects == 1


async def test_a_session_start_publishes_each_device_status_once(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """Statuses set before the connect go out once with the session: only a status that
    changed while the session was being set up is sent a second time."""
    async with statuses_seen(broker) as received:
        mqtt = MqttSection(host=broker.host, port=broker.port)

        def statuses(pub: Publisher) -> None:
            pub.device_status("dock-1", {"state": "up"})
            pub.device_status("dock-2", {"state": "down"})

        async with running_publisher(
            mqtt, buffer, TOPICS, client_id="gw-once", before_run=statuses
        ):
            await asyncio.sleep(0.5)
    assert sorted(received) == [
        (TOPICS.device_status("dock-1"), {"state": "up"}),
        (TOPICS.device_status("dock-2"), {"state": "down"}),
    ]


async def test_the_puback_watcher_ends_the_session_at_publish_timeout_not_at_its_next_tick(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """The watcher checks once a second, but wakes when the oldest publish's time is up: with
    ``publish_timeout`` 1.5 s a blackholed event ends the session 1.5 s after it was written,
    not at the tick after (2 s)."""
    async with FaultProxy(broker.host, broker.port) as proxy:
        mqtt = MqttSection(host=proxy.host, port=proxy.port, publish_timeout=1.5, keepalive=60)
        async with running_publisher(mqtt, buffer, TOPICS, client_id="gw-watch") as pub:
            try:
                proxy.blackhole()
                await buffer.append(scan("watch-1"))
                async with asyncio.timeout(5):
                    while not pub._in_flight:
                        await asyncio.sleep(0.005)
                written = time.monotonic()
                async with asyncio.timeout(5):
                    while pub.reconnects == 0:
                        await asyncio.sleep(0.005)
                took = time.monotonic() - written
            finally:
                proxy.heal()
    assert 1.4 <= took < 1.8, f"the session ended {took:.2f} s after the publish"


async def test_a_session_is_announced_only_once_the_device_statuses_are_published(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """Statuses set before the connect are published with the session, before it is announced
    connected: with the broker's answers 0.3 s late, they have reached a subscriber by then."""
    at_announce: list[int] = []
    async with statuses_seen(broker) as received, FaultProxy(broker.host, broker.port) as proxy:
        proxy.delay_replies(0.3)
        mqtt = MqttSection(host=proxy.host, port=proxy.port, keepalive=60)
        async with running_publisher(
            mqtt,
            buffer,
            TOPICS,
            client_id="gw-status-first",
            on_link=lambda up, _since: at_announce.append(len(received)) if up else None,
            before_run=lambda pub: pub.device_status("dock-1", {"state": "up"}),
        ):
            pass  # connected, then stopped
    assert at_announce == [1], (at_announce, received)


async def test_a_publisher_that_never_connected_never_announces_a_link_down(
    buffer: Buffer, tmp_path: Path
) -> None:
    """Down is announced only after up: attempts against a broker that is not there tell
    ``on_link`` nothing (the daemon would log and count a link loss that never was), and
    there is no drain without a session."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    links: list[bool] = []
    mqtt = MqttSection(host="127.0.0.1", port=port, reconnect_min=0.02, reconnect_max=0.05)
    async with running_publisher(
        mqtt,
        buffer,
        TOPICS,
        client_id="gw-never",
        on_link=lambda up, _since: links.append(up),
        connect=False,  # it never will
    ) as pub:
        async with asyncio.timeout(5):
            while pub.reconnects < 3:
                await asyncio.sleep(0.01)
    assert links == []
    assert not pub.draining, "no session, no drain (the checkpoint and the demo view read it)"


async def test_no_more_events_in_flight_than_max_inflight(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """``[mqtt] max_inflight`` bounds the events awaiting their PUBACK, below the broker's
    window: with PUBACKs 0.5 s late, 10 events go out 3 at a time."""
    async with FaultProxy(broker.host, broker.port) as proxy:
        mqtt = MqttSection(host=proxy.host, port=proxy.port, max_inflight=3, keepalive=60)
        async with running_publisher(mqtt, buffer, TOPICS, client_id="gw-window") as pub:
            try:
                proxy.delay_replies(0.5)
                for n in range(10):
                    await buffer.append(scan(f"w-{n}"))
                most = 0
                for _ in range(40):
                    most = max(most, len(pub._in_flight))
                    await asyncio.sleep(0.01)
            finally:
                proxy.heal()
    assert most == 3


async def test_a_session_s_work_is_over_when_its_end_is_announced(
    buffer: Buffer, broker: MosquittoBroker
) -> None:
    """When ``on_link`` hears that the link is down, nothing of the session still runs: its
    pump, PUBACK writer, held-event retry and watcher have all finished (not merely been asked
    to), so no claim, send or mark of that session can come after the announcement."""
    left: list[list[str]] = []

    def on_link(up: bool, _since: str) -> None:
        if not up:
            left.append(
                sorted(
                    name
                    for task in asyncio.all_tasks()
                    if not task.done()
                    and (name := getattr(task.get_coro(), "__qualname__", "")).startswith(
                        "Publisher."
                    )
                    and name != "Publisher.run"
                )
            )

    async with FaultProxy(broker.host, broker.port) as proxy:
        mqtt = MqttSection(host=proxy.host, port=proxy.port, keepalive=60)
        async with running_publisher(mqtt, buffer, TOPICS, client_id="gw-over", on_link=on_link):
            await buffer.append(scan("over-1"))  # the session has done some work
            async with asyncio.timeout(10):
                while (await buffer.stats()).by_state.get("sent", 0) < 1:
                    await asyncio.sleep(0.01)
            proxy.cut()
            async with asyncio.timeout(10):
                while not left:
                    await asyncio.sleep(0.005)
    assert left[0] == [], left
