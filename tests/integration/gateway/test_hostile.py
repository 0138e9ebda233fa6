"""10,000 hostile messages on the confirm and cmd topics: no crash, nothing buffered lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
from pathlib import Path

import aiomqtt
import pytest
import structlog.testing

from gateway.mqtt_packets import MAX_PACKET_SIZE
from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.scanner import ScannerSimulator
from tests.support import device_figures, running_gateway, scanner_device, write_config

ROOT = "edge/site-test/gw-test"


def hostile(rng: random.Random, n: int) -> tuple[str, bytes]:
    topic = f"{ROOT}/confirm" if n % 2 else f"{ROOT}/cmd/replay"
    kind = n % 9
    if kind == 0:
        return topic, bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 1 and n % 500 == 1:
        return topic, b"[" + b'{"id":"x","status":"accepted"},' * 5000 + b"{}]"  # > 64 KiB
    if kind == 2:
        return topic, json.dumps({"id": rng.random(), "status": ["accepted"]}).encode()
    if kind == 3:
        return topic, json.dumps({"id": f"other-gw-{n}", "status": "accepted"}).encode()
    if kind == 4:
        return topic, json.dumps({"request_id": n, "device": "dock-1", "from_seq": -5}).encode()
    if kind == 5:
        return topic, json.dumps({"request_id": f"r{n}", "device": "../..", "from_seq": 1}).encode()
    if kind == 6:
        return topic, b"[" * 10_000
    if kind == 7:
        return topic, json.dumps(
            [{"id": str(i), "status": "rejected"} for i in range(1001)]
        ).encode()
    return topic, json.dumps({"request_id": None, "from_seq": 1, "to_seq": 2**70}).encode()


@pytest.mark.slow
async def test_ten_thousand_hostile_messages(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector, scanner: ScannerSimulator
) -> None:
    """Random bytes, huge payloads, wrong types, other gateways' ids: counted, never a crash."""
    db = tmp_path / "state" / "buffer.db"
    cfg = write_config(
        tmp_path / "gateway.toml",
        mqtt_port=broker.port,
        state_dir=tmp_path / "state",
        devices=[scanner_device("dock-1", scanner.link, confirm="accepted", confirm_timeout=60)],
    )
    async with running_gateway(cfg) as gw:
        await scanner.wait_opened(timeout=10)
        async with asyncio.timeout(10):
            await gw.publisher.connected.wait()
        await scanner.write_raw(b"".join(b"H%04d\r" % i for i in range(50)))
        assert await central.wait_for(50, timeout=10)
        async with asyncio.timeout(10):
            while (await device_figures(gw, "dock-1")).last_sent_seq < 50:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # the last acks commit
        with sqlite3.connect(db) as conn:
            before = conn.execute(
                "SELECT id, seq, state, payload FROM events ORDER BY seq"
            ).fetchall()
        rng = random.Random(1234)
        messages = [hostile(rng, n) for n in range(10_000)]
        # Over our Maximum Packet Size: the broker drops these for us (issue 18, finding 1).
        oversized = sum(len(payload) > MAX_PACKET_SIZE for _, payload in messages)
        async with aiomqtt.Client(broker.host, broker.port, identifier="attacker") as client:
            client.pending_calls_threshold = 1000
            for start in range(0, 10_000, 200):
                await asyncio.gather(
                    *(client.publish(*m, qos=1) for m in messages[start : start + 200])
                )
        async with asyncio.timeout(20):
            while (
                gw.inbound.counters["confirm_messages"] + gw.inbound.counters["cmd_messages"]
                < 10_000 - oversized
            ):
                await asyncio.sleep(0.05)
        assert gw.publisher.connected.is_set()
        await scanner.type_code("AFTER", aim="")
        assert await central.wait_for(51, timeout=10), "the gateway still works"
        counters = dict(gw.inbound.counters)
    with sqlite3.connect(db) as conn:
        after = conn.execute("SELECT id, seq, state, payload FROM events ORDER BY seq").fetchall()
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert after[:50] == before, "buffered events intact"
    assert "handler_error" not in counters
    assert oversized > 0
    assert counters["confirm_invalid"] > 1000
    # Commands beyond the rate limit are refused before they are parsed (issue 18, finding 8).
    assert counters["cmd_invalid"] + counters["cmd_rate_limited"] > 4000
    assert counters["confirm_unknown"] > 100
    assert counters.get("confirm_accepted", 0) == 0
    assert scanner.feedback_bytes() == b""


def _no_raw_newline_and_bounded(value: object, bound: int) -> None:
    text = value if isinstance(value, str) else repr(value)
    assert "\n" not in text and "\r" not in text, text[:200]
    assert len(text) <= bound, f"{len(text)} chars echoed: {text[:200]}..."


async def test_a_huge_key_with_newlines_is_not_echoed_raw(
    tmp_path: Path, broker: MosquittoBroker, scanner: ScannerSimulator
) -> None:
    """A 60 KB unknown key full of newlines in a confirm and a cmd: the log lines and the
    cmd/result name it, bounded and escaped, never verbatim (issue 13, defect 7)."""
    key = ("evil\n" + "A" * 195) * 300  # 60 KB, 300 newlines
    cfg = write_config(
        tmp_path / "gateway.toml",
        mqtt_port=broker.port,
        state_dir=tmp_path / "state",
        devices=[scanner_device("dock-1", scanner.link)],
    )
    with structlog.testing.capture_logs() as logs:
        async with running_gateway(cfg) as gw:
            async with asyncio.timeout(10):
                await gw.publisher.connected.wait()
            async with aiomqtt.Client(broker.host, broker.port, identifier="attacker") as client:
                await client.subscribe(f"{ROOT}/cmd/result", qos=1)
                confirm = {"id": "x", "status": "accepted", key: 1}
                command = {"request_id": "r-1", "device": "dock-1", "from_seq": 1, key: 1}
                newline_id = {"request_id": "r\n2", "device": "dock-1", "from_seq": 1, key: 1}
                for topic, body in (
                    (f"{ROOT}/confirm", confirm),
                    (f"{ROOT}/cmd/replay", command),
                    (f"{ROOT}/cmd/replay", newline_id),
                ):
                    payload = json.dumps(body).encode()
                    assert 60_000 < len(payload) < 64 * 1024
                    await client.publish(topic, payload, qos=1)
                answers: list[aiomqtt.Message] = []
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2):
                        async for message in client.messages:
                            answers.append(message)  # noqa: PERF401 - kept when the timeout ends it
            async with asyncio.timeout(5):
                while gw.inbound.counters["cmd_invalid"] < 2:
                    await asyncio.sleep(0.02)
    answer = answers[0]
    assert len(answer.payload) < 600, answer.payload[:300]
    body = json.loads(answer.payload)
    assert body["request_id"] == "r-1" and body["ok"] is False
    _no_raw_newline_and_bounded(body["detail"], 300)
    assert "evil" in body["detail"], "the key is still named, so a typo can be found"
    assert len(answers) == 1, "one answer: none for the unprintable request id"
    refusals = [e for e in logs if e["event"] in ("confirm_invalid", "cmd_invalid")]
    assert {e["event"] for e in refusals} == {"confirm_invalid", "cmd_invalid"}
    for entry in logs:
        for value in entry.values():
            _no_raw_newline_and_bounded(value, 2_000)
