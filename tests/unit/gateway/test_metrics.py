"""Prometheus series follow the gateway's own counters, and the endpoint serves them."""

from __future__ import annotations

import urllib.request

from prometheus_client import generate_latest

from buffer.stats import BufferStats, DeviceStats
from gateway.metrics import GatewayMetrics
from simulators.broker import free_port


def sample(
    metrics: GatewayMetrics, *, stored: int, reconnects: int, latencies: list[float]
) -> None:
    stats = BufferStats(
        by_state={"pending": 3, "in_flight": 1, "sent": stored - 4},
        oldest_unsent_age_s=2.5,
        payload_bytes=1234,
        devices={
            "dock-1": DeviceStats("dock-1", last_seq=stored, last_sent_seq=stored - 4, pending=4)
        },
    )
    metrics.sample(
        stats=stats,
        transitions={"stored": stored, "sent": stored - 4},
        device_states={"dock-1": {"state": "up"}, "portal": {"state": "down"}},
        connected=True,
        reconnects=reconnects,
        outcomes={"good": len(latencies), "bad": 0, "pending": 1},
        latencies_total=len(latencies),
        latencies=latencies,
    )


def test_counters_advance_by_deltas_and_gauges_follow() -> None:
    """Sampling twice counts each stored event once; gauges show the latest figures."""
    metrics = GatewayMetrics()
    sample(metrics, stored=10, reconnects=1, latencies=[0.001, 0.002])
    sample(metrics, stored=25, reconnects=3, latencies=[0.001, 0.002, 0.004])
    text = generate_latest(metrics.registry).decode()
    assert 'edge_gateway_event_transitions_total{transition="stored"} 25.0' in text
    assert "edge_gateway_mqtt_reconnects_total 3.0" in text
    assert 'edge_gateway_device_up{device="dock-1"} 1.0' in text
    assert 'edge_gateway_device_up{device="portal"} 0.0' in text
    assert 'edge_gateway_buffer_events{state="pending"} 3.0' in text
    assert "edge_gateway_oldest_unsent_age_seconds 2.5" in text
    assert "edge_gateway_feedback_latency_seconds_count 3.0" in text
    assert 'edge_gateway_feedback_latency_seconds_bucket{le="0.002"} 2.0' in text


def test_endpoint_serves_on_the_configured_address_and_stops() -> None:
    """/metrics answers on the loopback address given; close() frees the port."""
    metrics = GatewayMetrics()
    sample(metrics, stored=5, reconnects=0, latencies=[])
    port = free_port()
    metrics.serve(f"127.0.0.1:{port}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert 'edge_gateway_device_last_seq{device="dock-1"} 5.0' in body
    finally:
        metrics.close()


def test_store_errors_and_job_failures_are_counted() -> None:
    """The publisher's store errors and each periodic job's failures become counters."""
    metrics = GatewayMetrics()
    stats = BufferStats(by_state={}, payload_bytes=0, devices={})
    common = {
        "stats": stats,
        "transitions": {},
        "device_states": {},
        "connected": False,
        "reconnects": 0,
        "outcomes": {},
        "latencies_total": 0,
        "latencies": [],
    }
    metrics.sample(**common, store_errors=2, job_errors={"checkpoint": 4})
    metrics.sample(**common, store_errors=3, job_errors={"checkpoint": 4, "prune": 1})
    text = generate_latest(metrics.registry).decode()
    assert "edge_gateway_publisher_store_errors_total 3.0" in text
    assert 'edge_gateway_job_errors_total{job="checkpoint"} 4.0' in text
    assert 'edge_gateway_job_errors_total{job="prune"} 1.0' in text


def test_poll_overruns_per_device_survive_a_driver_rebuilt_on_reload() -> None:
    """Driver ``overruns`` counters become edge_gateway_poll_overruns_total{device}; a driver
    rebuilt on reload counts from 0 again, and the series goes on rising from where it was."""
    metrics = GatewayMetrics()
    stats = BufferStats(by_state={}, oldest_unsent_age_s=None, payload_bytes=0, devices={})
    common = {
        "stats": stats,
        "transitions": {},
        "device_states": {},
        "connected": True,
        "reconnects": 0,
        "outcomes": {},
        "latencies_total": 0,
        "latencies": [],
    }
    metrics.sample(**common, driver_counters={"conveyor-1": {"overruns": 3}, "dock-1": {}})
    metrics.sample(**common, driver_counters={"conveyor-1": {"overruns": 5, "reads": 9}})
    metrics.sample(**common, driver_counters={"conveyor-1": {"overruns": 2}})  # rebuilt
    text = generate_latest(metrics.registry).decode()
    assert 'edge_gateway_poll_overruns_total{device="conveyor-1"} 7.0' in text
    assert 'device="dock-1"' not in text, "a driver without overruns has no series"
