"""Simulated reader -> real gateway -> real Mosquitto -> central, and GPO feedback back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema

from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.llrp_population import epc_for
from simulators.llrp_reader import LlrpReaderSimulator
from tests.support import running_gateway, write_config

SCHEMAS = Path(__file__).resolve().parents[3] / "gateway" / "schemas"
SOURCE = "/site-test/gw-test/portal"
ARRIVED, DEPARTED = "warehouse.rfid.tag.arrived.v1", "warehouse.rfid.tag.departed.v1"


def config(tmp_path: Path, broker: MosquittoBroker, sim: LlrpReaderSimulator, extra: str) -> Path:
    """write_config has no arrays or tables, so the device entry is TOML written here."""
    path = write_config(
        tmp_path / "gateway.toml", mqtt_port=broker.port, state_dir=tmp_path / "state", devices=[]
    )
    device = f"""
[[devices]]
id = "portal"
driver = "rfid-llrp"
host = "127.0.0.1"
port = {sim.port}
departure_s = 0.5
keepalive_s = 0.5
reconnect_min = 0.05
reconnect_max = 0.2
zones = {{ dock = {{ antennas = [1, 2] }} }}
gpo_good = 1
gpo_pending = 3
{extra}
"""
    path.write_text(path.read_text() + device)
    return path


def rising(sim: LlrpReaderSimulator, port: int) -> int:
    return sum(1 for _, p, state in sim.gpo_writes if p == port and state)


async def test_pallet_of_40_through_the_gateway_gives_40_arrived_then_40_departed(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector
) -> None:
    """40 tags at 1,000 reads/s: central gets exactly 80 valid events, arrivals first; each
    delivered arrival's confirmation shows up as a GPO pulse (merged while the light is on),
    and departures pulse nothing."""
    async with LlrpReaderSimulator() as sim:
        cfg = config(tmp_path, broker, sim, 'confirm = "delivered"\ngpo_pulse_ms = 50')
        async with running_gateway(cfg) as gw:
            async with asyncio.timeout(10):
                await gw.publisher.connected.wait()
            await sim.wait_for(lambda: sim.active, timeout=10)
            sim.population.pallet([epc_for(i) for i in range(40)], sim.now(), 1.5, reads_per_s=25)
            assert await central.wait_for(80, timeout=15), f"only {central.unique_count()}"
            await asyncio.sleep(0.5)
            driver = gw.drivers["portal"]
            good = gw.confirmations.outcomes["good"]
            pulses, merged = driver.gpo.pulses, driver.gpo.merged
            await sim.wait_for(lambda: sim.gpo_writes[-1][2] is False, timeout=2)
        assert sim.reads_sent >= 1300
        types = [m["type"] for m in central.messages]
        assert types == [ARRIVED] * 40 + [DEPARTED] * 40
        assert [m["seq"] for m in central.messages] == list(range(1, 81))
        assert len({m["data"]["epc"] for m in central.messages}) == 40
        assert central.sources[SOURCE].duplicates == 0
        for message in central.messages:
            schema = json.loads((SCHEMAS / f"{message['type']}.json").read_text())
            jsonschema.validate(message, schema)
        assert good == 40, "every arrival reached 'delivered'; departures get no feedback"
        assert pulses + merged == good
        assert rising(sim, 1) == pulses >= 1
        assert rising(sim, 3) == 0


async def test_gpo_pulses_match_confirmations_one_by_one(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector
) -> None:
    """Tags 0.3 s apart: each delivered event gives one good pulse; with the broker down,
    each event gives one pending pulse after confirm_timeout instead."""
    async with LlrpReaderSimulator() as sim:
        extra = 'confirm = "delivered"\nconfirm_timeout = 0.2\ngpo_pulse_ms = 40'
        cfg = config(tmp_path, broker, sim, extra)
        async with running_gateway(cfg) as gw:
            async with asyncio.timeout(10):
                await gw.publisher.connected.wait()
            await sim.wait_for(lambda: sim.active, timeout=10)
            base = rising(sim, 1)
            for i in range(3):
                sim.population.linger(epc_for(100 + i), sim.now(), antennas=(1,))
                await asyncio.sleep(0.3)
            await sim.wait_for(lambda: rising(sim, 1) - base == 3, timeout=5)
            assert gw.confirmations.outcomes["good"] == 3
            broker.stop()
            for i in range(2):
                sim.population.linger(epc_for(200 + i), sim.now(), antennas=(1,))
                await asyncio.sleep(0.3)
            await sim.wait_for(lambda: rising(sim, 3) == 2, timeout=5)
            assert gw.confirmations.outcomes["pending"] == 2
            assert rising(sim, 1) - base == 3, "no good pulse without a PUBACK"
            broker.start()
            assert await central.wait_for(5, timeout=15)
        assert {m["data"]["epc"] for m in central.messages} == {
            *(epc_for(100 + i) for i in range(3)),
            *(epc_for(200 + i) for i in range(2)),
        }
