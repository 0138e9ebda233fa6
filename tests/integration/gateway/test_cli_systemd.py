"""The CLI on a box installed for systemd, as processes (issue 14, item 3).

The config points ``password_file`` at the credential systemd hands the service,
``/run/credentials/edge-gateway.service/mqtt-password``, which a shell never sees; the unit
file (found through ``EDGE_GATEWAY_UNIT_DIRS``) names its source with ``LoadCredential=``.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buffer.store import Buffer, NewEvent
from gateway.credentials import CREDENTIALS_ROOT
from simulators.broker import MosquittoBroker
from tests.support import ROOT, GatewayProcess, wait_until, write_config

CREDENTIAL = CREDENTIALS_ROOT / "edge-gateway.service" / "mqtt-password"


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
        env={**os.environ, **(env or {})},
    )


def unit_layout(tmp_path: Path, *, source_exists: bool = True) -> tuple[dict[str, str], Path]:
    """A unit dir with the shipped unit's LoadCredential= pointed at a source under tmp_path."""
    if CREDENTIAL.exists():
        pytest.skip("this box runs edge-gateway.service: its credential is there")
    source = tmp_path / "etc" / "mqtt-password"
    source.parent.mkdir()
    if source_exists:
        source.write_text("s3cret\n")
        source.chmod(0o600)
    units = tmp_path / "units"
    units.mkdir()
    shipped = (ROOT / "systemd" / "edge-gateway.service").read_text()
    assert "LoadCredential=mqtt-password:/etc/edge-gateway/mqtt-password" in shipped
    # As the caller: the files under tmp_path (0700) are the caller's, whoever else runs here
    # (check-config checks them against the unit's user: tests/.../test_cli_service_user.py).
    me = pwd.getpwuid(os.geteuid()).pw_name
    (units / "edge-gateway.service").write_text(
        shipped.replace("/etc/edge-gateway/mqtt-password", str(source))
        .replace("User=edge-gateway\n", f"User={me}\n")
        .replace("Group=edge-gateway\n", "")
        .replace("SupplementaryGroups=dialout input\n", "")
    )
    return {"EDGE_GATEWAY_UNIT_DIRS": str(units)}, source


def credential_config(tmp_path: Path, port: int, **extra: object) -> Path:
    return write_config(
        tmp_path / "gw.toml",
        mqtt_port=port,
        state_dir=tmp_path / "state",
        devices=[],
        mqtt={"username": "gw-test", "password_file": str(CREDENTIAL), **extra},
    )


def test_check_config_checks_the_credentials_source_from_a_shell(tmp_path: Path) -> None:
    """check-config says which credential it expects and checks the source LoadCredential= names."""
    env, source = unit_layout(tmp_path)
    config = credential_config(tmp_path, 1883)
    ok = run_cli("check-config", "--config", str(config), env=env)
    assert ok.returncode == 0, ok.stderr
    assert 'systemd credential "mqtt-password" of edge-gateway.service' in ok.stdout
    assert str(source) in ok.stdout
    source.chmod(0o644)  # the source must be as private as the credential
    wide = run_cli("check-config", "--config", str(config), env=env)
    assert wide.returncode == 2
    assert str(source) in wide.stderr
    source.unlink()
    gone = run_cli("check-config", "--config", str(config), env=env)
    assert gone.returncode == 2
    assert f'cannot read "{source}"' in gone.stderr
    assert "mqtt-password" in gone.stderr
    nounit = run_cli(
        "check-config", "--config", str(config), env={"EDGE_GATEWAY_UNIT_DIRS": str(tmp_path)}
    )
    assert nounit.returncode == 2
    assert "only the service gets it" in nounit.stderr
    assert "Traceback" not in ok.stderr + wide.stderr + gone.stderr + nounit.stderr


def test_status_needs_no_password_and_shows_an_invalid_configs_errors(tmp_path: Path) -> None:
    """status reads [gateway] only: no credential needed; an invalid config is shown below it."""
    config = credential_config(tmp_path, 1883)
    plain = run_cli(
        "status", "--config", str(config), env={"EDGE_GATEWAY_UNIT_DIRS": "/nonexistent"}
    )
    assert plain.returncode == 0, plain.stderr
    assert "daemon: not running" in plain.stdout
    text = config.read_text() + '\n[[devices]]\nid = "dock-1"\ndriver = "barcode-serial"\n'
    config.write_text(text)
    broken = run_cli("status", "--config", str(config))
    assert broken.returncode == 2
    assert "gateway gw-test at site-test" in broken.stdout
    assert "daemon: not running" in broken.stdout
    tail = broken.stdout.split("config errors", 1)[1]
    assert "devices[0]" in tail and "port" in tail
    as_json = run_cli("status", "--config", str(config), "--json")
    assert as_json.returncode == 2
    body = json.loads(as_json.stdout)
    assert body["daemon"]["running"] is False
    assert any("devices[0]" in e for e in body["config_errors"])


