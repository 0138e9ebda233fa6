"""cmd/replay, edge-gateway replay and checkpoint parity, with the reference consumer."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import aiomqtt

from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.scanner import ScannerSimulator
from tests.support import cli, running_gateway, scanner_device, write_config

ROOT = "edge/site-test/gw-test"
SOURCE = "/site-test/gw-test/dock-1"


def config(tmp_path: Path, broker: MosquittoBroker, sim: ScannerSimulator) -> Path:
    return write_config(
        tmp_path / "gateway.toml",
        mqtt_port=broker.port,
        state_dir=tmp_path / "state",
        devices=[scanner_device("dock-1", sim.link)],
        mqtt={"checkpoint_interval": 0.5},
    )


async def scan_all_sent(gw, sim: ScannerSimulator, count: int, prefix: str = "R") -> None:
    await sim.write_raw("".join(f"{prefix}{i:05d}\r" for i in range(count)).encode())
    async with asyncio.timeout(15):
        while (
            d := (await gw.buffer.stats()).devices.get("dock-1")
        ) is None or d.last_sent_seq < count:
            await asyncio.sleep(0.05)


async def test_late_consumer_reaches_parity_through_checkpoint_and_replay(
    tmp_path: Path, broker: MosquittoBroker, scanner: ScannerSimulator
) -> None:
    """A consumer started late with a clean session asks for the gap and ends with 1..N exactly once."""
    total = 40
    async with running_gateway(config(tmp_path, broker, scanner)) as gw:
        await scanner.wait_opened(timeout=10)
        async with asyncio.timeout(10):
            await gw.publisher.connected.wait()
        await scan_all_sent(gw, scanner, total)
        assert await gw.publish_checkpoint(), "a fresh retained checkpoint for the late consumer"
        late = CentralCollector(
            broker.host, broker.port, client_id="central-late", clean=True, replay_after=0.3
        )
        task = asyncio.create_task(late.run())
        try:
            assert await late.wait_for(total, timeout=20), late.parity()
            async with asyncio.timeout(5):
                while not late.parity().get(SOURCE, {}).get("in_parity"):
                    await asyncio.sleep(0.05)
            await scanner.type_code("LIVE", aim="")
            assert await late.wait_for(total + 1, timeout=5)
            # The replay's answer is published once its events' PUBACKs and the buffer's
            # figures are in, so on a loaded box the live event can reach central before it.
            async with asyncio.timeout(5):
                while not late.results:
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    track = late.sources[SOURCE]
    assert sorted(track.ids.values()) == list(range(1, total + 2)), "every seq exactly once"
    assert track.conflicting == 0 and track.duplicates == 0
    assert sum(r["count"] for r in late.results if r.get("ok")) == total, late.results
    replayed = [m for m in late.messages if m.get("replayed")]
    assert len(replayed) == total and all(m["historical"] for m in replayed)
    report = late.parity()[SOURCE]
    assert report["missing"] == [] and report["gateway_last_seq"] >= total


async def test_replay_errors_are_answered_with_the_request_id(
    tmp_path: Path, broker: MosquittoBroker, scanner: ScannerSimulator
) -> None:
    """Unknown device, range beyond the buffer, pruned range and bad requests get ok=false answers."""
    async with running_gateway(config(tmp_path, broker, scanner)) as gw:
        await scanner.wait_opened(timeout=10)
        async with asyncio.timeout(10):
            await gw.publisher.connected.wait()
        await scan_all_sent(gw, scanner, 5)
        await gw.buffer.prune(retention=1, now=9e12)  # everything sent is now gone
        await scanner.type_code("KEPT", aim="")
        async with aiomqtt.Client(broker.host, broker.port, identifier="asker") as client:
            await client.subscribe(f"{ROOT}/cmd/result", qos=1)
            requests = {
                "unknown": {"device": "nope", "from_seq": 1},
                "beyond": {"device": "dock-1", "from_seq": 1, "to_seq": 99},
                "pruned": {"device": "dock-1", "from_seq": 1, "to_seq": 6},
                "bad": {"device": "dock-1", "from_seq": "one"},
                "ok": {"device": "dock-1", "from_seq": 6},
            }
            await asyncio.sleep(0.3)  # let the live event get its PUBACK
            for rid, body in requests.items():
                await client.publish(
                    f"{ROOT}/cmd/replay", json.dumps({"request_id": rid, **body}), qos=1
                )
            answers = {}
            async with asyncio.timeout(10):
                async for message in client.messages:
                    body = json.loads(message.payload)
                    answers[body["request_id"]] = body
                    if len(answers) == len(requests):
                        break
    assert answers["ok"]["ok"] is True and answers["ok"]["count"] == 1, answers["ok"]
    for rid in ("unknown", "beyond", "pruned", "bad"):
        assert answers[rid]["ok"] is False and answers[rid]["detail"], rid
    assert "unknown device" in answers["unknown"]["detail"]
    assert "no longer" in answers["pruned"]["detail"]


async def test_cli_replay_works_with_the_daemon_stopped(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector, scanner: ScannerSimulator
) -> None:
    """edge-gateway replay reads the buffer file and publishes the range itself, original ids."""
    cfg = config(tmp_path, broker, scanner)
    async with running_gateway(cfg) as gw:
        await scanner.wait_opened(timeout=10)
        async with asyncio.timeout(10):
            await gw.publisher.connected.wait()
        await scan_all_sent(gw, scanner, 10)
    assert await central.wait_for(10, timeout=10)
    first_ids = {m["seq"]: m["id"] for m in central.messages}
    done = await asyncio.to_thread(
        cli,
        "replay",
        "--config",
        str(cfg),
        "--device",
        "dock-1",
        "--from-seq",
        "3",
        "--to-seq",
        "7",
    )
    assert done.returncode == 0, done.stderr
    assert "re-published 5 events" in done.stdout
    async with asyncio.timeout(10):
        while sum(1 for m in central.messages if m.get("replayed")) < 5:
            await asyncio.sleep(0.05)
    replayed = [m for m in central.messages if m.get("replayed")]
    assert [m["seq"] for m in replayed] == [3, 4, 5, 6, 7]
    assert all(first_ids[m["seq"]] == m["id"] and m["historical"] for m in replayed)
    unknown = await asyncio.to_thread(
        cli, "replay", "--config", str(cfg), "--device", "nope", "--from-seq", "1"
    )
    assert unknown.returncode == 2 and "unknown device" in unknown.stderr
    with sqlite3.connect(tmp_path / "state" / "buffer.db") as conn:
        assert conn.execute("SELECT count(*) FROM events WHERE state = 2").fetchone() == (10,)


async def ask(
    client: aiomqtt.Client, requests: dict[str, dict[str, int | str]], *, answers: int = 0
) -> dict:
    """Publish replay commands in order and collect ``answers`` answers (default: one each)."""
    for rid, body in requests.items():
        payload = json.dumps({"request_id": rid, "device": "dock-1", **body})
        await client.publish(f"{ROOT}/cmd/replay", payload, qos=1)
    got: dict[str, dict] = {}
    async with asyncio.timeout(20):
        async for message in client.messages:
            body = json.loads(message.payload)
            got[body["request_id"]] = body
            if len(got) == (answers or len(requests)):
                return got
    return got  # pragma: no cover - the timeout raises first


async def test_open_ended_replay_keeps_the_span_limit_and_queued_work_is_bounded(
    tmp_path: Path, broker: MosquittoBroker, scanner: ScannerSimulator, monkeypatch
) -> None:
    """A replay without to_seq over a history longer than the span limit is refused (it used
    to replay all of it), and the events waiting replays cover together are bounded (16 such
    requests could be queued) (issue 13, defect 7)."""
    monkeypatch.setattr("gateway.replay.MAX_REPLAY_SPAN", 20, raising=False)
    monkeypatch.setattr("gateway.replay.MAX_QUEUED_SPAN", 20, raising=False)
    cfg = write_config(
        tmp_path / "gateway.toml",
        mqtt_port=broker.port,
        state_dir=tmp_path / "state",
        devices=[scanner_device("dock-1", scanner.link)],
        mqtt={"replay_rate": 10.0},
    )
    async with running_gateway(cfg) as gw:
        await scanner.wait_opened(timeout=10)
        async with asyncio.timeout(10):
            await gw.publisher.connected.wait()
        await scan_all_sent(gw, scanner, 30)
        async with aiomqtt.Client(broker.host, broker.port, identifier="asker") as client:
            await client.subscribe(f"{ROOT}/cmd/result", qos=1)
            first = await ask(client, {"all": {"from_seq": 1}, "tail": {"from_seq": 15}})
            # One running (not counted), then 15 events waiting: 10 more, or an open end that
            # resolves to 6 (25..30), are over the bound of 20 and refused; 5 more still fit.
            running = {"request_id": "running", "device": "dock-1", "from_seq": 1, "to_seq": 20}
            await client.publish(f"{ROOT}/cmd/replay", json.dumps(running), qos=1)
            async with asyncio.timeout(5):
                while gw.replays.active is None:
                    await asyncio.sleep(0.01)
            queued = await ask(
                client,
                {
                    "waiting": {"from_seq": 1, "to_seq": 15},
                    "over": {"from_seq": 11, "to_seq": 20},
                    "open": {"from_seq": 25},
                    "fits": {"from_seq": 26, "to_seq": 30},
                },
                answers=5,
            )
        queued_span_after = getattr(gw.replays, "queued_span", None)
    assert first["all"]["ok"] is False, first["all"]
    assert "longer than 20 events" in first["all"]["detail"]
    assert "1..30" in first["all"]["detail"]
    assert first["tail"]["ok"] is True and first["tail"]["count"] == 16, first["tail"]
    assert (first["tail"]["from_seq"], first["tail"]["to_seq"]) == (15, 30)
    for rid in ("running", "waiting", "fits"):
        assert rid in queued, queued
        assert queued[rid]["ok"] is True, queued[rid]
    for rid in ("over", "open"):
        assert queued[rid]["ok"] is False and "busy" in queued[rid]["detail"], queued[rid]
    assert "cover 15 events" in queued["over"]["detail"]
    assert queued_span_after == 0, "every admitted span released once served"
