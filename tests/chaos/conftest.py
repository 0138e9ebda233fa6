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

import json
import os
import random
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SEED = int(os.environ.get("EDGE_CHAOS_SEED", "20240607"))


def knob(name: str, default: int) -> int:
    """An integer from the environment, for sizing a chaos run."""
    return int(os.environ.get(name, str(default)))


@dataclass
class ChaosRow:
    """One scenario's outcome, as the summary table prints it."""

    scenario: str
    faults: int
    at_risk: int
    lost: int
    new_id_duplicates: int
    same_id_duplicates: int = 0
    seconds: float = 0.0
    note: str = ""


class ChaosReport:
    """Rows collected during the session, printed by ``pytest_terminal_summary``."""

    def __init__(self) -> None:
        self.rows: list[ChaosRow] = []

    def add(self, row: ChaosRow) -> None:
        """Record a scenario (and print it at once, for ``-s`` runs)."""
        self.rows.append(row)
        print(f"chaos: {json.dumps(asdict(row))}")

    def table(self) -> list[str]:
        """The rows as a fixed-width text table."""
        head = (
            f"{'scenario':<34} {'faults':>6} {'at risk':>8} {'lost':>5} {'new-id dup':>10}"
            f" {'same-id dup':>11} {'secs':>6}  note"
        )
        lines = [f"chaos summary (EDGE_CHAOS_SEED={SEED})", head, "-" * len(head)]
        lines += [
            f"{r.scenario:<34} {r.faults:>6} {r.at_risk:>8} {r.lost:>5} {r.new_id_duplicates:>10}"
            f" {r.same_id_duplicates:>11} {r.seconds:>6.1f}  {r.note}"
            for r in self.rows
        ]
        return lines


REPORT = ChaosReport()


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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the table (and save it as JSON when ``EDGE_CHAOS_REPORT`` names a file)."""
    if not REPORT.rows:
        return
    terminalreporter.section("chaos summary")
    for line in REPORT.table():
        terminalreporter.write_line(line)
    target = os.environ.get("EDGE_CHAOS_REPORT")
    if target:
        Path(target).write_text(
            json.dumps({"seed": SEED, "rows": [asdict(r) for r in REPORT.rows]}, indent=2)
        )
