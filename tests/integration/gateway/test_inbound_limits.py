"""Issue 18 against a real Mosquitto: oversized packets, retained and redelivered commands."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Self

import aiomqtt

from buffer.event_ids import id_text
from buffer.schema import STATE_CONFIRMED
from gateway.command_limits import COMMAND_BURST, COMMAND_RATE
from gateway.daemon import Gateway
from gateway.mqtt_link import MqttLink
from gateway.mqtt_packets import MAX_PACKET_SIZE
from gateway.settings import MqttSection
from simulators.broker import MosquittoBroker
from simulators.scanner import ScannerSimulator
from tests.support import running_gateway, scanner_device, write_config

ROOT = "edge/site-test/gw-test"


def config(tmp_path: Path, broker: MosquittoBroker, sim: ScannerSimulator) -> Path:
    return write_config(
        tmp_path / "gateway.toml",
        mqtt_port=broker.port,
        state_dir=tmp_path / "state",
        devices=[scanner_device("dock-1", sim.link, confirm="accepted", confirm_timeout=60)],
    )


def events(tmp_path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(tmp_path / "state" / "buffer.db") as conn:
        rows = conn.execute("SELECT id, state FROM events ORDER BY seq").fetchall()
    return [(id_text(i), int(state)) for i, state in rows]


async def test_an_oversized_confirm_is_never_delivered_nor_redelivered(
    tmp_path: Path, broker: MosquittoBroker, scanner: ScannerSimulator
) -> None:
    """A 4 MiB QoS 1 confirm is dropped by the broker for us (Maximum Packet Size in CONNECT):
    the gateway never reads it, a genuine confirm behind it is applied, and a restart of the
    gateway (persistent session) does not get it either (issue 18, finding 1)."""
    cfg = config(tmp_path, broker, scanner)
    async with running_gateway(cfg) as gw:
        await scanner.wait_opened(timeout=10)
        async with asyncio.timeout(10):
            await gw.publisher.connected.wait()
        await scanner.type_code("BIG1", aim="")
        async with asyncio.timeout(10):
            while not events(tmp_path) or events(tmp_path)[0][1] < 2:
                await asyncio.sleep(0.05)
        event_id = events(tmp_path)[0][0]
        huge = b'{"id": "' + b"x" * (4 * 1024 * 1024) + b'", "status": "accepted"}'
        genuine = json.dumps({"id": event_id, "status": "accepted"}).encode()
        async with aiomqtt.Client(broker.host, broker.port, identifier="central-big") as client:
            await client.publish(f"{ROOT}/confirm", huge, qos=1)
            await client.publish(f"{ROOT}/confirm", genuine, qos=1)
        async with asyncio.timeout(10):
            while events(tmp_path)[0][1] != STATE_CONFIRMED:
                await asyncio.sleep(0.05)
        counters = dict(gw.inbound.counters)
        assert counters.get("confirm_messages") == 1, counters
        assert "confirm_invalid" not in counters, "the oversized message reached the gateway"
        assert gw.publisher.connected.is_set()
    async with running_gateway(cfg) as gw:
        async with asyncio.timeout(10):
            await gw.publisher.connected.wait()
        await asyncio.sleep(1.0)
        assert "confirm_messages" not in gw.inbound.counters, "redelivered on reconnect"


async def _hostile_broker(written: list[int], stop: asyncio.Event) -> asyncio.Server:
    """Answers CONNECT, then streams a PUBLISH that says it is 256 MiB long."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # CONNECT
        writer.write(b"\x20\x03\x00\x00\x00")  # CONNACK, MQTT 5, success, no properties
        await asyncio.sleep(0.3)  # the link has its CONNACK
        writer.write(b"\x30\xff\xff\xff\x7f\x00\x03a/b")  # PUBLISH, Remaining Length 256 MiB-1
        chunk = b"x" * 65536
        try:
            while written[0] < 512 * 1024 * 1024 and not stop.is_set():
                writer.write(chunk)
                await writer.drain()
                written[0] += len(chunk)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            stop.set()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_a_hostile_broker_cannot_make_the_link_read_a_huge_packet() -> None:
    """A broker that ignores our Maximum Packet Size: the link drops the connection once the
    packet's header says it is too big, not after reading (and copying) it."""
    written, stop = [0], asyncio.Event()
    server = await _hostile_broker(written, stop)
    port = server.sockets[0].getsockname()[1]
    link = MqttLink(MqttSection(host="127.0.0.1", port=port), "victim")
    try:
        cpu = time.process_time()
        await link.connect()
        async with asyncio.timeout(10):
            await link.lost.wait()
        async with asyncio.timeout(10):
            await stop.wait()
        cpu = time.process_time() - cpu
    finally:
        stop.set()
        await link.close()
        server.close()
    print(f"hostile broker: {written[0]} bytes written before the cut, {cpu:.3f} s CPU")
    assert written[0] < 16 * 1024 * 1024, f"{written[0]} bytes taken (socket buffers aside)"
    assert cpu < 2.0
    assert MAX_PACKET_SIZE < 70 * 1024


