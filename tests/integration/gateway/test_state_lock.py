"""One daemon per state directory, with two real processes (issue 14, item 1)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from gateway.statelock import holder
from simulators.broker import MosquittoBroker
from tests.support import GatewayProcess, cli, wait_until, write_config


async def test_second_run_on_one_state_dir_exits_1_and_status_still_works(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A second `run` refuses to start (exit 1, the holder's pid named); `status` works beside."""
    state = tmp_path / "state"
    config = write_config(tmp_path / "gw.toml", mqtt_port=broker.port, state_dir=state, devices=[])
    first = GatewayProcess(config, tmp_path / "first.log")
    first.start()
    try:
        await wait_until(
            lambda: "mqtt_connected" in [e.get("event") for e in first.log_lines()], timeout=20
        )
        assert first.process is not None
        pid = first.process.pid
        assert holder(state) == pid
        second = await asyncio.to_thread(cli, "run", "--config", str(config))
        assert second.returncode == 1, second.stdout + second.stderr
        assert f"edge-gateway: already running (pid {pid}) on {state}" in second.stderr
        assert "Traceback" not in second.stdout + second.stderr
        status = await asyncio.to_thread(cli, "status", "--config", str(config), "--json")
        assert status.returncode == 0, status.stderr
        json.loads(status.stdout)
        assert first.process.poll() is None  # the first daemon is untouched
    finally:
        assert first.terminate() == 0
    assert holder(state) is None
    again = GatewayProcess(config, tmp_path / "again.log")
    again.start()  # the lock went with the process: a restart is not blocked by the file
    try:
        await wait_until(
            lambda: "gateway_started" in [e.get("event") for e in again.log_lines()], timeout=20
        )
    finally:
        assert again.terminate() == 0


async def test_lock_of_a_killed_daemon_does_not_block_a_restart(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """SIGKILL leaves the lock file with a dead pid in it; the next `run` starts anyway."""
    state = tmp_path / "state"
    config = write_config(tmp_path / "gw.toml", mqtt_port=broker.port, state_dir=state, devices=[])
    daemon = GatewayProcess(config, tmp_path / "gw.log")
    daemon.start()
    await wait_until(lambda: holder(state) is not None, timeout=20)
    daemon.kill9()
    assert (state / "gateway.lock").exists()
    assert holder(state) is None
    daemon.start()
    try:
        await wait_until(
            lambda: [e.get("event") for e in daemon.log_lines()].count("gateway_started") == 1,
            timeout=20,
        )
        assert daemon.process is not None
        assert holder(state) == daemon.process.pid
    finally:
        assert daemon.terminate() == 0


async def test_two_gateways_with_one_client_id_are_named_once(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Two daemons (own state dirs) sharing a client id flap; each says why, once, not per drop."""
    daemons = []
    for name in ("a", "b"):
        config = write_config(
            tmp_path / f"{name}.toml",
            mqtt_port=broker.port,
            state_dir=tmp_path / name,
            devices=[],
            mqtt={"reconnect_min": 0.05, "reconnect_max": 0.2},
        )
        daemon = GatewayProcess(config, tmp_path / f"{name}.log")
        daemon.start()
        daemons.append(daemon)

    def warned(daemon: GatewayProcess) -> list[dict[str, object]]:
        return [
            e for e in daemon.log_lines() if e.get("event") == "mqtt_client_id_in_use_elsewhere"
        ]

    def drops(daemon: GatewayProcess) -> int:
        return [e.get("event") for e in daemon.log_lines()].count("mqtt_disconnected")

    try:
        await wait_until(lambda: any(warned(d) for d in daemons), timeout=30)
        await wait_until(lambda: all(drops(d) >= 8 for d in daemons), timeout=30)
    finally:
        for daemon in daemons:
            assert daemon.terminate() == 0
    for daemon in daemons:
        assert len(warned(daemon)) <= 1, warned(daemon)
    hit = next(w for d in daemons for w in warned(d))
    assert hit["client_id"] == "edge-gateway-site-test-gw-test"
