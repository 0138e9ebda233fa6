"""Shapes shared by the buffer's modules: rows on their way out, and SQL helpers."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from buffer.event_ids import id_text

_T = TypeVar("_T")


@dataclass(slots=True)
class OutgoingEvent:
    """A claimed (or replayed) event on its way out; ``backlog``: older than the drain boundary.

    Not ``frozen``: one is built per event, and a frozen dataclass costs five times as much.
    """

    rowid: int
    id: str
    device: str
    seq: int
    payload: bytes
    backlog: bool
    created: float = 0.0
    """Commit time (epoch seconds), for the publish latency metric; 0 when not known."""
    droppable: int = 0
    """1 for telemetry the size cap may drop (claims read it for buffer/counts.py)."""


def last_sent_params(sent: Iterable[tuple[str, int]]) -> list[tuple[int, str]]:
    """(highest seq, device) per device in ``sent``: the parameters of ``counts.SETTLED``."""
    last: dict[str, int] = {}
    for device, seq in sent:
        last[device] = max(last.get(device, 0), seq)
    return [(seq, device) for device, seq in last.items()]


def chunks(items: Sequence[_T], size: int = 500) -> Iterator[Sequence[_T]]:
    """``items`` in pieces that stay well under SQLite's limit on bound parameters."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def marks(n: int) -> str:
    """``?,?,...`` for an ``IN (...)`` list of ``n`` parameters."""
    return ",".join("?" * n)


def fetch_outgoing(
    conn: sqlite3.Connection, sql: str, params: tuple[object, ...], *, backlog: bool
) -> list[OutgoingEvent]:
    """Rows selected as (rowid, id, device, seq, payload, created) as OutgoingEvents."""
    return [
        OutgoingEvent(int(r), id_text(i), str(d), int(s), bytes(p), backlog, float(c or 0.0))
        for r, i, d, s, p, c in conn.execute(sql, params)
    ]
