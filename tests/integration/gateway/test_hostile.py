"""10,000 hostile messages on the confirm and cmd topics: no crash, nothing buffered lost."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.scanner import ScannerSimulator
from tests.support import running_gateway, scanner_device, write_config

ROOT = "edge/site-test/gw-test"


@pytest.fixture
async def scanner(tmp_path: Path) -> AsyncIterator[ScannerSimulator]:
    async with ScannerSimulator(tmp_path / "scanner0") as sim:
        yield sim


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
            while (await gw.buffer.stats()).devices["dock-1"].last_sent_seq < 50:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # the last acks commit
        with sqlite3.connect(db) as conn:
            before = conn.execute(
                "SELECT id, seq, state, payload FROM events ORDER BY seq"
            ).fetchall()
        rng = random.Random(1234)
        async with aiomqtt.Client(broker.host, broker.port, identifier="attacker") as client:
            client.pending_calls_threshold = 1000
            for start in range(0, 10_000, 200):
                await asyncio.gather(
                    *(client.publish(*hostile(rng, n), qos=1) for n in range(start, start + 200))
                )
        async with asyncio.timeout(20):
            while (
                gw.inbound.counters["confirm_messages"] + gw.inbound.counters["cmd_messages"]
                < 10_000
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
    assert counters["confirm_invalid"] > 1000 and counters["cmd_invalid"] > 1000
    assert counters["confirm_unknown"] > 100
    assert counters.get("confirm_accepted", 0) == 0
    assert scanner.feedback_bytes() == b""
