"""Request planning: the fewest reads that cover a poll group's points.

A Modbus round trip costs far more than the registers in it, on RS-485 most of all, so nearby
points are merged into one read (Telegraf's "shrink/rearrange"): sorted by address, joined while
the hole between them is at most ``max_gap`` registers and the read stays within the protocol's
125-register (2000-bit) limit. A read that the device refuses for a bad address is split back
into one read per point, so one wrong address in the map costs only its own point.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from drivers.modbus.config import BIT_TABLES, PointConfig, Table


@dataclass(frozen=True, slots=True)
class Request:
    """One read: ``count`` registers or bits from ``start`` in ``table``, and who uses them."""

    table: Table
    start: int
    count: int
    points: tuple[PointConfig, ...]

    @property
    def label(self) -> str:
        """How logs and status name the read: ``holding 100+4``."""
        return f"{self.table} {self.start}+{self.count}"

    def slice_for(self, point: PointConfig, values: Sequence[int]) -> Sequence[int]:
        """The part of the response that holds ``point``."""
        offset = point.address - self.start
        return values[offset : offset + point.words]


def plan(
    points: Iterable[PointConfig], *, max_gap: int, max_registers: int, max_bits: int
) -> list[Request]:
    """Merge ``points`` into reads; points sharing registers (bits of one word) share a read."""
    by_table: dict[Table, list[PointConfig]] = {}
    for point in points:
        by_table.setdefault(point.table, []).append(point)
    requests: list[Request] = []
    for table in sorted(by_table):
        limit = max_bits if table in BIT_TABLES else max_registers
        ordered = sorted(by_table[table], key=lambda p: (p.address, p.words))
        requests.extend(_merge(table, ordered, max_gap=max_gap, limit=limit))
    return requests


def _merge(table: Table, ordered: list[PointConfig], *, max_gap: int, limit: int) -> list[Request]:
    requests: list[Request] = []
    members: list[PointConfig] = []
    start = end = 0
    for point in ordered:
        point_end = point.address + point.words
        if members:
            gap = point.address - end
            if gap <= max_gap and max(end, point_end) - start <= limit:
                members.append(point)
                end = max(end, point_end)
                continue
            requests.append(Request(table, start, end - start, tuple(members)))
        members, start, end = [point], point.address, point_end
    if members:
        requests.append(Request(table, start, end - start, tuple(members)))
    return requests


def split(request: Request) -> list[Request]:
    """One read per point: isolates the point whose address the device refuses."""
    return [
        Request(request.table, point.address, point.words, (point,)) for point in request.points
    ]
