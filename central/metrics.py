"""Prometheus metrics of one instance: ingest counts, commit latency, gaps, replays.

Served on ``[metrics] listen`` (off when empty) from prometheus-client's own thread, from a
registry per instance (tests run two instances in one process).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.metrics_endpoint import MetricsEndpoint


class CentralMetrics(MetricsEndpoint):
    """The counters ``service`` and ``replayer`` feed."""

    def __init__(self) -> None:
        super().__init__(CollectorRegistry())
        r = self.registry
        self.events = Counter(
            "edge_central_events", "messages committed, by outcome", ["outcome"], registry=r
        )
        self.commit_seconds = Histogram(
            "edge_central_batch_commit_seconds",
            "one batch's transaction, begin to commit",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
            registry=r,
        )
        self.batch_failures = Counter(
            "edge_central_batch_failures", "batches retried (database away)", registry=r
        )
        self.confirms = Counter("edge_central_confirms", "verdicts published", registry=r)
        self.missing = Gauge(
            "edge_central_missing_events", "seqs missing against checkpoints (leader)", registry=r
        )
        self.out_of_parity = Gauge(
            "edge_central_devices_out_of_parity", "devices out of parity (leader)", registry=r
        )
        self.lag = Gauge(
            "edge_central_checkpoint_lag_events",
            "seqs stored on gateways and not yet held, summed (leader)",
            registry=r,
        )
        self.replays = Counter("edge_central_replay_requests", "cmd/replay sent", registry=r)
        self.leader = Gauge("edge_central_leader", "1 while this instance leads", registry=r)