class Listener:
    """Answers on ``cmd/result`` and replayed events, from a subscriber of its own."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.broker = broker
        self.answers: list[dict[str, object]] = []
        self.replayed = 0
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with aiomqtt.Client(
            self.broker.host, self.broker.port, identifier="listener"
        ) as client:
            await client.subscribe(f"{ROOT}/cmd/result", qos=1)
            await client.subscribe(f"{ROOT}/events/#", qos=1)
            self._ready.set()
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                body = json.loads(message.payload)
                if message.topic.matches(f"{ROOT}/cmd/result"):
                    self.answers.append(body)
                elif body.get("replayed"):
                    self.replayed += 1

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run())
        async with asyncio.timeout(10):
            await self._ready.wait()
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def scan_sent(gw: Gateway, sim: ScannerSimulator, count: int) -> None:
    await sim.write_raw("".join(f"R{i:05d}\r" for i in range(count)).encode())
    async with asyncio.timeout(15):
        while (
            d := (await gw.buffer.stats()).devices.get("dock-1")
        ) is None or d.last_sent_seq < count:
            await asyncio.sleep(0.05)


def replay_config(
    tmp_path: Path, broker: MosquittoBroker, sim: ScannerSimulator, client_id: str = ""
) -> Path:
    return write_config(
        tmp_path / "gateway.toml",
        mqtt_port=broker.port,
        state_dir=tmp_path / "state",
        devices=[scanner_device("dock-1", sim.link)],
        **({"mqtt": {"client_id": client_id}} if client_id else {}),
    )


async def _store_five(tmp_path: Path, broker: MosquittoBroker, sim: ScannerSimulator) -> None:
    async with running_gateway(replay_config(tmp_path, broker, sim)) as gw:
        await sim.wait_opened(timeout=10)
        async with asyncio.timeout(10):
            await gw.publisher.connected.wait()
        await scan_sent(gw, sim, 5)


async def _start_three_times(config: Path) -> None:
    for _ in range(3):
        async with running_gateway(config) as gw:
            async with asyncio.timeout(10):
                await gw.publisher.connected.wait()
            await asyncio.sleep(1.0)
    await asyncio.sleep(0.3)


async def test_a_command_retained_while_we_were_away_runs_once_over_three_starts(
    tmp_path: Path, broker: MosquittoBroker, scanner: ScannerSimulator
) -> None:
    """The issue's case: a retained ``cmd/replay`` published while the gateway is stopped. Our
    persistent session queues it as a live command: it runs once, and the retained copy is not
    sent again when later sessions subscribe (issue 18, finding 3: before, 3 ``ok``, 15 events)."""
    await _store_five(tmp_path, broker, scanner)
    command = {"request_id": "kept", "device": "dock-1", "from_seq": 1, "to_seq": 5}
    async with Listener(broker) as listener:
        async with aiomqtt.Client(broker.host, broker.port, identifier="central-kept") as client:
            await client.publish(f"{ROOT}/cmd/replay", json.dumps(command), qos=1, retain=True)
        await _start_three_times(replay_config(tmp_path, broker, scanner))
    assert [a["ok"] for a in listener.answers] == [True], listener.answers
    assert listener.replayed == 5


async def test_a_retained_command_on_a_new_subscription_is_refused_once(
    tmp_path: Path, broker: MosquittoBroker, scanner: ScannerSimulator
) -> None:
    """A retained ``cmd/replay`` the broker sends because a new session subscribed (retain flag
    set): answered once with an error, never run, over three starts (issue 18, finding 3)."""
    await _store_five(tmp_path, broker, scanner)
    command = {"request_id": "kept", "device": "dock-1", "from_seq": 1, "to_seq": 5}
    async with Listener(broker) as listener:
        async with aiomqtt.Client(broker.host, broker.port, identifier="central-kept") as client:
            await client.publish(f"{ROOT}/cmd/replay", json.dumps(command), qos=1, retain=True)
        await _start_three_times(replay_config(tmp_path, broker, scanner, client_id="gw-fresh"))
    assert [a["ok"] for a in listener.answers] == [False], listener.answers
    assert "retain" in str(listener.answers[0]["detail"])
    assert listener.replayed == 0


async def test_a_repeated_request_id_replays_once(
    tmp_path: Path, broker: MosquittoBroker, scanner: ScannerSimulator
) -> None:
    """The same replay command delivered twice (a QoS 1 redelivery looks the same to us): one
    answer, one replay (issue 18, finding 3: before, two of each)."""
    async with running_gateway(replay_config(tmp_path, broker, scanner)) as gw:
        await scanner.wait_opened(timeout=10)
        async with asyncio.timeout(10):
            await gw.publisher.connected.wait()
        await scan_sent(gw, scanner, 5)
        command = {"request_id": 7, "device": "dock-1", "from_seq": 1, "to_seq": 5}
        async with Listener(broker) as listener:
            async with aiomqtt.Client(broker.host, broker.port, identifier="central-2x") as client:
                for _ in range(2):
                    await client.publish(f"{ROOT}/cmd/replay", json.dumps(command), qos=1)
            async with asyncio.timeout(10):
                while not listener.answers or listener.replayed < 5:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
        assert gw.inbound.counters["cmd_duplicate"] == 1
    assert [a["ok"] for a in listener.answers] == [True], listener.answers
    assert listener.replayed == 5


async def test_a_command_flood_is_rate_limited_before_any_range_check(
    tmp_path: Path, broker: MosquittoBroker, scanner: ScannerSimulator
) -> None:
    """200 replay commands at once, all to be refused: only a burst reaches the range check,
    the rest are refused as rate limited (issue 18, finding 8: before, every one was checked)."""
    async with running_gateway(replay_config(tmp_path, broker, scanner)) as gw:
        await scanner.wait_opened(timeout=10)
        async with asyncio.timeout(10):
            await gw.publisher.connected.wait()
        await scan_sent(gw, scanner, 3)
        started = time.monotonic()
        async with aiomqtt.Client(broker.host, broker.port, identifier="central-flood") as client:
            for n in range(200):
                body = {"request_id": n, "device": "dock-1", "from_seq": 1, "to_seq": 99}
                await client.publish(f"{ROOT}/cmd/replay", json.dumps(body), qos=1)
        async with asyncio.timeout(10):
            while gw.inbound.counters["cmd_messages"] < 200:
                await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        limited = gw.inbound.counters["cmd_rate_limited"]
        checked = 200 - limited  # parsed and queued or refused as busy
    assert checked <= COMMAND_BURST + COMMAND_RATE * elapsed + 1, dict(gw.inbound.counters)
    assert limited > 0


async def test_one_bad_verdict_does_not_cost_the_others(
    tmp_path: Path, broker: MosquittoBroker, scanner: ScannerSimulator
) -> None:
    """A list of three verdicts whose second has a 1,025-character reason: the first and the
    third are applied (issue 18, finding 4: before, the whole list was refused)."""
    async with running_gateway(config(tmp_path, broker, scanner)) as gw:
        await scanner.wait_opened(timeout=10)
        async with asyncio.timeout(10):
            await gw.publisher.connected.wait()
        for code in ("A1", "A2", "A3"):
            await scanner.type_code(code, aim="")
        async with asyncio.timeout(10):
            while len(rows := events(tmp_path)) < 3 or any(state < 2 for _, state in rows):
                await asyncio.sleep(0.05)
        (first, _), (second, _), (third, _) = events(tmp_path)
        verdicts = [
            {"id": first, "status": "accepted"},
            {"id": second, "status": "rejected", "reason": "r" * 1025},
            {"id": third, "status": "rejected", "reason": "bad read"},
        ]
        async with aiomqtt.Client(broker.host, broker.port, identifier="central-3") as client:
            await client.publish(f"{ROOT}/confirm", json.dumps(verdicts), qos=1)
        async with asyncio.timeout(10):
            while [state for _, state in events(tmp_path)] != [STATE_CONFIRMED, 2, 4]:
                await asyncio.sleep(0.05)
        assert gw.inbound.counters["confirm_invalid_verdicts"] == 1


async def test_a_replay_that_loses_rows_to_retention_says_so(
    tmp_path: Path, broker: MosquittoBroker, scanner: ScannerSimulator
) -> None:
    """Retention deletes the rest of a range while its replay runs: the answer is ``ok: false``
    with the missing count and ranges, not ``ok`` with a smaller count (issue 18, lesser)."""
    cfg = write_config(
        tmp_path / "gateway.toml",
        mqtt_port=broker.port,
        state_dir=tmp_path / "state",
        devices=[scanner_device("dock-1", scanner.link)],
        mqtt={"replay_rate": 200},
    )
    async with running_gateway(cfg) as gw:
        await scanner.wait_opened(timeout=10)
        async with asyncio.timeout(10):
            await gw.publisher.connected.wait()
        await scan_sent(gw, scanner, 500)  # the replay reads 200 rows at a time
        command = {"request_id": "r", "device": "dock-1", "from_seq": 1, "to_seq": 500}
        async with Listener(broker) as listener:
            async with aiomqtt.Client(broker.host, broker.port, identifier="central-r") as client:
                await client.publish(f"{ROOT}/cmd/replay", json.dumps(command), qos=1)
            async with asyncio.timeout(10):
                while listener.replayed < 10:
                    await asyncio.sleep(0.02)
            assert await gw.buffer.prune(retention=1, now=9e12) > 0
            async with asyncio.timeout(10):
                while not listener.answers:
                    await asyncio.sleep(0.05)
    answer = listener.answers[0]
    assert answer["ok"] is False, answer
    count, missing = answer["count"], answer["missing"]
    assert isinstance(count, int) and isinstance(missing, int)
    assert (count, missing) == (200, 300)
    assert answer["missing_ranges"] == [[201, 500]]


async def test_a_redelivered_replay_command_dup_runs_once(
    tmp_path: Path, broker: MosquittoBroker, scanner: ScannerSimulator
) -> None:
    """A real QoS 1 redelivery: the connection dies after the gateway took the command but
    before its PUBACK left, so the broker sends it again (DUP) to the next session. One answer,
    one replay (issue 18, finding 3: before, the replay ran twice)."""
    async with running_gateway(replay_config(tmp_path, broker, scanner)) as gw:
        await scanner.wait_opened(timeout=10)
        async with asyncio.timeout(10):
            await gw.publisher.connected.wait()
        await scan_sent(gw, scanner, 5)
        original = gw.inbound.handle
        seen: list[bytes] = []

        def handle_then_drop(topic: str, payload: bytes, **kw: bool) -> object:
            result = original(topic, payload, **kw)
            if topic.endswith("/cmd/replay"):
                seen.append(payload)
                if len(seen) == 1:  # the PUBACK for this one never leaves
                    assert gw.publisher._link is not None
                    gw.publisher._link._abort_transport()
            return result

        gw.inbound.handle = handle_then_drop  # type: ignore[method-assign]
        command = {"request_id": "once", "device": "dock-1", "from_seq": 1, "to_seq": 5}
        async with Listener(broker) as listener:
            async with aiomqtt.Client(broker.host, broker.port, identifier="central-dup") as client:
                await client.publish(f"{ROOT}/cmd/replay", json.dumps(command), qos=1)
            async with asyncio.timeout(20):
                while len(seen) < 2:
                    await asyncio.sleep(0.05)
            async with asyncio.timeout(10):
                while not listener.answers or listener.replayed < 5:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
    assert [a["ok"] for a in listener.answers] == [True], listener.answers
    assert listener.replayed == 5
