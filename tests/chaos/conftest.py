"""Chaos suite plumbing: the ``chaos`` marker, seeded randomness, knobs, and the summary table.

Everything under ``tests/chaos`` is marked ``chaos`` (run alone with ``pytest -m chaos``, or skip
with ``-m "not chaos"``). Every random choice comes from ``chaos_rng``, seeded from
``EDGE_CHAOS_SEED`` (default fixed) and the test id, so a failure replays with the same seed.
Sizes are env knobs; the defaults are the issue's full numbers (about 4.5 minutes on the 2-core
box), and a quick local run can shrink them:

| variable | default | quick local run |
| --- | --- | --- |
| ``EDGE_CHAOS_KILLS`` | 100 | 20 |
| ``EDGE_CHAOS_RESTARTS`` | 50 | 10 |
| ``EDGE_CHAOS_NET_FAULTS`` | 20 | 8 |
| ``EDGE_CHAOS_GATEWAYS`` | 100 | 100 |

At the end of the session a table (faults injected, events at risk, lost, new-id duplicates)
is printed, and written as JSON to ``EDGE_CHAOS_REPORT`` when that is set.
"""

from __future__ import annotations

import os
import random
import time
import zlib
from pathlib import Path

import pytest

from tests.chaos.report import REPORT, SEED, ChaosReport, ChaosRow

__all__ = ["ChaosReport", "ChaosRow", "Stopwatch", "knob"]

HERE = Path(__file__).parent


def knob(name: str, default: int) -> int:
    """An integer from the environment, for sizing a chaos run."""
    return int(os.environ.get(name, str(default)))


@pytest.fixture
def chaos_report() -> ChaosReport:
    """The session's summary table."""
    return REPORT


@pytest.fixture
def chaos_rng(request: pytest.FixtureRequest) -> random.Random:
    """Randomness seeded from ``EDGE_CHAOS_SEED`` and the test id: a failure replays exactly."""
    return random.Random(SEED ^ zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def stopwatch() -> Stopwatch:
    """Seconds since the test started, for the table."""
    return Stopwatch()


class Stopwatch:
    """A monotonic start time."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        """Seconds since creation."""
        return time.monotonic() - self.start


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this folder ``chaos``."""
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.chaos)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In an xdist worker, hand the rows to the controller, which prints the table."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["chaos_rows"] = REPORT.to_json()
