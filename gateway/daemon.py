"""The supervisor: wires buffer, pipeline, drivers, publisher and confirmations, and stops them.

Start order matters: the buffer opens first (nothing is read from a device before there is
somewhere durable to put it), then the publisher and the drivers. Stop order is the reverse,
bounded by ``gateway.shutdown_timeout``: drivers stop reading, in-flight publishes get a chance
at their PUBACK, ``offline`` is published, the buffer checkpoints and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from typing import TYPE_CHECKING, Any

import structlog

from buffer.stats import BufferStats
from buffer.store import Buffer
from drivers import registry
from drivers.backoff import Backoff
from drivers.base import DeviceConfig, Driver, Outcome, StatusFn
from gateway.confirmations import Confirmations
from gateway.events import rfc3339_now
from gateway.inbound import Inbound
from gateway.pipeline import Pipeline
from gateway.publisher import Publisher
from gateway.reload import effective, plan_reload
from gateway.replay import ReplayWorker
from gateway.sdnotify import notify
from gateway.settings import ConfigError, Settings, load_settings
from gateway.topics import Topics

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics

log = structlog.get_logger(__name__)

PRUNE_INTERVAL_S = 60.0
CHECKPOINT_TICK_S = 0.25
"""How soon a change of state (connect, drain start or end) reaches the checkpoint."""
TICKS_PER_S = 4
STATS_COST_FACTOR = 20.0
"""Metrics refresh buffer stats no sooner than this many times their last duration."""


def freeze_startup_objects() -> None:
    """Move everything alive after start-up out of the garbage collector's sight.

    A full (generation 2) collection walks every tracked object: with the modules, pydantic's
    validators and the drivers' tables that took ~50 ms here, three times in 30 s under load,
    and each one stalled every scan's feedback. Start-up objects live as long as the process,
    so after one collection they are frozen and later full collections see only newer ones.
    Also called after a reload: unfreezing first lets what the old config built be collected
    before the new live set is frozen.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _still_starting(what: str) -> None:
    """A long step before READY (a buffer migration): ask systemd for 30 s more each time."""
    notify("EXTEND_TIMEOUT_USEC=30000000", f"STATUS={what}")


