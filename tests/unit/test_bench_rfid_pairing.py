"""bench/rfid_reads.py: GPO edges paired with the tags' first reads, merged pulses included."""

from __future__ import annotations

import pytest

from bench.rfid_reads import answered


def test_one_edge_per_tag_is_timed_from_its_own_read() -> None:
    assert answered([1.003, 1.052, 1.104], [1.1, 1.0, 1.05]) == pytest.approx([3.0, 2.0, 4.0])


def test_a_merged_pulse_leaves_a_tag_without_a_figure_and_errs_long() -> None:
    """The second tag's good extended the first's pulse: two edges for three tags, the last
    timed from the second tag's read (52 ms), never shorter than the truth (2 ms)."""
    assert answered([1.002, 1.102], [1.0, 1.05, 1.1]) == pytest.approx([2.0, 52.0])


def test_an_edge_before_any_read_answers_nothing() -> None:
    assert answered([0.9, 1.004], [1.0]) == pytest.approx([4.0])
