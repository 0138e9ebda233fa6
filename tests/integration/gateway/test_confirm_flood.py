"""Found by the second review of issue 13 (fixed; the text says what went wrong before): a flood of invalid confirms (no rate limit on ``{root}/confirm``) delays every scan.

Commands are rate-limited before parsing (gateway/command_limits.py); confirms are not. An
invalid confirm is acknowledged at once (gateway/inbound.py ``_confirm``), so the broker sends the
next at once. One object with 12,000 unknown keys (64 KiB) costs ~13 ms of pydantic on the event
loop (``extra="forbid"`` builds an error per key; gateway/commands.py ``parse_confirms``), so a
publisher on the confirm topic keeps the loop busy: a scan's good-read at ``stored`` went from
~13 ms to a median of ~250 ms, worst ~500 ms, for as long as the flood lasts.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

from simulators.broker import MosquittoBroker
from simulators.scanner import ScannerSimulator
from tests.support import running_gateway, scanner_device, write_config

ROOT = "edge/site-test/gw-test"


async def test_an_invalid_confirm_flood_does_not_delay_scans(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    item = json.dumps({"id": "x", "status": "accepted", **{f"{j:x}": 0 for j in range(12000)}})
    line = item[:65530].rsplit(",", 1)[0] + "}"
    flood = tmp_path / "flood.txt"
    flood.write_text((line + "\n") * 1500)
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

            async def latencies(n: int) -> list[float]:
                out = []
                for i in range(n):
                    before = len(sim.feedback)
                    start = time.perf_counter()
                    await sim.type_code(f"C{i}", aim="")
                    await sim.wait_feedback(before + 1, timeout=20)
                    out.append(time.perf_counter() - start)
                    await asyncio.sleep(0.05)
                return out

            base = await latencies(20)
            with flood.open() as feed:
                attacker = subprocess.Popen(
                    [
                        "mosquitto_pub",
                        "-h",
                        broker.host,
                        "-p",
                        str(broker.port),
                        "-q",
                        "1",
                        "-t",
                        f"{ROOT}/confirm",
                        "-l",
                    ],
                    stdin=feed,
                )
                try:
                    await asyncio.sleep(0.5)
                    during = sorted(await latencies(30))
                finally:
                    attacker.kill()
                    attacker.wait()
            counters = dict(gw.inbound.counters)
    assert during[-1] < max(0.1, 4 * max(base)), (
        f"scan good-read latency during the flood: median {during[15] * 1000:.0f} ms, worst"
        f" {during[-1] * 1000:.0f} ms (before it: worst {max(base) * 1000:.0f} ms); {counters}"
    )
