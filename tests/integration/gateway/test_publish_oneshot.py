"""``publish_oneshot``, the sender of ``edge-gateway replay``, against a real Mosquitto (issue 19,
mutation run of gateway/publisher.py).

It returns how many messages the broker took: a PUBACK refusing one, or one over the broker's
Maximum Packet Size, is not counted and does not stop the rest. It keeps at most ``window``
publishes awaiting PUBACK, connects with the client id it is given (not the daemon's), and
gives up with NotConnectedError when a PUBACK does not come within ``publish_timeout``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from gateway.publisher import NotConnectedError, publish_oneshot
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker
from tests.chaos.faultproxy import FaultProxy
from tests.support import broker_configured

TOPIC = "edge/site-test/gw-oneshot/events/dock"


async def listed(items: list[tuple[str, bytes]]) -> AsyncIterator[tuple[str, bytes]]:
    for item in items:
        yield item


async def test_oneshot_counts_only_what_the_broker_took(tmp_path: Path) -> None:
    """Refused by PUBACK (over ``message_size_limit``) or not sendable (over the broker's
    ``max_packet_size``): neither counts, and every message after them is still published."""
    broker = broker_configured(
        tmp_path / "limits", lambda text: text + "message_size_limit 2000\nmax_packet_size 4000\n"
    )
    try:
        plan = ["ok", "refused", "ok", "too-large", "ok", "refused", "refused", "ok", "ok"]
        sizes = {"ok": 100, "refused": 3000, "too-large": 6000}
        messages = [
            (TOPIC, f"{n:02d}:{kind}:".encode().ljust(sizes[kind], b"x"))
            for n, kind in enumerate(plan)
        ]
        got: list[bytes] = []
        async with aiomqtt.Client(broker.host, broker.port, identifier="oneshot-central") as sub:
            await sub.subscribe(TOPIC, qos=1)
            mqtt = MqttSection(host=broker.host, port=broker.port, publish_timeout=5.0)
            taken = await publish_oneshot(
                mqtt, client_id="gw-oneshot-count", messages=listed(messages), window=2
            )
            async with asyncio.timeout(10):
                async for message in sub.messages:
                    got.append(bytes(message.payload))
                    if len(got) == plan.count("ok"):
                        break
            with pytest.raises(TimeoutError):  # nothing else arrives
                async with asyncio.timeout(0.5):
                    async for message in sub.messages:
                        raise AssertionError(f"unexpected {message.payload!r}")
        assert taken == plan.count("ok") == 5
        assert [p.split(b":")[0] for p in got] == [b"00", b"02", b"04", b"07", b"08"]
        log = (broker.workdir / "mosquitto.log").read_text()
        assert " as gw-oneshot-count " in log, "connected with the client id it was given"
    finally:
        broker.stop()


async def test_oneshot_keeps_window_publishes_awaiting_puback(tmp_path: Path) -> None:
    """Every PUBACK comes 0.5 s late: with a window of 1 each publish waits for the one before
    it, refused ones included, so 6 of them take at least 3 s; more in flight at once (a
    refusal counted twice, say) would take less."""
    broker = broker_configured(tmp_path / "limits", lambda text: text + "message_size_limit 2000\n")
    try:
        async with FaultProxy(broker.host, broker.port) as proxy:
            proxy.delay_replies(0.5)
            mqtt = MqttSection(host=proxy.host, port=proxy.port, publish_timeout=10.0)
            started = time.monotonic()
            messages = [(TOPIC, b"r".ljust(3000, b"x")) for _ in range(2)]
            messages += [(TOPIC, f"m{n}".encode()) for n in range(4)]
            taken = await publish_oneshot(
                mqtt, client_id="gw-oneshot-window", messages=listed(messages), window=1
            )
            took = time.monotonic() - started
            proxy.heal()
    finally:
        broker.stop()
    assert taken == 4
    assert took >= 2.9, f"6 publishes with a window of 1 and 0.5 s PUBACKs took {took:.2f} s"
    # ...and each publish goes as soon as the PUBACK before it came, not after publish_timeout.
    assert took < 8.0, f"6 publishes with 0.5 s PUBACKs took {took:.2f} s"


async def test_oneshot_window_is_ten_by_default(tmp_path: Path) -> None:
    """``edge-gateway replay`` keeps ten publishes awaiting PUBACK: with every reply 0.5 s late,
    22 messages go in three rounds (10, 10, 2), so they take 1.5 s from the first one; eleven
    at once would take two rounds, 1 s, and one at a time 11 s."""
    broker = broker_configured(tmp_path / "limits", lambda text: text)
    first_asked: list[float] = []

    async def timed() -> AsyncIterator[tuple[str, bytes]]:
        first_asked.append(time.monotonic())  # after CONNACK, itself 0.5 s late
        for n in range(22):
            yield (TOPIC, f"m{n}".encode())

    try:
        async with FaultProxy(broker.host, broker.port) as proxy:
            proxy.delay_replies(0.5)
            mqtt = MqttSection(host=proxy.host, port=proxy.port, publish_timeout=10.0)
            taken = await publish_oneshot(mqtt, client_id="gw-oneshot-ten", messages=timed())
            took = time.monotonic() - first_asked[0]
            proxy.heal()
    finally:
        broker.stop()
    assert taken == 22
    assert 1.4 <= took < 4.0, f"22 publishes, 0.5 s PUBACKs, default window: {took:.2f} s"


@pytest.mark.parametrize("count", [1, 3])
async def test_oneshot_gives_up_when_pubacks_never_come(
    broker: MosquittoBroker, count: int
) -> None:
    """The link goes silent once connected: a message waiting for a free place in the window
    (3 messages, window 1) or the last PUBACK (1 message) ends in NotConnectedError after
    ``publish_timeout``, which says why, instead of waiting forever."""
    async with FaultProxy(broker.host, broker.port) as proxy:
        mqtt = MqttSection(host=proxy.host, port=proxy.port, publish_timeout=1.5, keepalive=60)

        async def silent() -> AsyncIterator[tuple[str, bytes]]:
            proxy.blackhole()  # connected by now: the first message is asked for after CONNACK
            for n in range(count):
                yield (TOPIC, f"m{n}".encode())

        started = time.monotonic()
        with pytest.raises(NotConnectedError, match=r"^no PUBACK in time$"):
            async with asyncio.timeout(20):
                await publish_oneshot(
                    mqtt, client_id="gw-oneshot-silent", messages=silent(), window=1
                )
        took = time.monotonic() - started
        proxy.heal()
    assert took >= 1.4, f"gave up after {took:.2f} s, before publish_timeout"


async def test_oneshot_gives_up_at_once_when_the_link_is_cut(broker: MosquittoBroker) -> None:
    """PUBACKs held back, then the connection reset while the last one is awaited: the error
    comes at once and says the connection was lost, not after ``publish_timeout`` (20 s)."""
    async with FaultProxy(broker.host, broker.port) as proxy:
        mqtt = MqttSection(host=proxy.host, port=proxy.port, publish_timeout=20.0, keepalive=60)

        async def then_cut() -> AsyncIterator[tuple[str, bytes]]:
            proxy.delay_replies(30.0)  # connected by now: the PUBACK will not come in time
            yield (TOPIC, b"m0")
            asyncio.get_running_loop().call_later(0.3, proxy.cut)  # during the last wait

        started = time.monotonic()
        with pytest.raises(NotConnectedError, match=r"^connection lost$"):
            async with asyncio.timeout(30):
                await publish_oneshot(mqtt, client_id="gw-oneshot-cut", messages=then_cut())
        took = time.monotonic() - started
        proxy.heal()
    assert took < 10, f"noticed the reset after {took:.1f} s"
