"""Request planning: contiguous points merge, gaps and the 125-register limit split."""

from __future__ import annotations

from drivers.modbus.config import PointConfig
from drivers.modbus.plan import plan, split


def p(name, address, type_="uint16", table="holding", **extra):
    return PointConfig.model_validate(
        {"name": name, "address": address, "type": type_, "table": table, **extra}
    )


def spans(requests):
    return [(r.table, r.start, r.count, [pt.name for pt in r.points]) for r in requests]


def test_contiguous_points_one_request():
    """Adjacent uint16, float32 and a bit sharing a register are read at once."""
    points = [p("a", 10), p("b", 11, "float32"), p("c", 13, "bit", bit=3), p("d", 13, "bit", bit=4)]
    assert spans(plan(points, max_gap=0, max_registers=125, max_bits=2000)) == [
        ("holding", 10, 4, ["a", "b", "c", "d"])
    ]


def test_gap_merging_threshold():
    """A hole up to max_gap is read through; a bigger one starts a new request."""
    points = [p("a", 0), p("b", 5), p("c", 20)]
    assert spans(plan(points, max_gap=4, max_registers=125, max_bits=2000)) == [
        ("holding", 0, 6, ["a", "b"]),
        ("holding", 20, 1, ["c"]),
    ]
    assert len(plan(points, max_gap=3, max_registers=125, max_bits=2000)) == 3


def test_register_limit_respected():
    """200 contiguous registers become reads of at most 125, and no point straddles two."""
    points = [p(f"r{i}", i * 2, "uint32") for i in range(100)]
    requests = plan(points, max_gap=10, max_registers=125, max_bits=2000)
    assert all(r.count <= 125 for r in requests)
    assert sum(len(r.points) for r in requests) == 100
    for request in requests:
        for point in request.points:
            assert request.start <= point.address
            assert point.address + 2 <= request.start + request.count


def test_tables_never_mix_and_bits_use_bit_limit():
    """Coils, inputs and registers are separate reads; 3000 coils take two reads of <= 2000."""
    coils = [p(f"c{i}", i, "bool", "coil") for i in range(3000)]
    requests = plan(
        [*coils, p("h", 0), p("i", 0, table="input")], max_gap=0, max_registers=125, max_bits=2000
    )
    assert [(r.table, r.count) for r in requests] == [
        ("coil", 2000),
        ("coil", 1000),
        ("holding", 1),
        ("input", 1),
    ]


def test_out_of_order_config():
    """Points listed in any order are planned by address."""
    assert spans(plan([p("b", 3), p("a", 1)], max_gap=2, max_registers=125, max_bits=2000)) == [
        ("holding", 1, 3, ["a", "b"])
    ]


def test_split_isolates_each_point():
    """Splitting gives one exact read per point."""
    (merged,) = plan([p("a", 0), p("b", 1, "int32")], max_gap=0, max_registers=125, max_bits=2000)
    assert spans(split(merged)) == [("holding", 0, 1, ["a"]), ("holding", 1, 2, ["b"])]
    assert merged.slice_for(merged.points[1], [9, 8, 7]) == [8, 7]
