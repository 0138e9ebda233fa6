"""Prometheus metrics, off by default (``[metrics] listen = "127.0.0.1:9108"`` turns them on).

The hot paths keep plain counters of their own (``Buffer.transitions``, ``Confirmations``,
``Publisher.reconnects``); this module samples them once a second from the housekeeping loop and
turns them into Prometheus series. Nothing here runs per event, and nothing blocks the loop: the
HTTP endpoint is prometheus-client's own thread, reading values that only this sampler writes.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from buffer.stats import BufferStats
from gateway.metrics_endpoint import MetricsEndpoint

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics(MetricsEndpoint):
    """Every series the gateway exports, in a registry of its own."""

    def __init__(self) -> None:
        super().__init__(CollectorRegistry())
        r = self.registry
        self.transitions = Counter(
            "edge_gateway_event_transitions",
            "Buffer state changes: stored, refused, dropped, evicted_sent, claimed, sent, ...",
            ["transition"],
            registry=r,
        )
        self.stored = Counter(
            "edge_gateway_events_stored",
            "Events committed to the buffer, by device and CloudEvents type",
            ["device", "type"],
            registry=r,
        )
        self.buffer_events = Gauge(
            "edge_gateway_buffer_events", "Events in the buffer by state", ["state"], registry=r
        )
        self.buffer_bytes = Gauge(
            "edge_gateway_buffer_payload_bytes", "Payload bytes held (the cap applies)", registry=r
        )
        self.oldest_unsent = Gauge(
            "edge_gateway_oldest_unsent_age_seconds", "Age of the oldest unsent event", registry=r
        )
        self.device_up = Gauge(
            "edge_gateway_device_up", "1 when the device is up", ["device"], registry=r
        )
        self.device_last_seq = Gauge(
            "edge_gateway_device_last_seq", "Last stored seq per device", ["device"], registry=r
        )
        self.device_pending = Gauge(
            "edge_gateway_device_unsent", "Unsent events per device", ["device"], registry=r
        )
        self.reconnects = Counter(
            "edge_gateway_mqtt_reconnects", "Lost broker connections", registry=r
        )
        self.store_errors = Counter(
            "edge_gateway_publisher_store_errors",
            "Publisher sessions ended by a buffer error (disk full, I/O error, locked file)",
            registry=r,
        )
        self.job_errors = Counter(
            "edge_gateway_job_errors",
            "Failures of a periodic job (metrics, checkpoint, prune), each counted",
            ["job"],
            registry=r,
        )
        self.broker_connected = Gauge(
            "edge_gateway_mqtt_connected", "1 while connected to the broker", registry=r
        )
        self.feedback = Counter(
            "edge_gateway_feedback", "Worker feedback given, by outcome", ["outcome"], registry=r
        )
        self.inbound = Counter(
            "edge_gateway_inbound_messages",
            "Confirm and cmd messages by outcome (accepted, invalid, foreign, duplicate, ...)",
            ["result"],
            registry=r,
        )
        self.publish_latency = Histogram(
            "edge_gateway_publish_latency_seconds",
            "Commit in the buffer to PUBACK recorded (includes any time buffered in an outage)",
            buckets=(*LATENCY_BUCKETS, 60, 300, 3600),
            registry=r,
        )
        self.feedback_latency = Histogram(
            "edge_gateway_feedback_latency_seconds",
            "Capture to good feedback",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.poll_overruns = Counter(
            "edge_gateway_poll_overruns",
            "Polls that could not start on time (the device answered slower than the interval)",
            ["device"],
            registry=r,
        )
        self._seen: collections.Counter[str] = collections.Counter()
        self._seen_reconnects = 0
        self._seen_totals: collections.Counter[str] = collections.Counter()

    def sample(
        self,
        *,
        stats: BufferStats,
        transitions: Mapping[str, int],
        device_states: Mapping[str, Mapping[str, Any]],
        connected: bool,
        reconnects: int,
        outcomes: Mapping[str, int],
        latencies_total: int,
        latencies: Sequence[float],
        inbound: Mapping[str, int] | None = None,
        publish_latencies_total: int = 0,
        publish_latencies: Sequence[float] = (),
        stored: Mapping[tuple[str, str], int] | None = None,
        store_errors: int = 0,
        job_errors: Mapping[str, int] | None = None,
        driver_counters: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        """Bring every series up to date with the gateway's own counters."""
        for name, value in transitions.items():
            self._advance(self.transitions.labels(name), f"t:{name}", value)
        for name, value in outcomes.items():
            self._advance(self.feedback.labels(name), f"o:{name}", value)
        for (device, type_), value in (stored or {}).items():
            self._advance(self.stored.labels(device, type_), f"s:{device}:{type_}", value)
        for name, value in (inbound or {}).items():
            self._advance(self.inbound.labels(name), f"i:{name}", value)
        self._advance(self.store_errors, "store_errors", store_errors)
        for name, value in (job_errors or {}).items():
            self._advance(self.job_errors.labels(name), f"j:{name}", value)
        self._sample_drivers(driver_counters or {})
        for state, count in stats.by_state.items():
            self.buffer_events.labels(state).set(count)
        self.buffer_bytes.set(stats.payload_bytes)
        self.oldest_unsent.set(stats.oldest_unsent_age_s or 0.0)
        for device, dev in stats.devices.items():
            self.device_last_seq.labels(device).set(dev.last_seq)
            self.device_pending.labels(device).set(dev.pending)
        for device, body in device_states.items():
            self.device_up.labels(device).set(1 if body.get("state") == "up" else 0)
        self.broker_connected.set(1 if connected else 0)
        if reconnects > self._seen_reconnects:
            self.reconnects.inc(reconnects - self._seen_reconnects)
            self._seen_reconnects = reconnects
        self._observe_new(self.feedback_latency, "feedback", latencies_total, latencies)
        self._observe_new(
            self.publish_latency, "publish", publish_latencies_total, publish_latencies
        )

    def _observe_new(
        self, histogram: Histogram, key: str, total: int, values: Sequence[float]
    ) -> None:
        """Observe the values added since the last sample (the list is bounded, the total not)."""
        new = min(total - self._seen_totals[key], len(values))
        for value in values[len(values) - new :] if new > 0 else ():
            histogram.observe(value)
        self._seen_totals[key] = total

    def _advance(self, counter: Any, key: str, value: int) -> None:  # noqa: ANN401 - a child
        delta = value - self._seen[key]
        if delta > 0:
            counter.inc(delta)
            self._seen[key] = value

    def _sample_drivers(self, driver_counters: Mapping[str, Mapping[str, int]]) -> None:
        """Drivers' own counters that have a series: ``overruns`` of polling drivers."""
        for device, counters in driver_counters.items():
            overruns = counters.get("overruns")
            if overruns is not None:
                self._advance_restarting(
                    self.poll_overruns.labels(device), f"ov:{device}", overruns
                )

    def _advance_restarting(self, counter: Any, key: str, value: int) -> None:  # noqa: ANN401
        """As ``_advance`` for a count that starts again from 0 (a driver rebuilt on reload)."""
        seen = self._seen[key]
        delta = value - seen if value >= seen else value
        if delta > 0:
            counter.inc(delta)
        self._seen[key] = value
