"""A flood of crafted invalid confirms must not cost the event loop (found by the second review
of issue 13).

An invalid confirm is acknowledged at once, so the broker sends the next at once. One object of
12,000 unknown keys (64 KiB) used to cost ~13 ms of pydantic on the event loop (``extra="forbid"``
builds an error per key), so a publisher on the confirm topic kept the loop busy: a scan's
good-read at ``stored`` went from ~13 ms to a median of ~250 ms while the flood lasted. Such an
object is now refused from its keys alone, before pydantic. This test checks that on the real
path (broker, gateway, scanner) without timing it: pydantic is never asked, scans keep their
good-read, and every flood message is counted invalid. The latency itself is a bench figure.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from gateway import commands
from simulators.broker import MosquittoBroker
from simulators.scanner import ScannerSimulator
from tests.support import running_gateway, scanner_device, wait_until, write_config

ROOT = "edge/site-test/gw-test"
FLOOD = 300


async def test_an_invalid_confirm_flood_never_reaches_full_validation(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    item = json.dumps({"id": "x", "status": "accepted", **{f"{j:x}": 0 for j in range(12000)}})
    line = item[:65530].rsplit(",", 1)[0] + "}"
    flood = tmp_path / "flood.txt"
    flood.write_text((line + "\n") * FLOOD)
    validated = 0
    real_validate = commands.Confirm.model_validate

    def counting(obj: object, *args: object, **kwargs: object) -> commands.Confirm:
        nonlocal validated
        validated += 1
        return real_validate(obj, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(commands.Confirm, "model_validate", counting)
    async with ScannerSimulator(tmp_path / "scanner0") as sim:
        device = scanner_device(
            "dock-1", sim.link, feedback="custom", feedback_good="G", feedback_bad="B"
        )
        cfg = write_config(
            tmp_path / "gateway.toml",
            mqtt_port=broker.port,
            state_dir=tmp_path / "state",
            devices=[device],
        )
        async with running_gateway(cfg) as gw:
            await sim.wait_opened(timeout=10)
            async with asyncio.timeout(10):
                await gw.publisher.connected.wait()
            with flood.open() as feed:
                attacker = subprocess.Popen(
                    [
                        *("mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1"),
                        *("-t", f"{ROOT}/confirm", "-l"),
                    ],
                    stdin=feed,
                )
                try:
                    for i in range(10):  # scans during the flood still get their good-read
                        before = len(sim.feedback)
                        await sim.type_code(f"C{i}", aim="")
                        await sim.wait_feedback(before + 1, timeout=20)
                    await wait_until(
                        lambda: gw.inbound.counters["confirm_invalid"] >= FLOOD, timeout=60
                    )
                finally:
                    attacker.kill()
                    attacker.wait()
            counters = dict(gw.inbound.counters)
    assert sim.feedback_bytes().count(b"G") >= 10, sim.feedback_bytes()
    assert counters["confirm_invalid"] == FLOOD, counters
    assert validated == 0, f"{validated} flood objects reached pydantic"
