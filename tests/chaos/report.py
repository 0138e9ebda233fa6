"""The chaos summary table: one row per scenario, printed once at the end of the session.

With ``pytest -n`` (pytest-xdist, as ``./dev test`` runs) the scenarios run in worker
processes: each worker hands its rows to the controller when it finishes
(``tests/chaos/conftest.py``), and the root conftest prints them all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

SEED = int(os.environ.get("EDGE_CHAOS_SEED", "20240607"))


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

    def to_json(self) -> str:
        """The rows, for a worker's hand-off to the controller."""
        return json.dumps([asdict(r) for r in self.rows])

    def merge_json(self, text: str) -> None:
        """Take a worker's rows."""
        self.rows.extend(ChaosRow(**row) for row in json.loads(text))

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


def write_summary(write_line: Callable[[str], None]) -> None:
    """Print the table (and save it as JSON when ``EDGE_CHAOS_REPORT`` names a file)."""
    if not REPORT.rows:
        return
    for line in REPORT.table():
        write_line(line)
    target = os.environ.get("EDGE_CHAOS_REPORT")
    if target:
        Path(target).write_text(
            json.dumps({"seed": SEED, "rows": [asdict(r) for r in REPORT.rows]}, indent=2)
        )
