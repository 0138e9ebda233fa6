"""Tag smoothing with a fake clock: one arrival and one departure per (EPC, zone), nothing more."""

from __future__ import annotations

from drivers.rfid_llrp.decode import TagRead
from drivers.rfid_llrp.smoothing import Smoother

WALL0 = 1_800_000_000.0
ZONES = {1: "dock", 2: "dock", 3: "inside", 4: "inside"}


def smoother(**kwargs):
    return Smoother(ZONES, {"dock": 2.0, "inside": 5.0}, **kwargs)


def read(epc="aa01", antenna=1, rssi=-50, count=1, reader_us=None):
    return TagRead(epc, antenna, rssi, count, reader_us)


def test_first_read_arrives_once_then_departs_after_departure_s():
    """Reads every 0.1 s for 3 s: one arrival at the first read, one departure 2 s after the last."""
    s = smoother()
    arrivals = [p for i in range(30) if (p := s.observe(read(), i / 10, WALL0 + i / 10))]
    assert len(arrivals) == 1
    assert arrivals[0].first_mono == 0.0
    assert s.expire(4.8) == []
    (gone,) = s.expire(4.9)
    assert (gone.epc, gone.zone, gone.reads) == ("aa01", "dock", 30)
    assert gone.last_wall == WALL0 + 2.9
    assert len(s) == 0
    assert s.expire(100) == []


def test_zones_are_independent_and_peak_antenna_wins():
    """The same EPC in two zones is two presences; antenna and RSSI come from the peak read."""
    s = smoother()
    assert s.observe(read(antenna=1, rssi=-60), 0, WALL0) is not None
    assert s.observe(read(antenna=2, rssi=-40), 0.1, WALL0) is None
    assert s.observe(read(antenna=3, rssi=-70), 0.2, WALL0) is not None
    dock = s.expire(2.2)
    assert [(p.zone, p.antenna, p.peak_rssi) for p in dock] == [("dock", 2, -40)]
    assert s.next_deadline() == 5.2
    assert [p.zone for p in s.expire(5.2)] == ["inside"]


def test_1000_reads_per_second_for_10_s_give_40_arrivals_and_40_departures():
    """40 tags x 25 reads/s x 10 s = 10,000 reads: exactly 80 events."""
    s = smoother()
    events = 0
    for tick in range(1000):
        now = tick / 100
        for n in range(10):
            events += (
                s.observe(read(f"{(tick * 10 + n) % 40:04x}", 1 + n % 2), now, WALL0) is not None
            )
        events += len(s.expire(now))
    events += len(s.expire(20))
    assert s.reads == 10_000
    assert events == 80


def test_arrive_reads_filters_strays_and_min_rssi_filters_weak_reads():
    """A single stray read never arrives nor departs; reads under min_rssi are ignored."""
    s = smoother(arrive_reads=3, min_rssi=-70)
    assert s.observe(read("ff01"), 0, WALL0) is None
    assert s.observe(read("ff02", rssi=-80), 0, WALL0) is None
    assert s.observe(read("ff03"), 0, WALL0) is None
    assert s.observe(read("ff03"), 0.1, WALL0) is None
    assert s.observe(read("ff03"), 0.2, WALL0) is not None
    assert [p.epc for p in s.expire(10)] == ["ff03"]
    assert (s.strays, s.weak) == (1, 1)


def test_unzoned_antenna_is_counted_not_tracked():
    """Antenna 7 belongs to no zone: counted, no presence."""
    s = smoother()
    assert s.observe(read(antenna=7, count=5), 0, WALL0) is None
    assert (s.unzoned, len(s)) == (5, 0)


def test_hold_restarts_departure_clocks_after_a_reader_drop():
    """After an outage, tags get a fresh departure_s instead of all departing at once."""
    s = smoother()
    s.observe(read("a1"), 0, WALL0)
    s.hold(10.0)
    assert s.expire(11.9) == []
    (gone,) = s.expire(12.0)
    assert gone.last_wall == WALL0, "last_seen stays the true last read"


def test_reader_timestamps_are_kept():
    """The reader's first and last timestamps travel with the presence."""
    s = smoother()
    s.observe(read(reader_us=5), 0, WALL0)
    s.observe(read(reader_us=9), 1, WALL0)
    (gone,) = s.expire(10)
    assert (gone.reader_first_us, gone.reader_last_us) == (5, 9)
