"""Secrets stay secret: password file permissions, no secret in logs or status output, and a
buffer nobody else can read."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from buffer.store import Buffer
from gateway.settings import ConfigError, load_settings
from tests.integration.security.conftest import PASSWORD, USER, SecureBroker
from tests.support import GatewayProcess, cli, write_config


def password_file(folder: Path, mode: int, secret: str = PASSWORD) -> Path:
    """The broker password in a file with ``mode``."""
    path = folder / "mqtt-password"
    path.write_text(secret + "\n")
    path.chmod(mode)
    return path


def config(tmp_path: Path, port: int, name: str = "gateway.toml", **mqtt: object) -> Path:
    """A device-less config logging at debug level (the most talkative the daemon gets)."""
    cfg = write_config(
        tmp_path / name,
        mqtt_port=port,
        state_dir=tmp_path / "state",
        devices=[],
        mqtt={"username": USER, **mqtt},
    )
    cfg.write_text(cfg.read_text().replace('level = "info"', 'level = "debug"'))
    return cfg


def test_password_file_0600_is_accepted(tmp_path: Path) -> None:
    """The documented way: a file only the service user can read."""
    path = password_file(tmp_path, 0o600)
    settings = load_settings(config(tmp_path, 1883, password_file=str(path)))
    assert settings.mqtt.password() == PASSWORD
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings.model_dump())


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o640])
def test_password_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    """A password file others can read is a config error naming the file and its mode."""
    path = password_file(tmp_path, mode)
    with pytest.raises(ConfigError) as caught:
        load_settings(config(tmp_path, 1883, password_file=str(path)))
    assert "password_file" in str(caught.value) and f"{mode:o}" in str(caught.value)


async def test_no_secret_in_logs_or_status_output(
    tmp_path: Path, secure_broker: SecureBroker
) -> None:
    """The daemon at debug level, logging in with a good then a wrong password, and every CLI
    view of it: the password appears nowhere."""
    secret_file = password_file(tmp_path, 0o600)
    cfg = config(tmp_path, secure_broker.auth_port, password_file=str(secret_file))
    log = tmp_path / "gateway.log"
    daemon = GatewayProcess(cfg, log)
    daemon.start()
    try:
        async with asyncio.timeout(15):
            while "mqtt_connected" not in log.read_text():
                await asyncio.sleep(0.1)
    finally:
        assert daemon.terminate() == 0
    wrong = config(
        tmp_path, secure_broker.auth_port, "wrong.toml", password_env="EDGE_TEST_MQTT_PASSWORD"
    )
    daemon = GatewayProcess(wrong, log)
    daemon.start(env={"EDGE_TEST_MQTT_PASSWORD": PASSWORD + "-wrong"})
    try:
        async with asyncio.timeout(15):
            while "mqtt_disconnected" not in log.read_text():
                await asyncio.sleep(0.1)
    finally:
        assert daemon.terminate() == 0
    outputs = [log.read_text()]
    for args in (["status"], ["status", "--json"], ["check-config"]):
        result = cli(*args, "--config", str(cfg))
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    broken = tmp_path / "broken.toml"
    broken.write_text(cfg.read_text().replace("[buffer]", "[buffer]\nbogus = 1"))
    result = cli("check-config", "--config", str(broken))
    assert result.returncode == 2
    outputs.append(result.stdout + result.stderr)
    assert "mqtt_connected" in outputs[0] and "mqtt_disconnected" in outputs[0]
    for text in outputs:
        assert PASSWORD not in text


async def test_buffer_file_is_0600_and_state_dir_0700_whatever_the_umask(tmp_path: Path) -> None:
    """Created under a permissive umask, the state dir is 0700 and the database, its WAL and
    shared-memory files are 0600: scanned codes are business data."""
    state = tmp_path / "var" / "state"
    old = os.umask(0)
    try:
        buf = await Buffer.open(state / "buffer.db", max_bytes=10**8)
    finally:
        os.umask(old)
    try:
        files = sorted(state.iterdir())
        assert {p.name for p in files} >= {"buffer.db", "buffer.db-wal", "buffer.db-shm"}
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
    finally:
        await buf.close()
