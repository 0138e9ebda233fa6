"""The wiring: builds buffer, pipeline, drivers, publisher and confirmations, and stops them.

What runs, what restarts and what is fatal is gateway/supervisor.py; the periodic jobs are
gateway/housekeeping.py; every setting a reload may change reaches the components through
:meth:`Gateway._configure`, the one place that hands settings out.

Start order matters: the buffer opens first (nothing is read from a device before there is
somewhere durable to put it), then the publisher and the drivers. Stop order is the reverse,
bounded by ``gateway.shutdown_timeout``: new confirms are no longer taken and those received are
committed (and only then acknowledged), drivers stop reading, in-flight publishes get a chance
at their PUBACK, ``offline`` is published, the buffer checkpoints and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
from typing import TYPE_CHECKING, Any

import structlog

from buffer.schema import BufferOpenError
from buffer.store import Buffer
from drivers import registry
from drivers.base import DeviceConfig, Driver, Outcome, StatusFn
from gateway.confirmations import Confirmations
from gateway.events import rfc3339_now
from gateway.housekeeping import JOBS, Housekeeping, Parts
from gateway.inbound import Inbound
from gateway.pipeline import Pipeline
from gateway.publisher import Publisher
from gateway.reload import effective, plan_reload
from gateway.replay import ReplayWorker
from gateway.runstate import write_link_state
from gateway.sdnotify import notify
from gateway.settings import ConfigError, Settings, load_settings
from gateway.statelock import StateLock
from gateway.supervisor import Supervisor
from gateway.topics import Topics

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics

log = structlog.get_logger(__name__)

REMOVED = "removed from the config"
"""A device's status detail once the config no longer has it (by a reload, or while stopped)."""


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
    release_free_heap()


