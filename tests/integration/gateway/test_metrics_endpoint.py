"""The Prometheus endpoint of a running gateway reflects real scans and device state."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

from simulators.broker import MosquittoBroker, free_port
from simulators.central import CentralCollector
from simulators.conveyor import ConveyorSimulator
from simulators.conveyor_model import ConveyorModel
from simulators.scanner import ScannerSimulator
from tests.support import running_gateway, scanner_device, write_config


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


async def test_metrics_show_stored_sent_and_device_up(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector
) -> None:
    """Five scans: stored and sent counters reach 5, the device is up, the broker connected."""
    port = free_port()
    async with ScannerSimulator(tmp_path / "scanner0") as sim:
        config = write_config(
            tmp_path / "gw.toml",
            mqtt_port=broker.port,
            state_dir=tmp_path / "state",
            devices=[scanner_device("dock-1", sim.link)],
            metrics={"listen": f"127.0.0.1:{port}"},
        )
        async with running_gateway(config):
            await sim.wait_opened(timeout=10)
            for i in range(5):
                await sim.type_code(f"M{i}", aim="")
            assert await central.wait_for(5, timeout=10)
            async with asyncio.timeout(10):
                while 'edge_gateway_event_transitions_total{transition="sent"} 5.0' not in (
                    text := await asyncio.to_thread(scrape, port)
                ):
                    await asyncio.sleep(0.2)
    assert 'edge_gateway_event_transitions_total{transition="stored"} 5.0' in text
    assert 'edge_gateway_device_up{device="dock-1"} 1.0' in text
    assert (
        'edge_gateway_events_stored_total{device="dock-1",type="warehouse.barcode.scanned.v1"} 5.0'
        in text
    )
    assert 'edge_gateway_device_last_seq{device="dock-1"} 5.0' in text
    assert "edge_gateway_mqtt_connected 1.0" in text
    assert 'edge_gateway_feedback_total{outcome="good"} 5.0' in text
    assert "edge_gateway_feedback_latency_seconds_count 5.0" in text
    assert "edge_gateway_publish_latency_seconds_count 5.0" in text


async def test_modbus_poll_overruns_are_a_series(tmp_path: Path, broker: MosquittoBroker) -> None:
    """A conveyor answering busy to everything cannot be polled every 20 ms: the driver's
    overruns show as edge_gateway_poll_overruns_total for that device."""
    port = free_port()
    async with ConveyorSimulator(model=ConveyorModel(noise=0.0), tcp_port=0) as sim:
        sim.fail(6)  # busy: every poll retries twice, 50 + 100 ms
        config = write_config(
            tmp_path / "gw.toml",
            mqtt_port=broker.port,
            state_dir=tmp_path / "state",
            devices=[],
            metrics={"listen": f"127.0.0.1:{port}"},
        )
        config.write_text(
            config.read_text()
            + f"""
[[devices]]
id = "conveyor-a"
driver = "modbus"
host = "127.0.0.1"
port = {sim.port}
interval = 0.02

[[devices.points]]
name = "belt_speed"
table = "input"
address = 0
"""
        )
        async with running_gateway(config):
            async with asyncio.timeout(10):
                while not re.search(
                    r'edge_gateway_poll_overruns_total\{device="conveyor-a"\} [1-9]',
                    await asyncio.to_thread(scrape, port),
                ):
                    await asyncio.sleep(0.2)
