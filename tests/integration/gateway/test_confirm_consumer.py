"""The reference consumer: MQTT 5 shared subscription, validation, confirms in batches."""

from __future__ import annotations

import asyncio
from pathlib import Path

from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.scanner import ScannerSimulator
from tests.support import running_gateway, scanner_device, write_config

SOURCE = "/site-test/gw-test/dock-1"


async def test_two_instances_on_one_shared_subscription_split_the_stream(
    tmp_path: Path, broker: MosquittoBroker, scanner: ScannerSimulator
) -> None:
    """$share/central/...: each event goes to one of two instances; together they see all."""
    instances = [
        CentralCollector(broker.host, broker.port, client_id=f"central-{n}", share_group="central")
        for n in range(2)
    ]
    tasks = [asyncio.create_task(c.run()) for c in instances]
    total = 200
    try:
        async with asyncio.timeout(10):
            for c in instances:
                await c.connected.wait()
        cfg = write_config(
            tmp_path / "gateway.toml",
            mqtt_port=broker.port,
            state_dir=tmp_path / "state",
            devices=[scanner_device("dock-1", scanner.link)],
        )
        async with running_gateway(cfg) as gw:
            await scanner.wait_opened(timeout=10)
            async with asyncio.timeout(10):
                await gw.publisher.connected.wait()
            await scanner.write_raw("".join(f"S{i:05d}\r" for i in range(total)).encode())
            async with asyncio.timeout(15):
                while sum(c.unique_count() for c in instances) < total:
                    await asyncio.sleep(0.05)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    seqs = [set(c.sources[SOURCE].seqs) for c in instances]
    assert all(seqs), "both instances got a share"
    assert not seqs[0] & seqs[1], "no event went to both"
    assert seqs[0] | seqs[1] == set(range(1, total + 1))
    assert not any(c.invalid for c in instances), "every event passed the SDK and the schema"