def release_free_heap() -> None:
    """Give the heap that start-up freed back to the system (glibc's ``malloc_trim``).

    Start-up builds and drops a lot (pydantic schemas, the config, biip's company prefix
    table): glibc keeps freed memory for reuse, so without this it stays in the idle RSS (about
    10 MB of it, issue 16). A no-op where the C library has no ``malloc_trim``.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


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
        self.supervisor = Supervisor()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down within the configured bound.

        The state directory is locked first (gateway/statelock.py): a second daemon on the same
        buffer raises :class:`~gateway.statelock.AlreadyRunningError` before touching anything.
        """
        state_dir = self.settings.gateway.state_dir
        try:
            lock = StateLock.acquire(state_dir)
        except OSError as exc:
            msg = f"{state_dir}: cannot lock the state directory: {exc.strerror or exc}"
            raise BufferOpenError(msg) from exc
        try:
            # What a previous daemon wrote is stale now, even if it had this very pid (a pid
            # namespace restarts at 1): start from "not connected, since now".
            self._link_changed(False, rfc3339_now())
            await self._run(stop)
        finally:
            lock.release()

    async def _run(self, stop: asyncio.Event) -> None:
        s = self.settings
        self.buffer = await Buffer.open(
            s.database_path,
            max_bytes=s.buffer.max_bytes,
            batch_max=s.buffer.batch_max,
            keep_unconfirmed=frozenset(d.id for d in s.devices if d.confirm == "accepted"),
            progress=_still_starting,
        )
        # The buffer is closed however the run ends: aiosqlite's threads are not daemons, so a
        # buffer left open after a failure kept the process alive (and the writer lock taken)
        # until systemd killed it.
        try:
            failure = await self._serve(stop)
        except BaseException as exc:
            await self._close_buffer(exc)
            raise
        await self._close_buffer(failure)
        gc.unfreeze()  # collectable again: several gateways may run in one (test) process
        log.info("gateway_stopped")
        if failure is not None:
            raise failure

    async def _close_buffer(self, failure: BaseException | None) -> None:
        """Close the buffer; when the run already failed, its failure stays what is reported.

        A close that fails then (logged as ``buffer_close_failed`` by the buffer) must not
        replace why the daemon stopped: the log and the exit would name only the close.
        """
        try:
            await self.buffer.close()
        except Exception:
            if failure is None:
                raise

    async def _serve(self, stop: asyncio.Event) -> BaseException | None:
        """Everything between opening the buffer and closing it; returns what failed, if any."""
        s = self.settings
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
            on_link=self._link_changed,
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
        self.housekeeping = Housekeeping(
            Parts(
                self.buffer,
                self.publisher,
                self.confirmations,
                self.pipeline,
                self.inbound,
                self.device_states,
                self.supervisor.errors,
                self.drivers,
            ),
            s,
            self.metrics,
        )
        self._configure(s)
        await self._report_removed_while_stopped(s)
        sv = self.supervisor
        publisher_task = sv.essential("publisher", self.publisher.run())
        self._driver_tasks = {device.id: self._start_driver(device) for device in s.devices}
        sv.watchdog(lambda: self.buffer.healthy)
        self.housekeeping.start(sv)
        helpers = [
            sv.restarting("inbound", self.inbound.run),
            sv.restarting("replays", self.replays.run),
        ]
        self._helpers = helpers
        if not s.devices:
            log.warning("no_devices_configured", config=str(s.source_path))
        helpers.append(sv.restarting("reloader", self._reloader))
        freeze_startup_objects()
        notify("READY=1", f"STATUS=running with {len(self._driver_tasks)} devices")
        log.info(
            "gateway_started", gateway=s.gateway.id, site=s.gateway.site, devices=len(s.devices)
        )
        failure = await sv.wait(stop)
        notify("STOPPING=1")
        log.info("gateway_stopping")
        bound = self.settings.gateway.shutdown_timeout  # as reloaded
        try:
            async with asyncio.timeout(bound):
                await self._shutdown(publisher_task)
        except TimeoutError:
            log.warning("shutdown_timeout", bound_s=bound)
            publisher_task.cancel()
            # Let its cleanup (record the acks it has, release the rest) reach the buffer
            # before it closes; bounded again, so a stop always ends.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(bound):
                    await asyncio.gather(publisher_task, return_exceptions=True)
        return failure

    def _link_changed(self, connected: bool, since: str) -> None:
        """Record the MQTT link's state for ``status`` (gateway/runstate.py)."""
        mqtt = self.settings.mqtt
        write_link_state(
            self.settings.gateway.state_dir,
            connected=connected,
            since=since,
            broker=f"{mqtt.host}:{mqtt.port}",
        )

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
        Whatever else fails is logged too, and systemd is told the daemon runs on (``READY=1``
        after ``RELOADING=1``, with a STATUS saying the reload failed): the reloader survives it
        and the next SIGHUP is served (issue 18, finding 5).
        """
        notify("RELOADING=1")
        try:
            new = load_settings(self.settings.source_path)
        except ConfigError as exc:
            log.error("config_reload_rejected", errors=exc.errors)
            notify("READY=1", "STATUS=running; config reload rejected, see the log")
            return False
        except Exception as exc:
            return self._reload_failed(exc)
        try:
            await self._apply(new)
        except Exception as exc:
            return self._reload_failed(exc)
        return True

    def _reload_failed(self, exc: Exception) -> bool:
        log.error("config_reload_failed", error=f"{type(exc).__name__}: {exc}"[:300], exc_info=exc)
        notify(
            "READY=1",
            f"STATUS=running with {len(self._driver_tasks)} devices; last reload failed"
            f" ({type(exc).__name__}), see the log",
        )
        return False

    async def _apply(self, new: Settings) -> None:
        """Apply a loaded config (the rest of :meth:`reload`)."""
        plan = plan_reload(self.settings, new)
        if plan.needs_restart:
            log.warning("config_change_needs_restart", keys=list(plan.needs_restart))
        self.settings = effective(self.settings, new)
        for device in plan.restart_devices:
            await self._stop_driver(device)
        for device in plan.removed:
            self._reporter(device)(False, REMOVED)
        devices = {d.id: d for d in self.settings.devices}
        for device in plan.start_devices:
            self._driver_tasks[device] = self._start_driver(devices[device])
        self._configure(self.settings)
        log.info(
            "config_reloaded",
            added=list(plan.added),
            removed=list(plan.removed),
            changed=list(plan.changed),
            mqtt_reconnect=plan.mqtt_changed,
        )
        freeze_startup_objects()
        notify("READY=1", f"STATUS=running with {len(self._driver_tasks)} devices")

    def _configure(self, s: Settings) -> None:
        """Hand the settings a reload may change to every component: at start and on reload.

        The one place settings reach running components, so none keeps a stale copy.
        Devices are not here: a changed device is a restarted driver (see :meth:`reload`).
        """
        self.buffer.max_bytes = s.buffer.max_bytes
        self.buffer.keep_unconfirmed = frozenset(d.id for d in s.devices if d.confirm == "accepted")
        self.publisher.reconfigure(s.mqtt)
        self.replays.reconfigure(rate=s.mqtt.replay_rate)
        self.housekeeping.configure(s)

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

    def _on_message(
        self, topic: str, payload: bytes, *, retained: bool = False
    ) -> asyncio.Future[None] | None:
        return self.inbound.handle(topic, payload, retained=retained)

    def _start_driver(self, device: DeviceConfig) -> asyncio.Task[None]:
        cls = registry.driver_class(device.driver)
        driver = cls(
            device, emit=self.pipeline.emitter(device), report_status=self._reporter(device.id)
        )
        self.drivers[device.id] = driver
        # Drivers retry device faults themselves; this catches their bugs, so one device's
        # bug cannot stop the rest.
        return self.supervisor.restarting(
            f"driver-{device.id}",
            driver.run,
            on_crash=lambda: driver.set_status(False, "driver error, restarting"),
        )

    async def _report_removed_while_stopped(self, settings: Settings) -> None:
        """Say "down, removed" for devices the buffer knows and the config no longer has.

        A reload says it when it removes a device. A device taken out of the config while the
        gateway was stopped kept its last retained status (often ``up``) at the broker for
        good, so central monitoring showed it healthy. Logged once: a device the buffer already
        records as removed is only published again (retained, as every device's state is when
        the session starts), with the time it was removed.
        """
        configured = {device.id for device in settings.devices}
        for device, figures in (await self.buffer.stats()).devices.items():
            if device in configured:
                continue
            if figures.status == "down" and figures.detail == REMOVED and figures.since:
                body = {"state": "down", "since": figures.since, "detail": REMOVED}
                self.device_states[device] = body
                self.publisher.device_status(device, body)
            else:
                self._reporter(device)(False, REMOVED)

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

    async def publish_checkpoint(self) -> bool:
        """Publish the retained checkpoint now; False if not connected (see Housekeeping)."""
        return await self.housekeeping.publish_checkpoint()

    async def _shutdown(self, publisher_task: asyncio.Task[None]) -> None:
        # Stop receiving before stopping the applier: what arrived is committed (and only then
        # acknowledged to the broker) within half the bound; the rest stays unacknowledged and
        # the broker sends it again next session (docs/confirmation.md).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.gateway.shutdown_timeout / 2):
                await self.inbound.drain()
        await self.supervisor.cancel("watchdog", *JOBS)  # housekeeping
        for task in self._helpers:
            task.cancel()
        await asyncio.gather(*self._helpers, return_exceptions=True)
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
