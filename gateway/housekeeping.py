"""The periodic jobs: metrics sampling, the retained checkpoint, retention pruning.

Each runs as its own periodic task under :class:`gateway.supervisor.Supervisor`, so a slow
table scan in one (buffer stats at a million rows take over a second) or an exception in one
never holds up or stops the others, nor the watchdog. The settings they use (retention,
checkpoint interval) live here and are replaced by :meth:`Housekeeping.configure` on reload.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from buffer.stats import BufferStats
from buffer.store import Buffer
from drivers.base import Driver
from gateway.confirmations import Confirmations
from gateway.events import rfc3339_now
from gateway.inbound import Inbound
from gateway.pipeline import Pipeline
from gateway.publisher import Publisher
from gateway.settings import Settings
from gateway.supervisor import JobErrors, Supervisor

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics

log = structlog.get_logger(__name__)

PRUNE_INTERVAL_S = 60.0
CHECKPOINT_TICK_S = 0.25
"""How soon a change of state (connect, drain start or end) reaches the checkpoint."""
METRICS_INTERVAL_S = 1.0
STATS_COST_FACTOR = 20.0
"""Metrics refresh buffer stats no sooner than this many times their last duration."""

JOBS = ("metrics", "checkpoint", "prune")


@dataclass(frozen=True, slots=True)
class Parts:
    """What the jobs read from: the running components."""

    buffer: Buffer
    publisher: Publisher
    confirmations: Confirmations
    pipeline: Pipeline
    inbound: Inbound
    device_states: Mapping[str, Mapping[str, Any]]
    job_errors: JobErrors
    drivers: Mapping[str, Driver[Any]] = field(default_factory=dict)


class Housekeeping:
    """The periodic jobs of one gateway, configured from its settings."""

    def __init__(
        self, parts: Parts, settings: Settings, metrics: GatewayMetrics | None = None
    ) -> None:
        self._parts = parts
        self._metrics = metrics
        self.retention = settings.buffer.retention
        self.checkpoint_interval = settings.mqtt.checkpoint_interval
        self._identity = (settings.gateway.id, settings.gateway.site)
        self._last_checkpoint = 0.0
        self._stats: BufferStats | None = None
        self._stats_due = 0.0

    def configure(self, settings: Settings) -> None:
        """Take the settings a reload may change; the next period uses them."""
        self.retention = settings.buffer.retention
        self.checkpoint_interval = settings.mqtt.checkpoint_interval

    def start(self, supervisor: Supervisor) -> None:
        """One periodic task per job (names in :data:`JOBS`)."""
        supervisor.periodic("metrics", lambda: METRICS_INTERVAL_S, self.sample_metrics)
        supervisor.periodic("checkpoint", lambda: CHECKPOINT_TICK_S, self.checkpoint_tick)
        supervisor.periodic("prune", lambda: PRUNE_INTERVAL_S, self.prune)

    async def prune(self) -> None:
        """Retention: delete events sent longer ago than ``buffer.retention``."""
        pruned = await self._parts.buffer.prune(self.retention)
        if pruned:
            log.info("buffer_pruned", events=pruned)

    async def checkpoint_tick(self) -> None:
        """Publish the checkpoint when its interval is up or the publisher's state changed."""
        loop = asyncio.get_running_loop()
        publisher = self._parts.publisher
        due = loop.time() - self._last_checkpoint >= self.checkpoint_interval
        if not publisher.connected.is_set():
            # Nowhere to publish: do not scan the buffer for nothing every tick while the
            # backlog grows (a million rows is over a second per scan). Connecting sets
            # ``changed``, so the checkpoint goes out as soon as the session is up.
            return
        if due or publisher.changed.is_set():
            publisher.changed.clear()
            if await self.publish_checkpoint():
                self._last_checkpoint = loop.time()

    async def publish_checkpoint(self) -> bool:
        """Retained per-device parity figures for central consumers; False if not connected.

        ``last_sent_seq`` is the highest seq the broker acknowledged; every seq up to it was
        delivered unless ``pending`` says some still wait (a live-first drain, ``draining``) or
        ``dropped_ranges`` says it was telemetry dropped on purpose at the size cap
        (``dropped_events`` counts them all). ``unconfirmed`` and ``lowest_unconfirmed_seq``
        show, for ``accepted``-level devices, delivered events still awaiting a verdict, so
        central can confirm them again.
        """
        stats = await self._parts.buffer.stats()
        gateway_id, site = self._identity
        body = {
            "time": rfc3339_now(),
            "gateway": gateway_id,
            "site": site,
            "draining": self._parts.publisher.draining,
            "devices": {
                name: {
                    "last_seq": d.last_seq,
                    "last_sent_seq": d.last_sent_seq,
                    "pending": d.pending,
                    "oldest_pending_age_s": d.oldest_pending_age_s,
                    "unconfirmed": d.unconfirmed,
                    "lowest_unconfirmed_seq": d.lowest_unconfirmed_seq,
                    "dropped_events": d.dropped_events,
                    "dropped_ranges": [list(r) for r in d.dropped_ranges],
                }
                for name, d in stats.devices.items()
            },
        }
        return await self._parts.publisher.publish_checkpoint(body)

    async def sample_metrics(self) -> None:
        """Bring the Prometheus series up to date (nothing to do when metrics are off)."""
        if self._metrics is None:
            return
        loop = asyncio.get_running_loop()
        failure: Exception | None = None
        if self._stats is None or loop.time() >= self._stats_due:
            # Buffer stats read kept counts (well under a millisecond at millions of rows,
            # docs/buffer.md); still refreshed at most every 20x their own duration, so they
            # never take more than 5% of a core whatever they cost.
            started = loop.time()
            try:
                self._stats = await self._parts.buffer.stats()
            except Exception as exc:  # the counters below still go out, with the last stats
                failure = exc
            self._stats_due = loop.time() + STATS_COST_FACTOR * (loop.time() - started)
        if self._stats is not None:
            self._sample(self._metrics, self._stats)
        if failure is not None:
            raise failure

    def _sample(self, metrics: GatewayMetrics, stats: BufferStats) -> None:
        p = self._parts
        metrics.sample(
            stats=stats,
            transitions=p.buffer.transitions,
            device_states=p.device_states,
            connected=p.publisher.connected.is_set(),
            reconnects=p.publisher.reconnects,
            outcomes=p.confirmations.outcomes,
            latencies_total=p.confirmations.latencies_total,
            latencies=p.confirmations.latencies,
            inbound=p.inbound.counters,
            publish_latencies_total=p.publisher.publish_latencies_total,
            publish_latencies=p.publisher.publish_latencies,
            stored=p.pipeline.stored,
            store_errors=p.publisher.store_errors,
            job_errors=p.job_errors.counts,
            driver_counters={name: d.health().counters for name, d in p.drivers.items()},
        )