async def test_status_shows_the_daemon_and_its_mqtt_link_with_since(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Beside a running daemon: running (pid, since), MQTT connected then disconnected (since)."""
    config = write_config(
        tmp_path / "gw.toml", mqtt_port=broker.port, state_dir=tmp_path / "state", devices=[]
    )
    daemon = GatewayProcess(config, tmp_path / "gw.log")
    daemon.start()
    try:
        await wait_until(
            lambda: "mqtt_connected" in [e.get("event") for e in daemon.log_lines()], timeout=20
        )
        assert daemon.process is not None
        shown = await asyncio.to_thread(run_cli, "status", "--config", str(config))
        assert shown.returncode == 0, shown.stderr
        assert f"daemon: running (pid {daemon.process.pid}) since " in shown.stdout
        assert f"mqtt: connected to 127.0.0.1:{broker.port} since " in shown.stdout
        broker.stop()
        await wait_until(
            lambda: "mqtt_disconnected" in [e.get("event") for e in daemon.log_lines()], timeout=20
        )
        body = json.loads(
            (await asyncio.to_thread(run_cli, "status", "--config", str(config), "--json")).stdout
        )
        assert body["daemon"]["running"] is True
        assert body["daemon"]["mqtt"]["connected"] is False
        assert body["daemon"]["mqtt"]["since"]
    finally:
        assert daemon.terminate() == 0
    after = await asyncio.to_thread(run_cli, "status", "--config", str(config))
    assert "daemon: not running" in after.stdout


async def _one_sent_event(state: Path) -> None:
    buffer = await Buffer.open(state / "buffer.db", max_bytes=10**7)
    await buffer.append(NewEvent("e1", "dock-1", "t", "x", False, b'{"seq":%d}'.__mod__))
    batch = await buffer.claim(10)
    await buffer.mark_sent(batch)
    await buffer.close()


@pytest.mark.parametrize("broker_kind", ["refused", "silent"])
async def test_replay_exits_1_within_publish_timeout_when_the_broker_is_unreachable(
    tmp_path: Path, broker_kind: str
) -> None:
    """A refused port or a broker that never answers: exit 1 within publish_timeout, no hang."""
    await _one_sent_event(tmp_path / "state")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        if broker_kind == "silent":
            silent.listen(8)  # the kernel completes handshakes; nobody ever answers
        config = write_config(
            tmp_path / "gw.toml",
            mqtt_port=port,
            state_dir=tmp_path / "state",
            devices=[],
            mqtt={"publish_timeout": 2.0},
        )
        # The same command refused before it connects (a range past the last seq): what
        # starting the interpreter and reading the buffer cost on this box, right now.
        started = time.monotonic()
        refused = await asyncio.to_thread(
            run_cli,
            "replay", "--config", str(config), "--device", "dock-1", "--from-seq", "99",
            timeout=20,
        )  # fmt: skip
        baseline = time.monotonic() - started
        assert refused.returncode == 2, refused.stdout + refused.stderr
        started = time.monotonic()
        result = await asyncio.to_thread(
            run_cli,
            "replay", "--config", str(config), "--device", "dock-1", "--from-seq", "1",
            timeout=20,
        )  # fmt: skip
        took = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    # Beyond start-up, at most publish_timeout (2 s) and a second of slack: a hang is 20 s.
    assert took - baseline < 2.0 + 1.0, f"took {took:.1f} s, start-up alone {baseline:.1f} s"


async def test_replay_takes_the_password_from_a_file_given_on_the_command_line(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """The credential is out of a shell's reach: --password-file supplies it; a loose one is refused."""
    env, _ = unit_layout(tmp_path, source_exists=False)
    await _one_sent_event(tmp_path / "state")
    config = credential_config(tmp_path, broker.port)
    args = ("replay", "--config", str(config), "--device", "dock-1", "--from-seq", "1")
    without = await asyncio.to_thread(run_cli, *args, env=env)
    assert without.returncode == 2
    assert "mqtt-password" in without.stderr
    mine = tmp_path / "pw"
    mine.write_text("s3cret\n")
    mine.chmod(0o644)
    loose = await asyncio.to_thread(run_cli, *args, "--password-file", str(mine), env=env)
    assert loose.returncode == 2
    assert "--password-file" in loose.stderr and str(mine) in loose.stderr
    mine.chmod(0o600)
    done = await asyncio.to_thread(run_cli, *args, "--password-file", str(mine), env=env)
    assert done.returncode == 0, done.stderr
    assert "re-published 1 events" in done.stdout


async def test_replay_range_errors_say_what_exists(tmp_path: Path) -> None:
    """`--from-seq 99999` on a device with 3 events names the last stored seq (exit 2)."""
    buffer = await Buffer.open(tmp_path / "state" / "buffer.db", max_bytes=10**7)
    for n in range(3):
        await buffer.append(NewEvent(f"e{n}", "dock-1", "t", "x", False, b'{"seq":%d}'.__mod__))
    await buffer.close()
    config = write_config(
        tmp_path / "gw.toml", mqtt_port=1, state_dir=tmp_path / "state", devices=[]
    )
    base = ("replay", "--config", str(config), "--device", "dock-1")
    beyond = await asyncio.to_thread(run_cli, *base, "--from-seq", "99999")
    assert beyond.returncode == 2
    assert "from_seq 99999 is beyond the last stored seq 3" in beyond.stderr
    past = await asyncio.to_thread(run_cli, *base, "--from-seq", "2", "--to-seq", "7")
    assert past.returncode == 2
    assert "beyond the last stored seq 3" in past.stderr


def test_check_config_warns_about_zero_devices(tmp_path: Path) -> None:
    """No [[devices]] is valid (exit 0) but said, on stderr: the gateway would read nothing."""
    config = write_config(
        tmp_path / "gw.toml", mqtt_port=1883, state_dir=tmp_path / "s", devices=[]
    )
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"{config}: warning: no [[devices]]" in result.stderr
