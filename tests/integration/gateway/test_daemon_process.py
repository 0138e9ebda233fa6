"""The daemon as a real process: systemd notifications, clean SIGTERM, CLI exit codes."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest

from buffer.stats import read_stats
from buffer.store import Buffer, NewEvent
from gateway.settings import load_settings
from gateway.status import watch_status
from simulators.broker import MosquittoBroker
from simulators.central import CentralCollector
from simulators.scanner import ScannerSimulator
from tests.support import GatewayProcess, cli, scanner_device, write_config


def receive_until(sock: socket.socket, wanted: bytes, timeout: float) -> list[bytes]:
    sock.settimeout(0.2)
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got.append(sock.recv(4096))
        except TimeoutError:
            continue
        if any(wanted in g for g in got):
            break
    return got


async def test_ready_then_stopping_and_exit_0_on_sigterm(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """READY=1 once up (startup time reported), STOPPING=1 on SIGTERM, exit 0, offline published."""
    async with ScannerSimulator(tmp_path / "scanner0") as sim:
        config = write_config(
            tmp_path / "gw.toml",
            mqtt_port=broker.port,
            state_dir=tmp_path / "state",
            devices=[scanner_device("dock-1", sim.link)],
        )
        path = tmp_path / "notify.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
            server.bind(str(path))
            daemon = GatewayProcess(config, tmp_path / "gw.log")
            started = time.monotonic()
            daemon.start(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000000"})
            ready = receive_until(server, b"READY=1", timeout=20)
            startup_s = time.monotonic() - started
            assert any(b"READY=1" in m for m in ready), ready
            assert any(b"WATCHDOG=1" in m for m in receive_until(server, b"WATCHDOG=1", timeout=5))
            assert daemon.terminate() == 0
            assert any(b"STOPPING=1" in m for m in receive_until(server, b"STOPPING=1", timeout=1))
    events = [line.get("event") for line in daemon.log_lines()]
    assert "gateway_started" in events
    assert "gateway_stopped" in events
    print(json.dumps({"startup_to_ready_s": round(startup_s, 3)}))


def test_check_config_exit_codes_and_no_traceback(tmp_path: Path) -> None:
    """Valid config: exit 0. Invalid: exit 2, every error as PATH:LINE: key: message, no traceback."""
    good = write_config(
        tmp_path / "good.toml", mqtt_port=1883, state_dir=tmp_path / "state", devices=[]
    )
    ok = cli("check-config", "--config", str(good))
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nid = "gw"\nsite = "s"\ncolour = "red"\n[mqtt]\nport = "x"\n')
    result = cli("check-config", "--config", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"{bad}:4: gateway.colour: unknown key")
    assert lines[1].startswith(f"{bad}:6: mqtt.port: ")
    run = cli("run", "--config", str(bad))
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    missing = cli("check-config", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2
    assert "cannot read config" in missing.stderr
    usage = cli("frobnicate")
    assert usage.returncode == 2


def test_status_without_a_buffer_yet_and_with_an_unusable_state_dir(tmp_path: Path) -> None:
    """status works before the daemon ever ran; run with an unusable state_dir exits 1, no traceback."""
    config = write_config(
        tmp_path / "gw.toml", mqtt_port=1, state_dir=tmp_path / "state", devices=[]
    )
    status = cli("status", "--config", str(config), "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["unsent"] == 0
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = write_config(
        tmp_path / "gw2.toml", mqtt_port=1, state_dir=blocker / "state", devices=[]
    )
    run = cli("run", "--config", str(config))
    assert run.returncode == 1
    assert "Traceback" not in run.stdout + run.stderr
    assert "buffer_unusable" in run.stdout


async def test_status_watch_shows_devices_and_newest_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The live view renders from the buffer file alone: device rows and the newest events."""
    config = write_config(
        tmp_path / "gw.toml", mqtt_port=1, state_dir=tmp_path / "state", devices=[]
    )

    buffer = await Buffer.open(tmp_path / "state" / "buffer.db", max_bytes=10**6)
    for i in range(3):
        body = f'{{"source":"/s/g/dock-9","seq":{i + 1},"data":{{"code":"W{i}"}}}}'.encode()
        await buffer.append(NewEvent(f"id{i}", "dock-9", "t", "x", False, lambda _s, b=body: b))
    await buffer.close()
    assert await watch_status(load_settings(config), interval=0.01, frames=2) == 0
    out = capsys.readouterr().out
    assert "dock-9" in out
    assert '"W2"' in out
    assert "pending" in out


def test_status_watch_cli_frame(tmp_path: Path) -> None:
    """`status --watch` and `--json` together are a usage error (exit 2)."""
    config = write_config(
        tmp_path / "gw.toml", mqtt_port=1, state_dir=tmp_path / "state", devices=[]
    )
    both = cli("status", "--config", str(config), "--json", "--watch")
    assert both.returncode == 2


@pytest.mark.slow
async def test_sigterm_under_load_stops_in_bound_and_loses_nothing(
    tmp_path: Path, broker: MosquittoBroker, central: CentralCollector
) -> None:
    """SIGTERM while scans pour in: exit 0 within the bound; after a restart all stored arrive."""
    async with ScannerSimulator(tmp_path / "scanner0") as sim:
        config = write_config(
            tmp_path / "gw.toml",
            mqtt_port=broker.port,
            state_dir=tmp_path / "state",
            devices=[scanner_device("dock-1", sim.link)],
            gateway={"shutdown_timeout": 5},
        )
        daemon = GatewayProcess(config, tmp_path / "gw.log")
        daemon.start()
        await sim.wait_opened(timeout=20)

        async def pour() -> None:
            for start in range(0, 3000, 50):
                await sim.write_raw(
                    "".join(f"L{i:06d}\r" for i in range(start, start + 50)).encode()
                )
                await asyncio.sleep(0.005)

        load = asyncio.create_task(pour())
        while central.unique_count() < 300:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        exit_code = await asyncio.to_thread(daemon.terminate, 30)
        stop_s = time.monotonic() - started
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
        assert exit_code == 0
        assert stop_s < 5 + 3, f"stop took {stop_s:.1f}s"
        stats = await read_stats(tmp_path / "state" / "buffer.db")
        assert stats is not None
        stored = stats.devices["dock-1"].last_seq
        daemon.start()
        try:
            assert await central.wait_for(stored, timeout=60), (central.unique_count(), stored)
            async with asyncio.timeout(20):
                while [e.get("event") for e in daemon.log_lines()].count("gateway_started") < 2:
                    await asyncio.sleep(0.05)
        finally:
            assert daemon.terminate() == 0
    track = central.sources["/site-test/gw-test/dock-1"]
    assert track.missing() == []
    assert track.conflicting == 0
    print(json.dumps({"sigterm_stop_s": round(stop_s, 3), "stored_before_stop": stored}))
