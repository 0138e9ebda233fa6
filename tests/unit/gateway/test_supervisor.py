"""The supervision primitives: isolated periodic jobs, restarts, the watchdog task."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from drivers.backoff import Backoff
from gateway.supervisor import (
    JobErrors,
    Supervisor,
    Watchdog,
    every,
    keep_running,
    watchdog_interval,
)


async def test_a_failing_job_is_counted_logged_once_per_burst_and_keeps_running() -> None:
    """Three failures then successes: three counted, one error line, one recovery line."""
    calls = 0

    async def job() -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError(f"failure {calls}")

    errors = JobErrors()
    with capture_logs() as logs:
        task = asyncio.create_task(every("stats", lambda: 0.001, job, errors))
        async with asyncio.timeout(5):
            while calls < 6:
                await asyncio.sleep(0.005)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert errors.counts["stats"] == 3
    assert [e["event"] for e in logs] == ["job_failed", "job_recovered"]
    assert logs[0]["log_level"] == "error" and "failure 1" in logs[0]["error"]


async def test_a_crashing_task_is_restarted_and_told() -> None:
    """keep_running runs the coroutine again after it raises, calling on_crash each time."""
    runs, crashes = 0, 0

    async def run() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise ValueError("bug")
        await asyncio.Event().wait()

    def on_crash() -> None:
        nonlocal crashes
        crashes += 1

    task = asyncio.create_task(
        keep_running("driver-x", run, on_crash=on_crash, backoff=Backoff(0.001, 0.002))
    )
    async with asyncio.timeout(5):
        while runs < 3:
            await asyncio.sleep(0.005)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert crashes == 2


async def test_watchdog_pings_only_while_healthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real datagrams while the health check says yes; none while it says no or raises."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        state = {"healthy": True}

        def healthy() -> bool:
            if state["healthy"] is None:
                raise RuntimeError("health check broke")
            return bool(state["healthy"])

        dog = Watchdog(healthy, 0.01)
        task = asyncio.create_task(dog.run())
        await asyncio.sleep(0.1)
        assert dog.pings >= 3 and server.recv(64) == b"WATCHDOG=1"
        for verdict in (False, None):
            state["healthy"] = verdict
            await asyncio.sleep(0.03)
            before = dog.pings
            await asyncio.sleep(0.1)
            assert dog.pings == before
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_supervisor_reports_an_essential_task_failure_or_none_on_stop() -> None:
    """wait() returns the exception of an essential task that ended, or None on stop."""
    sv = Supervisor()

    async def broken() -> None:
        raise OSError("publisher bug")

    sv.essential("publisher", broken())
    failure = await sv.wait(asyncio.Event())
    assert isinstance(failure, OSError)

    quiet = Supervisor()

    async def forever() -> None:
        await asyncio.Event().wait()

    quiet.essential("publisher", forever())
    stop = asyncio.Event()
    stop.set()
    assert await quiet.wait(stop) is None
    await quiet.cancel("publisher")


def test_watchdog_interval_follows_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    """Half of WATCHDOG_USEC, at most a second; none without it."""
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval() == 1.0
    monkeypatch.setenv("WATCHDOG_USEC", "600000")
    assert watchdog_interval() == pytest.approx(0.3)
