"""Found by the third review of issue 13 (fixed; the text says what went wrong before): ``status`` trusts mqtt-link.json whenever its pid equals the lock holder's. A daemon
killed -9 while connected leaves ``connected: true``; the next daemon in a container (pid
namespace: the daemon is pid 1 every time) gets the same pid, cannot reach the broker, and
``status`` says it is connected, since the old daemon's connect time."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from simulators.broker import MosquittoBroker
from tests.support import ROOT, cli, wait_until, write_config


def start_in_pid_namespace(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                sys.executable,
                "-m",
                "gateway",
                "run",
                "--config",
                str(config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def daemon_pid(outer: subprocess.Popen[bytes]) -> int:
    children = Path(f"/proc/{outer.pid}/task/{outer.pid}/children").read_text().split()
    return int(children[0])


def status(config: Path) -> dict[str, object]:
    done = cli("status", "--config", str(config), "--json")
    return dict(json.loads(done.stdout))


@pytest.mark.skipif(
    os.geteuid() != 0, reason="a pid namespace (unshare --pid) needs root (CAP_SYS_ADMIN)"
)
async def test_status_of_a_restarted_daemon_with_the_same_pid_is_not_the_old_link(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path / "gw.toml", mqtt_port=broker.port, state_dir=state, devices=[])
    first = start_in_pid_namespace(config, tmp_path / "first.log")
    try:
        await wait_until((state / "mqtt-link.json").exists, timeout=20)
        before = await asyncio.to_thread(status, config)
        assert '"connected": true' in json.dumps(before)  # the first daemon is connected
        os.kill(daemon_pid(first), signal.SIGKILL)  # kill -9 the daemon (pid 1 in its namespace)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    broker.stop()  # the next daemon cannot connect
    second = start_in_pid_namespace(config, tmp_path / "second.log")
    try:
        await wait_until(
            lambda: "gateway_started" in (tmp_path / "second.log").read_text(), timeout=20
        )
        await asyncio.sleep(1.0)
        after = await asyncio.to_thread(status, config)
        text = json.dumps(after)
        assert '"connected": true' not in text, (
            f"the new daemon has no broker, yet status reports a live MQTT link: {text}"
        )
    finally:
        os.kill(daemon_pid(second), signal.SIGTERM)
        second.wait(30)
