"""Scanner (real pty) -> gateway -> real Mosquitto -> central, with outages, crashes and feedback."""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from cloudevents.core.formats.json import JSONFormat

from buffer.stats import read_stats
from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.scanner import ScannerSimulator
from tests.support import (
    GatewayProcess,
    cli,
    running_gateway,
    scanner_device,
    wait_until,
    write_config,
)

GOOD, BAD, PENDING = b"G\r", b"B\r", b"P\r"
FEEDBACK = {
    "feedback": "custom",
    "feedback_good": "G\r",
    "feedback_bad": "B\r",
    "feedback_pending": "P\r",
}
SOURCE = "/site-test/gw-test/dock-1"


def schema_for(event_type: str) -> dict:
    text = resources.files("gateway").joinpath(f"schemas/{event_type}.json").read_text()
    return json.loads(text)


def config(tmp_path: Path, broker: MosquittoBroker, sim: ScannerSimulator, **device) -> Path:
    return write_config(
        tmp_path / "gateway.toml",
        mqtt_port=broker.port,
        state_dir=tmp_path / "state",
        devices=[scanner_device("dock-1", sim.link, **device)],
    )


async def test_scan_becomes_one_valid_cloudevent(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector, scanner: ScannerSimulator
) -> None:
    """An EAN-13 and a GS1-128 scan each arrive once, parse with the SDK, match our schema."""
    async with running_gateway(config(tmp_path, broker, scanner)):
        await scanner.wait_opened(timeout=10)
        await scanner.type_code("4006381333931", aim="]E0")
        await scanner.type_code("0109506000134352\x1d10LOT42\x1d17261231", aim="]C1")
        assert await central.wait_for(2, timeout=10)
    first, second = central.messages
    assert [first["seq"], second["seq"]] == [1, 2]
    assert first["source"] == SOURCE
    assert first["data"]["code"] == "4006381333931" and first["data"]["symbology"] == "]E0"
    assert second["data"]["gtin"] == "09506000134352"
    assert second["data"]["lot"] == "LOT42"
    assert second["data"]["expiry"] == "2026-12-31"
    for message in central.messages:
        raw = json.dumps(message).encode()
        event = JSONFormat().read(None, raw)
        assert event.get_specversion() == "1.0"
        assert event.get_extension("seq") == message["seq"]
        jsonschema.validate(
            message, schema_for(message["type"]), format_checker=jsonschema.FormatChecker()
        )
    assert central.sources[SOURCE].duplicates == 0


async def test_start_up_objects_are_frozen_while_running_and_released_at_stop(
    tmp_path: Path, broker: MosquittoBroker, scanner: ScannerSimulator
) -> None:
    """Full collections skip what start-up built (their pauses went from ~50 to ~17 ms under
    load, docs/performance.md); a stopped gateway leaves nothing frozen behind."""
    assert gc.get_freeze_count() == 0
    async with running_gateway(config(tmp_path, broker, scanner)):
        await wait_until(lambda: gc.get_freeze_count() > 0, timeout=10)
    assert gc.get_freeze_count() == 0


@pytest.mark.slow
async def test_broker_down_10s_while_200_scans_then_all_arrive_in_order(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector, scanner: ScannerSimulator
) -> None:
    """Broker stopped 10 s, 200 scans meanwhile: status shows the backlog; all arrive after."""
    cfg = config(tmp_path, broker, scanner)
    async with running_gateway(cfg) as gw:
        await scanner.wait_opened(timeout=10)
        async with asyncio.timeout(10):
            await gw.publisher.connected.wait()
        broker.stop()
        for i in range(200):
            await scanner.type_code(f"SKU{i:05d}", aim="")
            await asyncio.sleep(10 / 200)
        async with asyncio.timeout(10):
            while (await gw.buffer.stats()).unsent < 200:
                await asyncio.sleep(0.05)
        status = cli("status", "--config", str(cfg), "--json")
        assert status.returncode == 0, status.stderr
        body = json.loads(status.stdout)
        assert body["unsent"] == 200
        assert body["devices"]["dock-1"]["last_seq"] == 200
        assert body["devices"]["dock-1"]["pending"] == 200
        broker.start()
        assert await central.wait_for(200, timeout=30)
    seqs = [m["seq"] for m in central.messages if m["source"] == SOURCE]
    assert seqs == list(range(1, 201)), "contiguous and in order"
    assert [m["data"]["code"] for m in central.messages] == [f"SKU{i:05d}" for i in range(200)]


