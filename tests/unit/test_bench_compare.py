"""bench/compare.py: the change between two bench/run_all results files."""

from __future__ import annotations

import json
from pathlib import Path

from bench.compare import compare, figures, load


def _write(path: Path, *results: dict[str, object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in results))
    return path


def test_figures_flatten_numbers_and_leave_targets_and_flags_out() -> None:
    result = {
        "benchmark": "idle",
        "rss_mb": {"start": 48.0, "peak": 49.5},
        "cpu_percent": 0.3,
        "target_met": True,
        "devices": [{"id": "dock-1"}],
        "targets": {"rss_mb": 45},
        "target_ratio": 1.5,
        "latency": {"p99_ms": 3.0, "latency_target_p99_ms": 20},
        "commit": "abc1234",
    }
    assert figures(result) == {
        "rss_mb.start": 48.0,
        "rss_mb.peak": 49.5,
        "cpu_percent": 0.3,
        "latency.p99_ms": 3.0,
    }


def test_compare_gives_each_figure_old_new_and_change(tmp_path: Path) -> None:
    old = _write(
        tmp_path / "old.jsonl",
        {"benchmark": "throughput", "end_to_end_per_s": 10000, "cpu": 60.0, "commit": "a"},
        {"benchmark": "storage", "ratio": 1.5},
    )
    new = _write(
        tmp_path / "new.jsonl",
        {"benchmark": "throughput", "end_to_end_per_s": 12500, "cpu": 45.0, "floor": 9},
    )
    lines = compare(load(old), load(new))
    assert lines[0].startswith("old: commit a")
    table = "\n".join(lines)
    assert "+25.0 %" in table
    assert "-25.0 %" in table
    assert "floor" in table
    assert "(only in the new run)" in table
    assert "storage      (only in the old run)" in table
