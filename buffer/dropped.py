"""Seq ranges deleted on purpose: telemetry dropped at the size cap (contract section 4).

Dropping leaves holes in a device's seqs. Without a record, central's parity could never close
(the checkpoint would say everything up to ``last_sent_seq`` was delivered while seqs are
missing) and a replay of the hole would be refused as if events were lost. So each drop is
recorded, in the transaction that deletes the rows, as merged ``[from_seq, to_seq]`` ranges per
device; the checkpoint shows them and replays account for them.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterable

MAX_RANGES_PER_DEVICE = 1000
"""Oldest ranges beyond this are forgotten (their total stays counted in ``dropped_events``):
an alarm between every pair of dropped readings must not grow the table without bound."""


def runs(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive runs of ``seqs`` as inclusive (first, last) pairs, ascending."""
    ordered = sorted(set(seqs))
    out: list[tuple[int, int]] = []
    for _, group in itertools.groupby(enumerate(ordered), key=lambda pair: pair[1] - pair[0]):
        members = [seq for _, seq in group]
        out.append((members[0], members[-1]))
    return out


def record(conn: sqlite3.Connection, deleted: Iterable[tuple[str, int]]) -> None:
    """Add (device, seq) pairs just deleted on purpose, merging with adjacent ranges.

    Runs in the deleting transaction, on the SQLite thread.
    """
    by_device: dict[str, list[int]] = {}
    for device, seq in deleted:
        by_device.setdefault(device, []).append(seq)
    for device, seqs in by_device.items():
        for first, last in runs(seqs):
            start, end = first, last
            before = conn.execute(
                "SELECT from_seq FROM dropped WHERE device = ? AND to_seq = ?", (device, first - 1)
            ).fetchone()
            if before is not None:
                start = int(before[0])
            after = conn.execute(
                "DELETE FROM dropped WHERE device = ? AND from_seq = ? RETURNING to_seq",
                (device, last + 1),
            ).fetchone()
            if after is not None:
                end = int(after[0])
            conn.execute(
                "INSERT OR REPLACE INTO dropped (device, from_seq, to_seq) VALUES (?, ?, ?)",
                (device, start, end),
            )
        conn.execute(
            "UPDATE devices SET dropped_events = dropped_events + ? WHERE device = ?",
            (len(set(seqs)), device),
        )
        conn.execute(
            "DELETE FROM dropped WHERE device = ? AND from_seq NOT IN (SELECT from_seq FROM"
            " dropped WHERE device = ? ORDER BY from_seq DESC LIMIT ?)",
            (device, device, MAX_RANGES_PER_DEVICE),
        )


def in_range(
    conn: sqlite3.Connection, device: str, from_seq: int, to_seq: int
) -> list[tuple[int, int]]:
    """The dropped ranges of ``device`` overlapping ``from_seq..to_seq``, clipped to it."""
    return [
        (max(int(a), from_seq), min(int(b), to_seq))
        for a, b in conn.execute(
            "SELECT from_seq, to_seq FROM dropped WHERE device = ? AND from_seq <= ?"
            " AND to_seq >= ? ORDER BY from_seq",
            (device, to_seq, from_seq),
        )
    ]