class Gateway:
    """One running gateway. ``await Gateway(settings).run(stop_event)``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device_states: dict[str, dict[str, Any]] = {}
        self.drivers: dict[str, Driver[Any]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._feedback_tasks: set[asyncio.Task[None]] = set()
        self._driver_tasks: dict[str, asyncio.Task[None]] = {}
        self._reload = asyncio.Event()
        self._buffer_stats: BufferStats | None = None
        self._buffer_stats_due = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down within the configured bound."""
        s = self.settings
        self.buffer = await Buffer.open(
            s.database_path,
            max_bytes=s.buffer.max_bytes,
            batch_max=s.buffer.batch_max,
            keep_unconfirmed=frozenset(d.id for d in s.devices if d.confirm == "accepted"),
            progress=_still_starting,
        )
        self.confirmations = Confirmations(self._feedback)
        self.pipeline = Pipeline(
            self.buffer, self.confirmations, site=s.gateway.site, gateway_id=s.gateway.id
        )
        topics = Topics(s.topic_root)
        self.publisher = Publisher(
            s.mqtt,
            self.buffer,
            topics,
            client_id=s.mqtt.client_id or f"edge-gateway-{s.gateway.site}-{s.gateway.id}",
            on_delivered=lambda batch: self.confirmations.delivered(e.id for e in batch),
            on_message=self._on_message,
            subscriptions=(topics.confirm, topics.cmd_replay),
        )
        self.replays = ReplayWorker(
            self.buffer,
            topics,
            send=self.publisher.publish,
            connected=self.publisher.connected.wait,
            answer=lambda body: self.publisher.publish_soon(topics.cmd_result, body),
            rate=s.mqtt.replay_rate,
        )
        self.inbound = Inbound(
            self.buffer,
            self.confirmations,
            topics,
            self.replays,
            answer=lambda body: self.publisher.publish_soon(topics.cmd_result, body),
        )
        self.metrics = self._start_metrics()
        publisher_task = asyncio.create_task(self.publisher.run(), name="publisher")
        self._driver_tasks = {device.id: self._start_driver(device) for device in s.devices}
        housekeeping = asyncio.create_task(self._housekeeping(), name="housekeeping")
        helpers = [
            asyncio.create_task(self.inbound.run(), name="inbound"),
            asyncio.create_task(self.replays.run(), name="replays"),
        ]
        self._helpers = helpers
        if not s.devices:
            log.warning("no_devices_configured", config=str(s.source_path))
        helpers.append(asyncio.create_task(self._reloader(), name="reloader"))
        freeze_startup_objects()
        notify("READY=1", f"STATUS=running with {len(self._driver_tasks)} devices")
        log.info(
            "gateway_started", gateway=s.gateway.id, site=s.gateway.site, devices=len(s.devices)
        )
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([stopped, publisher_task], return_when=asyncio.FIRST_COMPLETED)
        failure = publisher_task.exception() if publisher_task.done() else None
        notify("STOPPING=1")
        log.info("gateway_stopping")
        try:
            async with asyncio.timeout(s.gateway.shutdown_timeout):
                await self._shutdown(publisher_task, housekeeping)
        except TimeoutError:
            log.warning("shutdown_timeout", bound_s=s.gateway.shutdown_timeout)
            publisher_task.cancel()
        await self.buffer.close()
        gc.unfreeze()  # collectable again: several gateways may run in one (test) process
        log.info("gateway_stopped")
        if failure is not None:
            raise failure

    def _start_metrics(self) -> GatewayMetrics | None:
        """The Prometheus endpoint, if configured; a busy port is logged, never fatal."""
        listen = self.settings.metrics.listen
        if listen is None:
            return None
        # Imported only when enabled: prometheus-client and its HTTP server are ~1 MB idle.
        from gateway.metrics import GatewayMetrics  # noqa: PLC0415

        metrics = GatewayMetrics()
        try:
            metrics.serve(listen)
        except OSError as exc:
            log.error("metrics_unavailable", listen=listen, error=str(exc))
            return None
        log.info("metrics_serving", listen=listen)
        return metrics

    async def _sample_metrics(self) -> None:
        if self.metrics is None:
            return
        loop = asyncio.get_running_loop()
        if self._buffer_stats is None or loop.time() >= self._buffer_stats_due:
            # Buffer stats scan the table (over a second at a million rows): refresh them at
            # most every 20x their own duration, so they never take more than 5% of a core.
            started = loop.time()
            self._buffer_stats = await self.buffer.stats()
            took = loop.time() - started
            self._buffer_stats_due = loop.time() + STATS_COST_FACTOR * took
        self.metrics.sample(
            stats=self._buffer_stats,
            transitions=self.buffer.transitions,
            device_states=self.device_states,
            connected=self.publisher.connected.is_set(),
            reconnects=self.publisher.reconnects,
            outcomes=self.confirmations.outcomes,
            latencies_total=self.confirmations.latencies_total,
            latencies=self.confirmations.latencies,
            inbound=self.inbound.counters,
            publish_latencies_total=self.publisher.publish_latencies_total,
            publish_latencies=self.publisher.publish_latencies,
            stored=self.pipeline.stored,
        )

    def request_reload(self) -> None:
        """SIGHUP: re-read the config file (applied by the reloader task)."""
        self._reload.set()

    async def _reloader(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Apply a changed config without losing a buffered or in-flight event.

        An invalid file is rejected with its errors logged, and the running config is kept.
        """
        notify("RELOADING=1")
        try:
            new = load_settings(self.settings.source_path)
        except ConfigError as exc:
            log.error("config_reload_rejected", errors=exc.errors)
            notify("READY=1")
            return False
        plan = plan_reload(self.settings, new)
        if plan.needs_restart:
            log.warning("config_change_needs_restart", keys=list(plan.needs_restart))
        self.settings = effective(self.settings, new)
        for device in plan.restart_devices:
            await self._stop_driver(device)
        for device in plan.removed:
            self._reporter(device)(False, "removed from the config")
        devices = {d.id: d for d in self.settings.devices}
        for device in plan.start_devices:
            self._driver_tasks[device] = self._start_driver(devices[device])
        self.buffer.max_bytes = self.settings.buffer.max_bytes
        self.buffer.keep_unconfirmed = frozenset(
            d.id for d in self.settings.devices if d.confirm == "accepted"
        )
        self.publisher.reconfigure(self.settings.mqtt)
        log.info(
            "config_reloaded",
            added=list(plan.added),
            removed=list(plan.removed),
            changed=list(plan.changed),
            mqtt_reconnect=plan.mqtt_changed,
        )
        freeze_startup_objects()
        notify("READY=1", f"STATUS=running with {len(self._driver_tasks)} devices")
        return True

    async def _stop_driver(self, device: str) -> None:
        self.confirmations.device_stopped(device)  # while the driver still holds its device
        task = self._driver_tasks.pop(device, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        driver = self.drivers.pop(device, None)
        if driver is not None:
            with contextlib.suppress(Exception):
                await driver.stop()

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.inbound.handle(topic, payload)

    def _start_driver(self, device: DeviceConfig) -> asyncio.Task[None]:
        cls = registry.driver_class(device.driver)
        driver = cls(
            device, emit=self.pipeline.emitter(device), report_status=self._reporter(device.id)
        )
        self.drivers[device.id] = driver
        return asyncio.create_task(self._supervise(driver), name=f"driver-{device.id}")

    async def _supervise(self, driver: Driver[Any]) -> None:
        """Restart a driver that raised, with backoff, so one device's bug cannot stop the rest.

        Drivers retry device faults themselves; this catches their bugs.
        """
        backoff = Backoff(1.0, 30.0)
        while True:
            try:
                await driver.run()
                log.warning("driver_returned", device=driver.device_id)
            except Exception:
                log.exception("driver_crashed", device=driver.device_id)
                driver.set_status(False, "driver error, restarting")
            await asyncio.sleep(backoff.next())

    def _reporter(self, device: str) -> StatusFn:
        def report(up: bool, detail: str) -> None:
            state = "up" if up else "down"
            previous = self.device_states.get(device)
            if previous is not None and previous["state"] == state:
                previous["detail"] = detail
                return
            body = {"state": state, "since": rfc3339_now(), "detail": detail}
            self.device_states[device] = body
            if up:
                log.info("device_up", device=device, detail=detail)
            else:
                log.warning("device_down", device=device, detail=detail)
            self.publisher.device_status(device, body)
            self._spawn(self.buffer.set_device_status(device, state, detail, body["since"]))

        return report

    def _feedback(self, device: str, outcome: Outcome) -> None:
        """Give feedback at once where the driver can, else in a task of its own."""
        driver = self.drivers.get(device)
        if driver is None:
            return
        try:
            if driver.feedback_now(outcome):
                return
        except Exception:
            log.exception("feedback_failed", device=device, outcome=outcome.value)
            return
        task = asyncio.create_task(self._feedback_later(driver, outcome))
        self._feedback_tasks.add(task)
        task.add_done_callback(self._feedback_tasks.discard)

    async def _feedback_later(self, driver: Driver[Any], outcome: Outcome) -> None:
        try:
            await driver.feedback(outcome)
        except Exception:
            log.exception("feedback_failed", device=driver.device_id, outcome=outcome.value)

    def _spawn(self, coro: Any) -> None:  # noqa: ANN401 - any awaitable
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _housekeeping(self) -> None:
        """Watchdog, checkpoints, retention: each on its own period, from one 1 s tick."""
        s = self.settings
        watchdog = "WATCHDOG_USEC" in os.environ
        tick = 0
        last_checkpoint = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(CHECKPOINT_TICK_S)
            tick += 1
            if watchdog and self.buffer.healthy and tick % TICKS_PER_S == 0:
                notify("WATCHDOG=1")
            if tick % TICKS_PER_S == 0:
                await self._sample_metrics()
            due = loop.time() - last_checkpoint >= s.mqtt.checkpoint_interval
            if due or self.publisher.changed.is_set():
                self.publisher.changed.clear()
                if await self.publish_checkpoint():
                    last_checkpoint = loop.time()
            if tick % int(PRUNE_INTERVAL_S * TICKS_PER_S) == 0:
                pruned = await self.buffer.prune(s.buffer.retention)
                if pruned:
                    log.info("buffer_pruned", events=pruned)

    async def publish_checkpoint(self) -> bool:
        """Retained per-device parity figures for central consumers; False if not connected.

        ``last_sent_seq`` is the highest seq the broker acknowledged; every seq up to it was
        delivered unless ``pending`` says some still wait (a live-first drain, ``draining``).
        """
        stats = await self.buffer.stats()
        body = {
            "time": rfc3339_now(),
            "gateway": self.settings.gateway.id,
            "site": self.settings.gateway.site,
            "draining": self.publisher.draining,
            "devices": {
                name: {
                    "last_seq": d.last_seq,
                    "last_sent_seq": d.last_sent_seq,
                    "pending": d.pending,
                    "oldest_pending_age_s": d.oldest_pending_age_s,
                }
                for name, d in stats.devices.items()
            },
        }
        return await self.publisher.publish_checkpoint(body)

    async def _shutdown(
        self, publisher_task: asyncio.Task[None], housekeeping: asyncio.Task[None]
    ) -> None:
        housekeeping.cancel()
        for task in self._helpers:
            task.cancel()
        await asyncio.gather(*self._helpers, return_exceptions=True)
        await asyncio.gather(housekeeping, return_exceptions=True)
        for device in list(self._driver_tasks):
            await self._stop_driver(device)
        with contextlib.suppress(Exception):
            await self.publish_checkpoint()
        self.publisher.stop()
        await asyncio.gather(publisher_task, return_exceptions=True)
        self.confirmations.close()
        if self._feedback_tasks:  # a few bytes, or a GPO pulse: let them finish, briefly
            await asyncio.wait(self._feedback_tasks, timeout=1.0)
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.metrics is not None:
            self.metrics.close()
