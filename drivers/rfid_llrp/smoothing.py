"""Turns raw tag reads into presence: one arrival and one departure per (EPC, zone).

A portal reader reports each tag dozens of times a second on several antennas; central systems
want "arrived at dock 3" and "left". This module is pure (no I/O, no clock of its own: callers
pass monotonic and wall times), so it can be tested with a fake clock and benchmarked alone.

Departure is "not seen for ``departure_s``" measured on the monotonic clock, so an NTP step on
the gateway cannot make a pallet leave. Each zone keeps its tags in least-recently-seen order,
which makes expiry O(departures) instead of a scan of every tag present.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from drivers.rfid_llrp.decode import TagRead


@dataclass(slots=True)
class Presence:
    """One tag in one zone, from its first read until it departs."""

    epc: str
    zone: str
    first_mono: float
    first_wall: float
    last_mono: float
    last_wall: float
    reads: int
    peak_rssi: int | None
    antenna: int
    reader_first_us: int | None
    reader_last_us: int | None
    arrived: bool = False


class Smoother:
    """Tracks presence per (EPC, zone) and reports arrivals and departures."""

    def __init__(
        self,
        zone_of: Mapping[int, str],
        departure_s: Mapping[str, float],
        *,
        arrive_reads: int = 1,
        min_rssi: int | None = None,
    ) -> None:
        self._zone_of = dict(zone_of)
        self._departure = dict(departure_s)
        self._arrive_reads = arrive_reads
        self._min_rssi = min_rssi
        self._zones: dict[str, OrderedDict[str, Presence]] = {
            zone: OrderedDict() for zone in self._departure
        }
        self.reads = 0
        self.unzoned = 0
        self.weak = 0
        self.strays = 0
        """Tags seen but never confirmed (fewer than ``arrive_reads`` reads), then gone."""

    def __len__(self) -> int:
        return sum(len(table) for table in self._zones.values())

    def observe(self, read: TagRead, mono: float, wall: float) -> Presence | None:
        """Account one read; return its presence if this read made the tag arrive."""
        self.reads += read.count
        zone = self._zone_of.get(read.antenna)
        if zone is None:
            self.unzoned += read.count
            return None
        rssi = read.rssi
        if self._min_rssi is not None and rssi is not None and rssi < self._min_rssi:
            self.weak += read.count
            return None
        table = self._zones[zone]
        presence = table.get(read.epc)
        if presence is None:
            presence = Presence(
                epc=read.epc,
                zone=zone,
                first_mono=mono,
                first_wall=wall,
                last_mono=mono,
                last_wall=wall,
                reads=read.count,
                peak_rssi=rssi,
                antenna=read.antenna,
                reader_first_us=read.reader_us,
                reader_last_us=read.reader_us,
            )
            table[read.epc] = presence
        else:
            table.move_to_end(read.epc)
            presence.last_mono = mono
            presence.last_wall = wall
            presence.reads += read.count
            if read.reader_us is not None:
                presence.reader_last_us = read.reader_us
            if rssi is not None and (presence.peak_rssi is None or rssi > presence.peak_rssi):
                presence.peak_rssi = rssi
                presence.antenna = read.antenna
        if not presence.arrived and presence.reads >= self._arrive_reads:
            presence.arrived = True
            return presence
        return None

    def expire(self, mono: float) -> list[Presence]:
        """Remove tags unseen for their zone's ``departure_s``; return those that had arrived."""
        departed: list[Presence] = []
        for zone, table in self._zones.items():
            cutoff = mono - self._departure[zone]
            while table:
                presence = next(iter(table.values()))
                if presence.last_mono > cutoff:
                    break
                table.popitem(last=False)
                if presence.arrived:
                    departed.append(presence)
                else:
                    self.strays += 1
        departed.sort(key=lambda p: p.last_mono)
        return departed

    def next_deadline(self) -> float | None:
        """The monotonic time of the next possible departure, or None with no tags present."""
        deadlines = [
            next(iter(table.values())).last_mono + self._departure[zone]
            for zone, table in self._zones.items()
            if table
        ]
        return min(deadlines, default=None)

    def hold(self, mono: float) -> None:
        """Restart every tag's departure clock at ``mono``.

        Called when the reader comes back after a drop: while it was away nothing could be
        seen, which is not evidence that anything left. Tags still there are read again within
        moments; the rest depart ``departure_s`` later, with their true ``last_seen``.
        """
        for table in self._zones.values():
            for presence in table.values():
                presence.last_mono = max(presence.last_mono, mono)