@pytest.mark.slow
async def test_kill9_with_5000_backlog_then_everything_delivered(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector, scanner: ScannerSimulator
) -> None:
    """A real daemon process, SIGKILLed mid-drain of a 5,000-event backlog, loses nothing."""
    cfg = config(tmp_path, broker, scanner)
    db = tmp_path / "state" / "buffer.db"
    daemon = GatewayProcess(cfg, tmp_path / "gateway.log")
    broker.stop()
    daemon.start()
    await scanner.wait_opened(timeout=20)
    total = 5000
    for start in range(0, total, 100):
        chunk = "".join(f"C{i:07d}\r" for i in range(start, start + 100))
        await scanner.write_raw(chunk.encode())
    async with asyncio.timeout(60):
        while (
            (stats := await read_stats(db)) is None
            or stats.devices.get("dock-1") is None
            or (stats.devices["dock-1"].last_seq < total)
        ):
            await asyncio.sleep(0.1)
    broker.start()
    async with asyncio.timeout(60):
        while central.unique_count() < 500:
            await asyncio.sleep(0.01)
    daemon.kill9()
    got_before_restart = central.unique_count()
    assert got_before_restart < total, "the kill must land mid-drain to mean anything"
    daemon.start()
    try:
        assert await central.wait_for(total, timeout=90), f"only {central.unique_count()}"
    finally:
        assert daemon.terminate() == 0
    track = central.sources[SOURCE]
    assert track.missing() == []
    assert track.highest == total
    assert track.conflicting == 0, "a redelivered seq always carries its original id"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    print(json.dumps({"delivered_before_kill": got_before_restart, "duplicates": track.duplicates}))


async def test_feedback_only_after_commit_at_stored_level(
    tmp_path: Path, broker: MosquittoBroker, scanner: ScannerSimulator
) -> None:
    """confirm=stored: the good beep comes, and when it does the event is already on disk."""
    cfg = config(tmp_path, broker, scanner, confirm="stored", **FEEDBACK)
    async with running_gateway(cfg):
        await scanner.wait_opened(timeout=10)
        for i in range(5):
            await scanner.type_code(f"ST{i}", aim="")
            await scanner.wait_feedback(lambda b, n=i + 1: b.count(GOOD) >= n, timeout=5)
            with sqlite3.connect(tmp_path / "state" / "buffer.db") as conn:
                count = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            assert count == i + 1, "good feedback before the commit"


async def test_feedback_at_delivered_level_waits_for_puback_and_times_out_to_pending(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector, scanner: ScannerSimulator
) -> None:
    """confirm=delivered: good only after PUBACK; with the broker down, pending and never good."""
    cfg = config(tmp_path, broker, scanner, confirm="delivered", confirm_timeout=1.0, **FEEDBACK)
    db = tmp_path / "state" / "buffer.db"
    async with running_gateway(cfg) as gw:
        await scanner.wait_opened(timeout=10)
        async with asyncio.timeout(10):
            await gw.publisher.connected.wait()
        await scanner.type_code("DELIVERED-1", aim="")
        await scanner.wait_feedback(lambda b: GOOD in b, timeout=5)
        with sqlite3.connect(db) as conn:  # published: in flight, or already recorded sent
            assert conn.execute("SELECT state FROM events WHERE seq = 1").fetchone()[0] >= 1
        assert await central.wait_for(1, timeout=10)  # the broker had it: delivered

        broker.stop()
        await scanner.type_code("DELIVERED-2", aim="")
        await scanner.wait_feedback(lambda b: PENDING in b, timeout=5)
        assert scanner.feedback_bytes().count(GOOD) == 1, "no good beep for an undelivered event"
        broker.start()
        assert await central.wait_for(2, timeout=20)
        await asyncio.sleep(0.5)
        assert scanner.feedback_bytes().count(GOOD) == 1, "no late good beep after pending"
    assert [m["data"]["code"] for m in central.messages][-1] == "DELIVERED-2"


async def test_unplug_and_replug_reports_down_then_up_once(
    tmp_path: Path,
    broker: MosquittoBroker,
    central: CentralCollector,
    scanner: ScannerSimulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Closing the pty master is an unplug: down once, up once on replug, later scans delivered."""
    async with running_gateway(config(tmp_path, broker, scanner)) as gw:
        await scanner.wait_opened(timeout=10)
        await scanner.type_code("BEFORE", aim="")
        assert await central.wait_for(1, timeout=10)
        await scanner.unplug()
        async with asyncio.timeout(10):
            while gw.device_states["dock-1"]["state"] != "down":
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # several reconnect attempts while unplugged
        await scanner.replug()
        await scanner.wait_opened(timeout=20)
        assert gw.device_states["dock-1"]["state"] == "up"
        await scanner.type_code("AFTER", aim="")
        assert await central.wait_for(2, timeout=10)
    out = capsys.readouterr().out
    assert out.count("device_down") == 1
    assert out.count("device_up") == 2  # first open, then the replug
    assert [m["data"]["code"] for m in central.messages] == ["BEFORE", "AFTER"]
    assert [m["seq"] for m in central.messages] == [1, 2]
