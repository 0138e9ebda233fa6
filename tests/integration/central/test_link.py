"""CentralLink's own QoS 1 path: PUBACKs after the effect, in arrival order, batched; nothing
held is acknowledged once the link ends (the broker sends it again next session)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from central.config import CentralSettings
from central.service import CentralLink
from gateway.mqtt_link import LinkError
from simulators.broker import MosquittoBroker
from tests.chaos.faultproxy import FaultProxy
from tests.support import broker_configured, wait_until


async def _publish(broker: MosquittoBroker, *payloads: bytes) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier="link-pub") as client:
        for payload in payloads:
            await client.publish("central/in", payload, qos=1)


async def _redelivered(settings: CentralSettings) -> list[bytes]:
    """What the broker still holds for this session (a fresh link, acknowledging at once)."""
    seen: list[bytes] = []
    link = CentralLink(settings, lambda _t, p: seen.append(p))
    await link.connect()
    try:
        await asyncio.sleep(1.0)
    finally:
        await link.close()
    return seen


def _pubacks_written(link: CentralLink) -> list[bytes]:
    """Every PUBACK packet the link writes from now on, one entry per packet."""
    protocol = link._client._connection._protocol
    original = protocol.write_data
    pubacks: list[bytes] = []

    def write_data(data: bytes) -> None:
        if data and data[0] & 0xF0 == 0x40:  # the link's flush writes PUBACKs and nothing else
            at = 0
            while at < len(data):
                size = 2 + data[at + 1]  # a PUBACK's Remaining Length fits in one byte
                pubacks.append(data[at : at + size])
                at += size
        original(data)

    protocol.write_data = write_data
    return pubacks


async def test_acks_wait_for_effects_in_order_and_a_failure_holds_the_rest(
    broker: MosquittoBroker, central_settings: Callable[..., CentralSettings]
) -> None:
    settings = central_settings(instance="link-order")
    futures: dict[bytes, asyncio.Future[None]] = {}

    def keep(_topic: str, payload: bytes) -> asyncio.Future[None]:
        futures[payload] = asyncio.get_running_loop().create_future()
        return futures[payload]

    link = CentralLink(settings, keep)
    await link.connect()
    await link.subscribe("central/in")
    await _publish(broker, b"first", b"second", b"third")
    await wait_until(lambda: len(futures) == 3, timeout=5)
    futures[b"second"].set_result(None)
    await asyncio.sleep(0.2)
    assert link.unacknowledged == 3, "second waits for first"
    futures[b"first"].set_result(None)
    await wait_until(lambda: link.unacknowledged == 1, timeout=2)  # first and second, in order
    futures[b"third"].set_exception(RuntimeError("could not commit"))
    await asyncio.sleep(0.2)
    assert link.unacknowledged == 1, "a failed effect is never acknowledged"
    await link.close()
    assert link.unacknowledged == 0
    assert await _redelivered(settings) == [b"third"]


async def _holding_link(
    broker: MosquittoBroker, settings: CentralSettings, count: int
) -> tuple[CentralLink, list[asyncio.Future[None]], list[bytes]]:
    """A connected link whose effects are futures the test completes, with ``count`` messages
    received and not yet done."""
    futures: list[asyncio.Future[None]] = []

    def keep(_topic: str, _payload: bytes) -> asyncio.Future[None]:
        futures.append(asyncio.get_running_loop().create_future())
        return futures[-1]

    link = CentralLink(settings, keep)
    await link.connect()
    await link.subscribe("central/in")
    payloads = [f"m{n}".encode() for n in range(count)]
    await _publish(broker, *payloads)
    await wait_until(lambda: len(futures) == count, timeout=10)
    return link, futures, payloads


async def test_a_batch_done_at_once_is_acknowledged_and_held_ones_are_not(
    broker: MosquittoBroker, central_settings: Callable[..., CentralSettings]
) -> None:
    """200 effects done by one commit are all acknowledged; 50 still held when the link closes
    come again in the next session, and nothing else does."""
    settings = central_settings(instance="link-batch")
    link, futures, payloads = await _holding_link(broker, settings, 250)
    pubacks = _pubacks_written(link)
    for future in futures[:200]:
        future.set_result(None)
    await wait_until(lambda: link.unacknowledged == 50, timeout=5)
    # MQTT 5 PUBACKs: flags zero (a DUP bit there is a malformed packet [MQTT-2.1.3-1]),
    # Remaining Length 4, reason code 0, no properties; one per message, no packet id twice.
    assert len(pubacks) == 200
    assert {(p[:2], p[4:]) for p in pubacks} == {(b"\x40\x04", b"\x00\x00")}
    assert len({p[2:4] for p in pubacks}) == 200
    await link.close()
    futures[200].set_result(None)  # after the end: acknowledges nothing
    assert sorted(await _redelivered(settings)) == sorted(payloads[200:])


async def test_close_returns_only_once_the_broker_has_read_its_acknowledgements(
    broker: MosquittoBroker, central_settings: Callable[..., CentralSettings]
) -> None:
    """A slow uplink holds the last PUBACKs on their way when the link closes; the next session
    of the same client id must not find them undone (it took the session over before the
    broker read them, and 198 committed messages came again: a CI failure of the test above)."""
    async with FaultProxy(broker.host, broker.port) as proxy:
        settings = central_settings(instance="link-slow-up", mqtt={"port": proxy.port})
        link, futures, payloads = await _holding_link(broker, settings, 60)
        proxy.delay_requests(1.0)
        for future in futures[:50]:
            future.set_result(None)
        await wait_until(lambda: link.unacknowledged == 10, timeout=5)
        started = time.monotonic()
        await link.close()
        # Once the UNSUBACK proves the PUBACKs read (1 s late), not after [mqtt] timeout (5 s).
        assert time.monotonic() - started < 4.0
        direct = central_settings(instance="link-slow-up")  # the broker itself, at once
        assert sorted(await _redelivered(direct)) == sorted(payloads[50:])


async def test_effects_done_while_close_waits_for_the_unsuback_are_not_acknowledged(
    broker: MosquittoBroker, central_settings: Callable[..., CentralSettings]
) -> None:
    """Once close() has begun, a PUBACK would go out after the UNSUBSCRIBE that proves the
    earlier ones read, so nothing proves it read: what is done while close() waits is held
    and comes again in the next session, like everything not done by then."""
    async with FaultProxy(broker.host, broker.port) as proxy:
        settings = central_settings(instance="link-closing", mqtt={"port": proxy.port})
        link, futures, payloads = await _holding_link(broker, settings, 10)
        futures[0].set_result(None)
        await wait_until(lambda: link.unacknowledged == 9, timeout=5)
        pubacks = _pubacks_written(link)
        proxy.delay_requests(1.0)
        closing = asyncio.create_task(link.close())
        await asyncio.sleep(0.3)  # the UNSUBSCRIBE is on its way, its UNSUBACK 1 s away
        assert not closing.done()
        for future in futures[1:]:
            future.set_result(None)
        await closing
        assert pubacks == []
        direct = central_settings(instance="link-closing")
        assert sorted(await _redelivered(direct)) == sorted(payloads[1:])


async def test_nothing_is_acknowledged_once_a_timeout_declared_the_link_lost(
    broker: MosquittoBroker, central_settings: Callable[..., CentralSettings]
) -> None:
    """No PUBACK within ``[mqtt] timeout`` ends the link (lost) while its socket is still open:
    effects done after that are not acknowledged on it, they come again next session."""
    async with FaultProxy(broker.host, broker.port) as proxy:
        settings = central_settings(
            instance="link-timed-out", mqtt={"port": proxy.port, "timeout": 1}
        )
        link, futures, payloads = await _holding_link(broker, settings, 5)
        pubacks = _pubacks_written(link)
        proxy.delay_replies(30.0)
        with pytest.raises(LinkError):
            await link.publish("central/out", b"confirm")
        assert link.lost.is_set()
        assert link._client.is_connected, "the socket is still open: only the link gave up"
        for future in futures:
            future.set_result(None)
        await asyncio.sleep(0.3)
        assert pubacks == []
        await link.close()
    direct = central_settings(instance="link-timed-out")
    assert sorted(await _redelivered(direct)) == sorted(payloads)


async def test_close_during_a_blackhole_returns_within_the_timeout_and_loses_nothing(
    broker: MosquittoBroker, central_settings: Callable[..., CentralSettings]
) -> None:
    """The broker stops reading while effects are done, others pending and confirms in flight:
    close() gives up waiting for the UNSUBACK after ``[mqtt] timeout`` and returns, acknowledging
    nothing after; what the broker never read comes again. (It took two timeouts: the
    DISCONNECT then waited behind the unread confirms; with the default 10 s, the whole of
    systemd's TimeoutStopSec.)"""
    async with FaultProxy(broker.host, broker.port) as proxy:
        settings = central_settings(
            instance="link-blackhole", mqtt={"port": proxy.port, "timeout": 2}
        )
        link, futures, payloads = await _holding_link(broker, settings, 20)
        proxy.blackhole()
        for future in futures[:10]:
            future.set_result(None)
        while link.free_ids() > link._reserve():  # what send_when_room leaves
            link.send("central/out", b"c" * 60_000)  # confirms of up to 64 KiB
        await asyncio.sleep(0.1)
        began = asyncio.get_running_loop().time()
        await link.close()
        took = asyncio.get_running_loop().time() - began
        assert took < 2 + 1.0, took
        assert link.lost.is_set()
        for future in futures[10:]:
            future.set_result(None)  # after the end: acknowledges nothing
        direct = central_settings(instance="link-blackhole")
        assert set(await _redelivered(direct)) >= set(payloads[10:])


async def test_close_of_a_lost_link_returns_at_once(
    broker: MosquittoBroker, central_settings: Callable[..., CentralSettings]
) -> None:
    """The connection was reset under the link: close() neither waits nor acknowledges."""
    async with FaultProxy(broker.host, broker.port) as proxy:
        settings = central_settings(instance="link-lost", mqtt={"port": proxy.port})
        link, futures, payloads = await _holding_link(broker, settings, 10)
        proxy.cut()
        await asyncio.wait_for(link.lost.wait(), 5)
        for future in futures:
            future.set_result(None)
        began = asyncio.get_running_loop().time()
        await link.close()
        assert asyncio.get_running_loop().time() - began < 1.0
        direct = central_settings(instance="link-lost")
        assert sorted(await _redelivered(direct)) == sorted(payloads)


async def test_close_with_every_packet_id_in_use_still_closes(
    broker: MosquittoBroker, central_settings: Callable[..., CentralSettings]
) -> None:
    """Confirms and a re-confirm await their PUBACKs from a slow broker and hold every packet id
    of its window when the instance stops: the UNSUBSCRIBE cannot be numbered. close() must
    still disconnect (it raised gmqtt's OverflowError and left the connection open)."""
    async with FaultProxy(broker.host, broker.port) as proxy:
        settings = central_settings(instance="link-full", mqtt={"port": proxy.port, "timeout": 2})
        link, futures, _ = await _holding_link(broker, settings, 5)
        for future in futures:
            future.set_result(None)
        await wait_until(lambda: link.unacknowledged == 0, timeout=5)
        proxy.delay_replies(30.0)
        while link.free_ids() > 0:
            link.send("central/out", b"confirm")
        began = asyncio.get_running_loop().time()
        await link.close()
        assert asyncio.get_running_loop().time() - began < 2 + 1.0
        assert link.lost.is_set()
        assert not link._client.is_connected


async def test_a_broker_window_of_two_still_takes_confirms(
    tmp_path: Path, central_settings: Callable[..., CentralSettings]
) -> None:
    """Receive Maximum 2 leaves gmqtt one packet id: the reserve kept for ``publish`` must not
    take it, or every confirm of the writer times out (``confirm_not_sent``) and only the
    leader's re-confirms ever reach the gateways."""
    small = broker_configured(
        tmp_path / "small",
        lambda text: text.replace("max_inflight_messages 100", "max_inflight_messages 2"),
    )
    try:
        settings = central_settings(instance="link-window-2", mqtt={"port": small.port})
        link = CentralLink(settings, lambda _t, _p: None)
        await link.connect()
        got: list[bytes] = []
        async with aiomqtt.Client(small.host, small.port, identifier="window-2-sub") as client:
            await client.subscribe("central/out", qos=1)
            try:
                for n in range(3):
                    await link.send_when_room("central/out", f"confirm {n}".encode())
            finally:
                await link.close()
            async with asyncio.timeout(5):
                async for message in client.messages:
                    got.append(bytes(message.payload))  # type: ignore[arg-type]
                    if len(got) == 3:
                        break
        assert got == [b"confirm 0", b"confirm 1", b"confirm 2"]
    finally:
        small.stop()


async def test_confirms_keep_to_their_quota_and_give_up_after_the_timeout(
    broker: MosquittoBroker, central_settings: Callable[..., CentralSettings]
) -> None:
    """While the broker acknowledges nothing, ``send_when_room`` lets exactly ``send_quota``
    confirms out (``publish`` keeps its reserve of packet ids for replay requests); the next
    waits for a PUBACK, and with none it fails with LinkError after ``[mqtt] timeout``, the
    link still up (``send_when_room__mutmut_2``, ``_6`` sent past the quota, ``_1`` waited
    with no bound)."""
    async with (
        FaultProxy(broker.host, broker.port) as proxy,
        aiomqtt.Client(broker.host, broker.port, identifier="link-quota-sub") as client,
    ):
        await client.subscribe("central/out", qos=1)
        settings = central_settings(instance="link-quota", mqtt={"port": proxy.port, "timeout": 1})
        link = CentralLink(settings, lambda _t, _p: None)
        await link.connect()
        try:
            proxy.delay_replies(30.0)
            quota = link.send_quota
            assert 0 < quota < link.free_ids()
            for n in range(quota):
                async with asyncio.timeout(0.5):  # room: it goes at once
                    await link.send_when_room("central/out", b"confirm %d" % n)
            loop = asyncio.get_running_loop()
            began = loop.time()
            with pytest.raises(LinkError, match="no free packet id within the timeout"):
                async with asyncio.timeout(3):
                    await link.send_when_room("central/out", b"one too many")
            took = loop.time() - began
            assert 1.0 <= took < 2.5, took
            assert not link.lost.is_set(), "only the confirm gave up, not the link"
            assert link._id_limit() - link.free_ids() == quota, "the reserve is left free"
            got: list[bytes] = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    async for message in client.messages:
                        got.append(bytes(message.payload))  # type: ignore[arg-type]
                        if len(got) > quota:
                            break
            assert got == [b"confirm %d" % n for n in range(quota)], "the broker got the quota"
        finally:
            await link.close()
