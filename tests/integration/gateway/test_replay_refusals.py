"""Found by the second review of issue 13 (fixed; the text says what went wrong before): replays against a broker that refuses what it is sent (real Mosquitto 2.0.11).

A replayed event is the stored payload plus ``,"historical":true,"replayed":true`` (34 bytes,
gateway/events.py ``mark_replayed``), so an event delivered just under a broker's limit is over
it when replayed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from buffer.store import Buffer
from gateway.commands import ReplayCommand
from gateway.events import mark_replayed
from gateway.publisher import Publisher
from gateway.replay import ReplayWorker
from gateway.settings import MqttSection
from simulators.central import CentralCollector
from tests.integration.gateway.test_broker_refusals import broker_with, scan
from tests.integration.gateway.test_publisher import TOPICS
from tests.support import publisher_and_central


def sized_scan(n: int, total: int):
    """A scan whose stored payload is exactly ``total`` bytes."""
    base = len(scan(n, "").render(n))
    return scan(n, "X" * (total - base))


async def _setup(tmp_path: Path, broker: Any, events: list[Any]) -> tuple[Any, ...]:
    central = CentralCollector(broker.host, broker.port, client_id="central-r2")
    ctask = asyncio.create_task(central.run())
    buf = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**9)
    mqtt = MqttSection(host=broker.host, port=broker.port, reconnect_min=0.05, reconnect_max=0.3)
    pub = Publisher(mqtt, buf, TOPICS, client_id="gw-r2", on_delivered=lambda b: None)
    ptask = asyncio.create_task(pub.run())
    answers: list[dict[str, Any]] = []
    worker = ReplayWorker(
        buf,
        TOPICS,
        send=pub.publish,
        connected=pub.connected.wait,
        answer=lambda body: answers.append(json.loads(body)),
        rate=500.0,
    )
    wtask = asyncio.create_task(worker.run())
    async with asyncio.timeout(10):
        await central.connected.wait()
        await pub.connected.wait()
    for ev in events:
        await buf.append(ev)
    assert await central.wait_for(len(events), timeout=10), "first delivery must work"
    async with asyncio.timeout(5):
        while (await buf.stats()).devices["dock"].last_sent_seq < len(events):
            await asyncio.sleep(0.05)
    return central, ctask, buf, pub, ptask, worker, wtask, answers


async def _teardown(parts: tuple[Any, ...], broker: Any) -> None:
    _central, ctask, buf, pub, ptask, _worker, wtask, _ = parts
    wtask.cancel()
    await asyncio.gather(wtask, return_exceptions=True)
    pub.stop()
    async with asyncio.timeout(15):
        await ptask
    await buf.close()
    ctask.cancel()
    await asyncio.gather(ctask, return_exceptions=True)
    broker.stop()


async def test_replay_refused_by_broker_is_answered_ok(tmp_path: Path) -> None:
    """``message_size_limit 2000``: seq 2 (1990 bytes) was delivered; its replay (2024 bytes)
    is PUBACKed 0x95 by Mosquitto. The replay must not answer ok:true with count 2."""
    broker = broker_with(tmp_path, "message_size_limit 2000\n")
    events = [scan(1, "A1"), sized_scan(2, 1990)]
    assert len(mark_replayed(events[1].render(2))) > 2000
    parts = await _setup(tmp_path, broker, events)
    central, answers, worker = parts[0], parts[7], parts[5]
    try:
        worker.submit(ReplayCommand(request_id="r1", device="dock", from_seq=1, to_seq=2))
        async with asyncio.timeout(10):
            while not answers:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        replayed = sorted(m["seq"] for m in central.messages if m.get("replayed"))
        answer = answers[0]
        assert not (answer["ok"] and answer["count"] == 2 and replayed != [1, 2]), (
            f"answer {answer} says both replayed, central got replayed seqs {replayed}"
        )
    finally:
        await _teardown(parts, broker)


async def test_replay_of_event_over_broker_max_packet_size_is_answered(tmp_path: Path) -> None:
    """``max_packet_size 2000`` (Maximum Packet Size in CONNACK): seq 2 fits as delivered,
    not as replayed. The worker retries the PacketTooLargeError (a ConnectionError) every
    0.1 s for ever: the command is never answered and every later replay waits behind it."""
    broker = broker_with(tmp_path, "max_packet_size 2000\n")
    topic_len = len(TOPICS.events("dock").encode())
    events = [scan(1, "A1"), sized_scan(2, 2000 - 10 - topic_len - 5)]
    parts = await _setup(tmp_path, broker, events)
    central, answers, worker = parts[0], parts[7], parts[5]
    try:
        worker.submit(ReplayCommand(request_id="r1", device="dock", from_seq=1, to_seq=2))
        worker.submit(ReplayCommand(request_id="r2", device="dock", from_seq=1, to_seq=1))
        try:
            async with asyncio.timeout(10):
                while len(answers) < 2:
                    await asyncio.sleep(0.05)
        except TimeoutError:
            pass
        assert len(answers) == 2, (
            f"after 10 s: answers {answers}, replay still active: {worker.active};"
            f" central got seq 1 replayed"
            f" {sum(1 for m in central.messages if m.get('replayed') and m['seq'] == 1)} times"
        )
    finally:
        await _teardown(parts, broker)


async def test_held_event_is_retried_once_the_broker_takes_it_again(tmp_path: Path) -> None:
    """An ACL that denies the events topic (PUBACK 0x87) is fixed and reloaded (SIGHUP) while
    the gateway stays connected. Events stored after the fix are delivered; the one held before
    it waits for "the next session", which a healthy link never starts: it is never delivered
    (nothing retries held events, gateway/publisher.py ``_session`` only unholds at connect)."""
    import signal  # noqa: PLC0415

    acl = tmp_path / "acl"
    base = (
        "pattern write edge/site-test/gw-test/status\n"
        "pattern write edge/site-test/gw-test/checkpoint\n"
        "pattern readwrite edge/site-test/gw-test/confirm\n"
        "pattern read #\n"
    )
    acl.write_text(base)
    broker = broker_with(tmp_path, f"acl_file {acl}\n")
    async with publisher_and_central(tmp_path, broker, TOPICS, name="r2") as rig:
        central, pub = rig.central, rig.publisher
        await rig.buffer.append(scan(1, "A1"))
        async with asyncio.timeout(5):
            while pub.refused_by_broker < 1:
                await asyncio.sleep(0.05)
        acl.write_text(base + "pattern write edge/site-test/gw-test/events/#\n")
        assert broker.process is not None
        broker.process.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.0)
        await rig.buffer.append(scan(2, "A2"))
        assert await central.wait_for(1, timeout=5), "the fixed ACL lets new events through"
        got: set[int] = set()
        for _ in range(100):  # 10 s on the same, healthy session
            got = {m["seq"] for m in central.messages}
            if 1 in got:
                break
            await asyncio.sleep(0.1)
        assert 1 in got, (
            f"central has {sorted(got)} after 10 s; seq 1 still held by a broker refusal that"
            f" no longer applies (sessions lost: {pub.reconnects})"
        )


async def test_cli_replay_counts_a_refused_publish_as_replayed(tmp_path: Path) -> None:
    """``edge-gateway replay`` (gateway/publisher.py ``publish_oneshot``) builds its link with
    ``on_ack`` only: a refusing PUBACK falls through to ``on_ack`` (mqtt_link.py ``_acked``), so
    the CLI says "re-published 2 events" and exits 0 while the broker refused one of them."""
    from tests.support import cli, write_config  # noqa: PLC0415

    broker = broker_with(tmp_path, "message_size_limit 2000\n")
    events = [scan(1, "A1"), sized_scan(2, 1990)]
    parts = await _setup(tmp_path, broker, events)
    central = parts[0]
    try:
        cfg = write_config(
            tmp_path / "gateway.toml", mqtt_port=broker.port, state_dir=tmp_path, devices=[]
        )
        done = await asyncio.to_thread(
            cli, "replay", "--config", str(cfg), "--device", "dock", "--from-seq", "1"
        )
        await asyncio.sleep(0.5)
        replayed = sorted(m["seq"] for m in central.messages if m.get("replayed"))
        assert not (done.returncode == 0 and "2 events" in done.stdout and replayed != [1, 2]), (
            f"exit {done.returncode}, stdout {done.stdout.strip()!r}; central got replayed"
            f" seqs {replayed}"
        )
    finally:
        await _teardown(parts, broker)
