"""Range arithmetic behind parity and replay: O(gaps), dropped telemetry never missing."""

from __future__ import annotations

import dataclasses
import json

from central.ledger import merge_ranges
from central.parity import device_parity, expected_devices, subtract
from central.replayer import coalesce


def test_subtract_and_merge() -> None:
    """Gaps are what is left of 1..N after the held and dropped ranges."""
    assert subtract((1, 10), [(2, 3), (5, 5)]) == [(1, 1), (4, 4), (6, 10)]
    assert subtract((1, 10), [(1, 10)]) == []
    assert subtract((1, 10), [(0, 4)], [(8, 20)]) == [(5, 7)]


def test_subtract_edges() -> None:
    """Ranges wholly outside, nested in an earlier one, or leaving one seq at either end."""
    assert subtract((1, 5), [(10, 12)]) == [(1, 5)]
    assert subtract((1, 10), [(2, 8), (3, 4), (9, 9)]) == [(1, 1), (10, 10)]
    assert subtract((1, 5), [(1, 4), (5, 5)]) == []
    assert subtract((1, 5), [(1, 4)]) == [(5, 5)]
    assert subtract((1, 5), [(2, 5)]) == [(1, 1)]
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


def test_coalesce_joins_up_to_exactly_held_seqs_between() -> None:
    """``held`` is the most seqs the ledger already holds that one request may ask for again:
    two of them between the ranges join, three do not."""
    assert coalesce([(1, 1), (4, 6)], held=2) == [(1, 6)]
    assert coalesce([(1, 1), (5, 6)], held=2) == [(1, 1), (5, 6)]
    assert coalesce([(10, 12), (13, 13)], held=0) == [(10, 13)]


def test_intersect() -> None:
    """Range lists in both: what was missing then and is still missing now."""
    from central.parity import intersect  # noqa: PLC0415

    assert intersect([(1, 10)], [(5, 12)]) == [(5, 10)]
    assert intersect([(1, 2), (4, 8), (10, 10)], [(2, 5), (7, 11)]) == [
        (2, 2),
        (4, 5),
        (7, 8),
        (10, 10),
    ]
    assert intersect([(1, 3)], [(4, 6)]) == []
    assert intersect([], [(1, 2)]) == []


def test_replay_asks_for_old_gaps_not_for_a_long_out_device() -> None:
    """Under a steady flow split between instances a device is out of parity round after
    round, each time for a new gap still on its way: only a gap that is itself older than
    ``replay_after`` is asked for (bench/central_fleet.py found the needless requests)."""
    from central.config import CentralSettings  # noqa: PLC0415
    from central.replayer import Replayer  # noqa: PLC0415

    settings = CentralSettings.model_validate(
        {"central": {"instance": "a"}, "replay": {"replay_after": 5}}
    )

    async def publish(topic: str, body: bytes) -> bool:
        return True

    replayer = Replayer(settings, publish)
    source = "/s/g/d"
    assert replayer.stale(source, [(1, 1)], 0.0) == []  # seen now: young
    for t in range(1, 10):  # a new one-seq gap each second, each filled a second later
        assert replayer.stale(source, [(10 * t, 10 * t)], float(t)) == [], t
    # A gap that stays: asked for once it is replay_after old, and only what is still missing.
    assert replayer.stale(source, [(100, 120)], 10.0) == []
    assert replayer.stale(source, [(100, 120)], 14.9) == []
    assert replayer.stale(source, [(105, 125)], 15.0) == [(105, 120)]
    assert replayer.stale(source, [(105, 125)], 20.0) == [(105, 125)]


def test_as_json_is_every_field_in_a_copy() -> None:
    """``parity --json`` writes each device's every field; ranges come out as lists, and the
    dict is a copy (the caller may add to it without touching the row)."""
    row = device_parity("/s/g/d", "edge/s/g", "d", [(1, 3)], {"last_seq": 6, "last_sent_seq": 6})
    out = row.as_json()
    assert set(out) == {f.name for f in dataclasses.fields(row)}
    assert json.loads(json.dumps(out))["missing"] == [[4, 6]]
    out["extra"] = 1
    assert not hasattr(row, "extra")


def test_checkpoint_figures_are_read_only_when_sane() -> None:
    """The checkpoint is the gateway's word, untrusted: a count is an int from 0 to 2**63 - 1
    (0 shown as 0, not as unknown), a dropped range a pair of ints; anything else is ignored."""
    figures = {
        "last_seq": 2**63,
        "last_sent_seq": -1,
        "pending": 0,
        "unconfirmed": 2**63 - 1,
        "dropped_ranges": [[1, 2, 3], ["4", "5"], [6, 7], "89"],
    }
    row = device_parity("/s/g/d", "edge/s/g", "d", [(8, 9)], figures)
    assert (row.gateway_last_seq, row.gateway_last_sent_seq) == (0, 0)
    assert (row.gateway_pending, row.gateway_unconfirmed) == (0, 2**63 - 1)
    assert row.dropped == [(6, 7)]
    assert row.missing == [(1, 5)]
    assert not row.draining


def test_a_device_with_no_figures_and_nothing_held_is_in_parity() -> None:
    """Known from the ledger only (no checkpoint yet), nothing held: nothing is missing."""
    row = device_parity("/s/g/d", "edge/s/g", "d", [], {})
    assert (row.missing, row.missing_count, row.in_parity) == ([], 0, True)


def test_a_checkpoint_whose_devices_are_not_an_object_lists_none() -> None:
    """``devices`` as a list (or anything but an object) is ignored, not a crashed round; a
    device whose figures are not an object is skipped alone."""
    assert expected_devices({"edge/s/g": {"devices": [["dock", {"last_seq": 1}]]}}) == {}
    assert expected_devices({"edge/s/g": {"devices": {"a": 1, "b": {"last_seq": 2}}}}) == {
        "/s/g/b": ("edge/s/g", "b", {"last_seq": 2}, False)
    }
