"""A scripted tag population in front of a simulated reader's antennas.

Each tag is in the field from ``enter`` to ``leave`` (seconds on the simulator's clock; ``leave``
None lingers), read ``reads_per_s`` times a second across its antennas. Its RSSI follows a tent
curve peaking mid-transit, offset per antenna so the strongest antenna changes as a pallet moves
through a portal, plus seeded jitter. Stray reads are one-off reads of tags not in the field.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class SimTag:
    """One tag's presence in the field."""

    epc: str
    enter: float
    leave: float | None
    antennas: tuple[int, ...] = (1, 2)
    reads_per_s: float = 20.0
    peak_rssi: int = -45
    credit: float = field(default=0.0, repr=False)
    turn: int = field(default=0, repr=False)

    def rssi(self, now: float, antenna_index: int) -> int:
        """Tent curve over the transit, shifted per antenna; flat for lingering tags."""
        if self.leave is None:
            return self.peak_rssi - 3 * antenna_index
        span = max(self.leave - self.enter, 1e-6)
        phase = (now - self.enter) / span
        centre = (antenna_index + 1) / (len(self.antennas) + 1)
        return round(self.peak_rssi - 30 * abs(phase - centre))


def epc_for(index: int, *, company: int = 614141, item: int = 812345) -> str:
    """An SGTIN-96 EPC (filter 1, partition 5: 7-digit company prefix) with serial ``index``."""
    value = (0x30 << 88) | (1 << 85) | (5 << 82) | (company << 58) | (item << 38) | index
    return f"{value:024x}"


class Population:
    """Every tag the simulated reader can see, and stray reads waiting to be sent."""

    def __init__(self, seed: int = 1) -> None:
        self.tags: dict[str, SimTag] = {}
        self.strays: list[tuple[str, int, int]] = []
        self._rng = random.Random(seed)

    def add(self, tag: SimTag) -> None:
        """Put a tag in the field (replacing one with the same EPC)."""
        self.tags[tag.epc] = tag

    def pallet(
        self,
        epcs: list[str],
        start: float,
        transit_s: float,
        *,
        antennas: tuple[int, ...] = (1, 2),
        reads_per_s: float = 20.0,
        stagger_s: float = 0.0,
    ) -> None:
        """A pallet moving through a portal: every tag enters at ``start`` (plus stagger)."""
        for i, epc in enumerate(epcs):
            enter = start + i * stagger_s
            self.add(SimTag(epc, enter, enter + transit_s, antennas, reads_per_s))

    def linger(self, epc: str, start: float, antennas: tuple[int, ...] = (1,)) -> None:
        """A tag left standing in the field: read until removed."""
        self.add(SimTag(epc, start, None, antennas, reads_per_s=5.0, peak_rssi=-60))

    def stray(self, epc: str, antenna: int = 1, rssi: int = -75) -> None:
        """One read of a tag that is not really there (a neighbouring dock, a reflection)."""
        self.strays.append((epc, antenna, rssi))

    def remove(self, epc: str) -> None:
        """Take a tag out of the field now."""
        self.tags.pop(epc, None)

    def reads(self, now: float, dt: float, antennas: set[int]) -> list[tuple[str, int, int]]:
        """(epc, antenna, rssi) of every read in the last ``dt`` seconds on ``antennas``."""
        out = [s for s in self.strays if s[1] in antennas]
        self.strays.clear()
        for tag in self.tags.values():
            if now < tag.enter or (tag.leave is not None and now >= tag.leave):
                continue
            usable = [(i, a) for i, a in enumerate(tag.antennas) if a in antennas]
            if not usable:
                continue
            tag.credit += tag.reads_per_s * dt
            while tag.credit >= 1:
                tag.credit -= 1
                index, antenna = usable[tag.turn % len(usable)]
                tag.turn += 1
                out.append((tag.epc, antenna, tag.rssi(now, index) + self._rng.randint(-2, 2)))
        return out

    def expire(self, now: float) -> None:
        """Forget tags that have left (keeps ``reads`` fast in long runs)."""
        gone = [e for e, t in self.tags.items() if t.leave is not None and now >= t.leave]
        for epc in gone:
            del self.tags[epc]
