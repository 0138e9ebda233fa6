"""One daemon per state directory, with two real processes (issue 14, item 1)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from gateway.statelock import holder
from simulators.broker import MosquittoBroker
from tests.support import ROOT, GatewayProcess, cli, wait_until, write_config


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
    try:
        await wait_until(lambda: holder(state) is not None, timeout=20)
    finally:  # killed however the wait ended: a failed wait must not leave a daemon behind
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


async def _started(daemon: GatewayProcess) -> None:
    await wait_until(
        lambda: "gateway_started" in [e.get("event") for e in daemon.log_lines()], timeout=20
    )


async def test_deleted_lock_files_do_not_let_a_second_daemon_start(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """`rm STATE_DIR/*.lock` beside a running daemon: a second `run` is still refused.

    With the lock on a file, the second daemon locked a new file of the same name and ran on
    the same buffer (gateway_started, both connected); `status` then named only the second.
    """
    state = tmp_path / "state"
    config = write_config(tmp_path / "gw.toml", mqtt_port=broker.port, state_dir=state, devices=[])
    first = GatewayProcess(config, tmp_path / "first.log")
    first.start()
    second = GatewayProcess(config, tmp_path / "second.log")
    try:
        await wait_until(
            lambda: "mqtt_connected" in [e.get("event") for e in first.log_lines()], timeout=20
        )
        assert first.process is not None
        pid = first.process.pid
        removed = sorted(p.name for p in state.glob("*.lock"))
        assert "gateway.lock" in removed, removed
        for lock in state.glob("*.lock"):
            lock.unlink()
        second.start()
        assert second.process is not None
        code = await asyncio.to_thread(second.process.wait, 20)
        text = second.log_path.read_text()
        assert code == 1, text[-2000:]
        assert f"edge-gateway: already running (pid {pid}) on {state}" in text
        assert "gateway_started" not in text
        assert holder(state) == pid  # the kernel still names the first
        shown = await asyncio.to_thread(cli, "status", "--config", str(config))
        assert f"daemon: running (pid {pid})" in shown.stdout, shown.stdout + shown.stderr
        assert f"mqtt: connected to 127.0.0.1:{broker.port}" in shown.stdout, shown.stdout
        assert first.process.poll() is None
    finally:
        if second.process is not None and second.process.poll() is None:
            second.terminate()
        assert first.terminate() == 0


async def test_a_symlinked_state_dir_is_the_same_state_dir(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Two configs naming one directory, one through a symlink: the second `run` is refused."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(state)
    config = write_config(tmp_path / "gw.toml", mqtt_port=broker.port, state_dir=state, devices=[])
    linked = write_config(
        tmp_path / "linked.toml", mqtt_port=broker.port, state_dir=tmp_path / "link", devices=[]
    )
    first = GatewayProcess(config, tmp_path / "first.log")
    first.start()
    try:
        await _started(first)
        assert first.process is not None
        second = await asyncio.to_thread(cli, "run", "--config", str(linked), timeout=20)
        assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
        assert f"already running (pid {first.process.pid})" in second.stderr
    finally:
        assert first.terminate() == 0


SLOW_PROBE = """
import fcntl, sys, time
from pathlib import Path
real = fcntl.flock
def descheduled(fd, op):
    if op == fcntl.LOCK_UN:  # between its two flock calls: the CPU went elsewhere
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
    real(fd, op)
fcntl.flock = descheduled
from gateway.statelock import holder
print(holder(Path(sys.argv[1])), flush=True)
"""


async def test_a_status_probe_racing_a_start_does_not_make_it_refuse(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A `status` probe holds the shared lock when the daemon starts: the daemon waits, starts.

    The probe (gateway.statelock.holder in another process) is held up between taking and
    dropping its shared lock, as on a box whose CPU is busy: a start at that moment was refused
    as "already running (pid unknown)" though no daemon ran.
    """
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "gateway.lock").touch(mode=0o600)  # as an earlier run leaves it: empty
    config = write_config(tmp_path / "gw.toml", mqtt_port=broker.port, state_dir=state, devices=[])
    probe = subprocess.Popen(
        [sys.executable, "-c", SLOW_PROBE, str(state), "5"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    daemon = GatewayProcess(config, tmp_path / "gw.log")
    try:
        assert probe.stdout is not None
        assert await asyncio.to_thread(probe.stdout.readline) == "held\n"
        daemon.start()
        assert daemon.process is not None
        async with asyncio.timeout(30):
            while "gateway_started" not in [e.get("event") for e in daemon.log_lines()]:
                assert daemon.process.poll() is None, daemon.log_path.read_text()[-2000:]
                await asyncio.sleep(0.01)
        assert await asyncio.to_thread(probe.stdout.readline) == "None\n"  # no daemon, then
        assert holder(state) == daemon.process.pid
    finally:
        probe.kill()
        probe.wait()
        if daemon.process is not None:
            assert daemon.terminate() == 0
