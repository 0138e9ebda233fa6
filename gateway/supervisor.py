"""Supervision: what runs, what restarts after an error, and what stops the daemon.

Three kinds of task, so one fault cannot take down more than its own job:

- *essential* (the publisher): its end is the daemon's end. It handles link and store errors
  itself, so reaching here means a bug, and systemd's restart is the right answer.
- *restarting* (drivers, the inbound applier, the replay worker): an exception is logged and
  the job is run again after a backoff, so one device's or one message's bug stops nothing else.
- *periodic* (metrics, checkpoint, retention): each in its own task, an exception is logged
  once per burst and counted, and the next period runs as usual.

The systemd watchdog is a task of its own (:class:`Watchdog`): a ping must never wait behind a
PUBACK or a table scan, or systemd kills a daemon that is only busy.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from drivers.backoff import Backoff
from gateway.sdnotify import notify

log = structlog.get_logger(__name__)

BURST_QUIET_S = 60.0
"""A job failing again within this long is counted but not logged again (one line per burst)."""

Job = Callable[[], Awaitable[object]]


class JobErrors:
    """Counts failures per job and logs the first of each burst, with a traceback.

    A job failing every quarter second (a checkpoint while the disk is gone) must not bury the
    log; but the first failure, and the recovery, must be there for the technician.
    """

    def __init__(self, quiet_s: float = BURST_QUIET_S) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        """Failures per job since start, for metrics."""
        self._quiet_s = quiet_s
        self._last_logged: dict[str, float] = {}
        self._held_back: collections.Counter[str] = collections.Counter()

    def failed(self, job: str, exc: BaseException) -> None:
        """Count a failure of ``job``; log it unless this burst was already logged."""
        self.counts[job] += 1
        now = time.monotonic()
        if now - self._last_logged.get(job, -self._quiet_s) < self._quiet_s:
            self._held_back[job] += 1
            return
        self._last_logged[job] = now
        log.error(
            "job_failed",
            job=job,
            error=f"{type(exc).__name__}: {exc}",
            failures=self.counts[job],
            not_logged_since_last=self._held_back.pop(job, 0),
            exc_info=exc,
        )

    def succeeded(self, job: str) -> None:
        """End a burst: the next failure is logged at once."""
        if self._last_logged.pop(job, None) is not None:
            log.info("job_recovered", job=job, failures=self.counts[job])
            self._held_back.pop(job, None)


async def every(name: str, period: Callable[[], float], job: Job, errors: JobErrors) -> None:
    """Run ``job`` every ``period()`` seconds until cancelled; no exception ends the loop.

    ``period`` is read before each sleep, so a reload that changes it applies at the next tick.
    """
    while True:
        await asyncio.sleep(period())
        try:
            await job()
        except Exception as exc:
            errors.failed(name, exc)
        else:
            errors.succeeded(name)


async def keep_running(
    name: str,
    run: Callable[[], Coroutine[Any, Any, object]],
    *,
    on_crash: Callable[[], None] | None = None,
    backoff: Backoff | None = None,
) -> None:
    """Run ``run()`` again, with backoff, whenever it returns or raises, until cancelled."""
    backoff = backoff or Backoff(1.0, 30.0)
    while True:
        try:
            await run()
            log.warning("task_returned", task=name)
        except Exception:
            log.exception("task_crashed", task=name)
            if on_crash is not None:
                with contextlib.suppress(Exception):
                    on_crash()
        await asyncio.sleep(backoff.next())


def watchdog_interval() -> float | None:
    """Half of systemd's ``WATCHDOG_USEC`` (its advice), at most 1 s; None when not asked for."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    try:
        return min(1.0, int(usec) / 2e6)
    except ValueError:
        return None


class Watchdog:
    """Pings systemd's watchdog from a task of its own, only while the daemon is healthy.

    Healthy means the buffer's writer is alive (``healthy()``), and the event loop turns: the
    ping is sent from the loop after a short sleep, so a loop blocked for longer than systemd's
    timeout sends nothing and is killed, as it should be.
    """

    def __init__(
        self, healthy: Callable[[], bool], interval: float, errors: JobErrors | None = None
    ) -> None:
        self._healthy = healthy
        self._interval = interval
        self._errors = errors or JobErrors()
        self.pings = 0

    async def run(self) -> None:
        """Ping every interval until cancelled; a failing health check skips the ping."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                healthy = self._healthy()
            except Exception as exc:
                self._errors.failed("watchdog", exc)
                continue
            if healthy and notify("WATCHDOG=1"):
                self.pings += 1


class Supervisor:
    """Owns the daemon's long-running tasks, by kind; ``fatal`` completes if an essential ends."""

    def __init__(self) -> None:
        self.errors = JobErrors()
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._essential: list[asyncio.Task[Any]] = []

    def essential(self, name: str, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task whose end, by return or exception, stops the daemon (see :meth:`wait`)."""
        task = self._start(name, coro)
        self._essential.append(task)
        return task

    def restarting(
        self,
        name: str,
        run: Callable[[], Coroutine[Any, Any, object]],
        *,
        on_crash: Callable[[], None] | None = None,
    ) -> asyncio.Task[None]:
        """A task run again with backoff whenever it ends."""
        return self._start(name, keep_running(name, run, on_crash=on_crash))

    def periodic(self, name: str, period: Callable[[], float], job: Job) -> asyncio.Task[None]:
        """A job every ``period()`` seconds, isolated: its failures are counted, not fatal."""
        return self._start(name, every(name, period, job, self.errors))

    def watchdog(self, healthy: Callable[[], bool]) -> asyncio.Task[None] | None:
        """Start the watchdog task if systemd asked for one (``WATCHDOG_USEC``)."""
        interval = watchdog_interval()
        if interval is None:
            return None
        return self._start("watchdog", Watchdog(healthy, interval, self.errors).run())

    def _start(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks[name] = task
        return task

    async def wait(self, stop: asyncio.Event) -> BaseException | None:
        """Until ``stop`` is set or an essential task ends; that task's exception, if any."""
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([stopped, *self._essential], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        for task in self._essential:
            if task.done() and not task.cancelled():
                failure = task.exception()
                if failure is not None:
                    return failure
        return None

    async def cancel(self, *names: str) -> None:
        """Cancel the named tasks (those still running) and wait for them to end."""
        tasks = [self._tasks.pop(n) for n in names if n in self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
