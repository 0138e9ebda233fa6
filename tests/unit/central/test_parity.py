"""Range arithmetic behind parity and replay: O(gaps), dropped telemetry never missing."""

from __future__ import annotations

from central.ledger import merge_ranges
from central.parity import device_parity, subtract
from central.replayer import coalesce


def test_subtract_and_merge() -> None:
    """Gaps are what is left of 1..N after the held and dropped ranges."""
    assert subtract((1, 10), [(2, 3), (5, 5)]) == [(1, 1), (4, 4), (6, 10)]
    assert subtract((1, 10), [(1, 10)]) == []
    assert subtract((1, 10), [(0, 4)], [(8, 20)]) == [(5, 7)]
    assert merge_ranges([(5, 6), (1, 2), (3, 3), (9, 9)]) == [(1, 3), (5, 6), (9, 9)]
    assert merge_ranges([(5, 6), (1, 2), (3, 4)]) == [(1, 6)]


def test_dropped_telemetry_is_never_missing() -> None:
    """Checkpoint ``dropped_ranges`` and a replay's ``dropped`` close the gap."""
    figures = {"last_seq": 10, "last_sent_seq": 10, "dropped_ranges": [[4, 5]]}
    row = device_parity("/s/g/d", "edge/s/g", "d", [(1, 3), (8, 10)], figures)
    assert row.missing == [(6, 7)]
    assert not row.in_parity
    row = device_parity(
        "/s/g/d", "edge/s/g", "d", [(1, 3), (8, 10)], figures, extra_dropped=[(6, 7)]
    )
    assert row.in_parity and row.missing == []


def test_ledger_behind_the_checkpoint_is_missing() -> None:
    """Stored on the gateway, not in the ledger: missing up to ``last_seq``."""
    row = device_parity("/s/g/d", "edge/s/g", "d", [(1, 5)], {"last_seq": 8, "last_sent_seq": 6})
    assert row.missing == [(6, 8)]
    assert (row.held, row.held_ranges, row.highest_held) == (5, 1, 5)


def test_close_gaps_are_asked_for_as_one_range() -> None:
    """Every other seq missing: one request, not one per seq."""
    assert coalesce([(1, 1), (3, 3), (5, 5)]) == [(1, 5)]
    assert coalesce([(1, 1), (100, 100)], held=10) == [(1, 1), (100, 100)]
