"""Supervision of a running gateway: periodic jobs isolated from each other's failures and
slowness, the systemd watchdog on a task of its own (issue 13, defect 5), and a reload that
reaches every component's settings (retention, checkpoint interval, replay rate)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from structlog.testing import capture_logs

from buffer.stats import BufferStats
from simulators.broker import MosquittoBroker
from simulators.scanner import ScannerSimulator
from tests.support import running_gateway, scanner_device, write_config

ROOT = "edge/site-test/gw-test"


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd, with a 1 s watchdog asked for."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")
        yield server


async def watchdog_pings(server: socket.socket, seconds: float) -> list[float]:
    """Monotonic times of the WATCHDOG=1 datagrams received during the next ``seconds``."""
    loop = asyncio.get_running_loop()
    pings: list[float] = []
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            async with asyncio.timeout(left):
                data = await loop.sock_recv(server, 4096)
        except TimeoutError:
            break
        if b"WATCHDOG=1" in data:
            pings.append(time.monotonic())
    return pings


def drain(server: socket.socket) -> None:
    """Forget datagrams received so far."""
    while True:
        try:
            server.recv(4096)
        except BlockingIOError:
            return


async def test_a_failing_or_slow_job_stops_neither_the_others_nor_the_watchdog(
    tmp_path: Path, broker: MosquittoBroker, notify_socket: socket.socket
) -> None:
    """Buffer stats first hang for 5 s, then raise: the watchdog pings on throughout (at
    least every second), the checkpoint's failures are counted and logged once, and when
    stats work again the checkpoint is published again."""
    cfg = write_config(
        tmp_path / "gw.toml",
        mqtt_port=broker.port,
        state_dir=tmp_path / "state",
        devices=[],
        mqtt={"checkpoint_interval": 0.3},
    )
    with capture_logs() as logs:
        async with running_gateway(cfg) as gw:
            async with asyncio.timeout(10):
                await gw.publisher.connected.wait()
            real_stats = gw.buffer.stats

            async def hanging() -> BufferStats:
                await asyncio.sleep(5)
                return await real_stats()

            async def failing() -> BufferStats:
                raise OSError("stats exploded")

            await asyncio.sleep(1.2)
            drain(notify_socket)
            gw.buffer.stats = hanging  # type: ignore[method-assign]
            stalled = await watchdog_pings(notify_socket, 3.0)
            assert len(stalled) >= 2, f"watchdog waited behind a slow job: {stalled}"
            gw.buffer.stats = failing  # type: ignore[method-assign]
            await asyncio.sleep(5.5)  # the hanging calls end; the next ones raise
            drain(notify_socket)
            failed = await watchdog_pings(notify_socket, 3.0)
            assert len(failed) >= 2, f"watchdog stopped after a job failed: {failed}"
            failures = [e for e in logs if e["event"] == "job_failed" and e["job"] == "checkpoint"]
            gw.buffer.stats = real_stats  # type: ignore[method-assign]
            async with aiomqtt.Client(broker.host, broker.port, identifier="reader") as client:
                await client.subscribe(f"{ROOT}/checkpoint", qos=1)
                restored = time.time()
                async with asyncio.timeout(5):
                    async for message in client.messages:
                        if message.retain:
                            continue  # the one left from before
                        body = json.loads(message.payload)
                        break
            counted = gw.supervisor.errors.counts["checkpoint"]
    assert counted >= 2, "every failure counted"
    assert len(failures) == 1, "one log line per burst of failures"
    assert body["gateway"] == "gw-test" and restored > 0
    assert any(e["event"] == "job_recovered" for e in logs)


async def test_reload_applies_retention_checkpoint_interval_and_replay_rate(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start with a slow replay rate, a rare checkpoint and a long retention; a reload lowers
    all three and each takes effect: a 40-event replay is quick, checkpoints come often, and
    delivered events are pruned."""
    monkeypatch.setattr("gateway.housekeeping.PRUNE_INTERVAL_S", 0.5, raising=False)
    monkeypatch.setattr("gateway.daemon.PRUNE_INTERVAL_S", 0.5, raising=False)

    async with ScannerSimulator(tmp_path / "scan") as sim:

        def configure(**mqtt: Any) -> Path:
            buffer = {"retention": mqtt.pop("retention")}
            return write_config(
                tmp_path / "gw.toml",
                mqtt_port=broker.port,
                state_dir=tmp_path / "state",
                devices=[scanner_device("dock-1", sim.link)],
                mqtt=mqtt,
                buffer=buffer,
            )

        cfg = configure(checkpoint_interval=3600, replay_rate=1, retention=3600)
        async with running_gateway(cfg) as gw:
            await sim.wait_opened(timeout=10)
            await sim.write_raw("".join(f"R{i:05d}\r" for i in range(40)).encode())
            async with asyncio.timeout(15):
                while (
                    d := (await gw.buffer.stats()).devices.get("dock-1")
                ) is None or d.last_sent_seq < 40:
                    await asyncio.sleep(0.05)
            configure(checkpoint_interval=0.3, replay_rate=10_000, retention=3600)
            assert await gw.reload()
            async with aiomqtt.Client(broker.host, broker.port, identifier="asker") as client:
                await client.subscribe(f"{ROOT}/checkpoint", qos=1)
                await client.subscribe(f"{ROOT}/cmd/result", qos=1)
                await client.publish(
                    f"{ROOT}/cmd/replay",
                    json.dumps({"request_id": "r1", "device": "dock-1", "from_seq": 1}),
                    qos=1,
                )
                checkpoints, answer = 0, None
                started = time.monotonic()
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(2.5):
                        async for message in client.messages:
                            if message.topic.matches(f"{ROOT}/checkpoint"):
                                checkpoints += not message.retain
                            else:
                                answer = json.loads(message.payload)
                                answered = time.monotonic() - started
            assert answer is not None, "a 40-event replay at the new rate is done in 2.5 s"
            assert answer["ok"] is True and answer["count"] == 40 and answered < 2.5
            assert checkpoints >= 4, f"{checkpoints} checkpoints in 2.5 s at a 0.3 s interval"
            assert (await gw.buffer.stats()).by_state["sent"] == 40, "kept: 1 h retention"
            configure(checkpoint_interval=0.3, replay_rate=10_000, retention=1)
            assert await gw.reload()
            async with asyncio.timeout(5):
                while (await gw.buffer.stats()).by_state.get("sent", 0):
                    await asyncio.sleep(0.1)
