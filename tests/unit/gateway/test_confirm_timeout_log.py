"""confirm_timeout during an outage: the first logged, then one summary per device per interval."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from drivers.base import DeviceConfig, StoredEvent
from gateway import confirmations
from gateway.confirmations import Confirmations
from gateway.feedback_policy import FeedbackPolicy

SCAN = "warehouse.barcode.scanned.v1"


def policy(device: str) -> FeedbackPolicy:
    config = DeviceConfig(id=device, driver="barcode-serial", confirm="delivered")
    return FeedbackPolicy(device, "delivered", 0.01, FeedbackPolicy.for_device(config).kinds)


async def test_an_outage_logs_the_first_timeout_and_a_count_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """60 scans on two devices time out over ~0.6 s: 1 line + 1 summary per interval each."""
    monkeypatch.setattr(confirmations, "TIMEOUT_LOG_INTERVAL", 0.25)
    tracker = Confirmations(lambda _d, _o: None)
    policies = {d: policy(d) for d in ("dock-1", "dock-2")}
    with capture_logs() as logs:
        for n in range(30):
            for device, p in policies.items():
                tracker.stored(p, StoredEvent(f"{device}-{n}", device, n + 1, "t", SCAN), 0.0)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.6)
        tracker.close()
    for device in policies:
        mine = [e for e in logs if e.get("device") == device]
        firsts = [e for e in mine if e["event"] == "confirm_timeout"]
        summaries = [e for e in mine if e["event"] == "confirm_timeout_summary"]
        assert len(firsts) == 1, firsts
        assert firsts[0]["id"] == f"{device}-0"
        assert 1 <= len(summaries) <= 4, summaries
        assert sum(e["count"] for e in summaries) == 29  # every timeout counted, none lost
    assert tracker.outcomes["pending"] == 60
