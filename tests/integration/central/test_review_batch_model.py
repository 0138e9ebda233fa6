"""Review of the one-JSON-parameter insert (issue 15): ``write_batch`` against a model.

The insert now answers only the index of each event it did NOT insert (a LEFT JOIN of the
batch's rows on what ``RETURNING`` gave), and the per-device books go in one WITH statement.
Hypothesis draws batches over two devices with ids and seqs from small pools, so one batch holds
redeliveries (same id), conflicts ((source, seq) under another id) within the batch and against
earlier batches, a device with both, rejected and accepted scans side by side, arbitrary JSON
data, odd time offsets; each is checked on a real PostgreSQL against a plain model of the
ledger's rules: every count, every verdict on its own event, every stored row, its data and its
instant, the conflicts, the seq ranges and the device figures.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from central.ledger import Event, merge_ranges, write_batch
from central.rules import SkuRule
from central.schema import migrate

from .helpers import SCAN, events, scan_event

KNOWN = "111"
TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=8,
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """One valid event: a scan (known or unknown code) or a custom type with any JSON data."""
    device = draw(st.sampled_from(["a", "b"]))
    seq = draw(st.integers(1, 6))
    event_id = draw(st.sampled_from(["i0", "i1", "i2", "i3", "i4", "é-\u2028-😀"]))
    minutes = draw(st.integers(-(24 * 60 - 1), 24 * 60 - 1))
    moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(
        seconds=draw(st.integers(0, 10**8)), microseconds=draw(st.integers(0, 999_999))
    )
    sign, offset = ("+" if minutes >= 0 else "-"), abs(minutes)
    local = moment + timedelta(minutes=minutes)
    time = local.strftime("%Y-%m-%dT%H:%M:%S.%f") + f"{sign}{offset // 60:02}:{offset % 60:02}"
    if draw(st.booleans()):
        code = draw(st.sampled_from([KNOWN, "222", "0123456789012"]))
        return scan_event(seq, device=device, event_id=event_id, code=code, time=time)
    return scan_event(
        seq, device=device, event_id=event_id, type="x.custom.v1", time=time, data=draw(JSON)
    )


class Model:
    """The ledger's rules in plain Python: what one batch must do."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[Event, str, str | None]] = {}
        self.by_seq: dict[tuple[str, int], str] = {}
        self.conflicts: dict[tuple[str, str], tuple[int, str | None]] = {}
        self.devices: dict[str, list[int]] = {}

    def write(self, batch: list[Event]) -> dict[str, Any]:
        seen: set[tuple[str, str]] = set()
        firsts: list[Event] = []
        twice: Counter[str] = Counter()
        for event in batch:
            if (event.source, event.id) in seen:
                twice[event.source] += 1
            else:
                seen.add((event.source, event.id))
                firsts.append(event)
        firsts.sort(key=lambda e: (e.source, e.seq))
        out: dict[str, Any] = {"stored": 0, "duplicates": 0, "conflicts": 0}
        verdicts: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in firsts:
            figures = self.devices.setdefault(event.source, [0, 0, 0])
            key = (event.source, event.id)
            if key in self.rows:
                _, status, reason = self.rows[key]
                out["duplicates"] += 1
                figures[1] += 1
            elif (event.source, event.seq) in self.by_seq:
                if key not in self.conflicts:
                    self.conflicts[key] = (event.seq, self.by_seq[(event.source, event.seq)])
                    out["conflicts"] += 1
                    figures[2] += 1
                continue
            else:
                code = event.body["data"].get("code") if event.type == SCAN else None
                reason = None if event.type != SCAN or code == KNOWN else f"unknown SKU {code!r}"
                status = "accepted" if reason is None else "rejected"
                self.rows[key] = (event, status, reason)
                self.by_seq[(event.source, event.seq)] = event.id
                out["stored"] += 1
                figures[0] += 1
            verdict = {"id": event.id, "status": status}
            verdicts[event.root].append(verdict if reason is None else verdict | {"reason": reason})
        for source, count in twice.items():
            out["duplicates"] += count
            self.devices[source][1] += count
        out["verdicts"] = dict(verdicts)
        return out


async def _check(dsn: str, batches: list[list[dict[str, Any]]]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await conn.execute(
            "TRUNCATE events, conflicts, devices, seq_ranges, counters, known_skus;"
            f" INSERT INTO known_skus VALUES ('{KNOWN}')"
        )
        model = Model()
        for bodies_ in batches:
            batch = events(*bodies_)
            expected = model.write(batch)
            outcome = await write_batch(conn, batch, SkuRule())
            got = {
                "stored": outcome.stored,
                "duplicates": outcome.duplicates,
                "conflicts": outcome.conflicts,
                "verdicts": dict(outcome.verdicts),
            }
            assert got == expected
        rows = await conn.fetch(
            "SELECT source, id, seq, time, status, reason, data::text AS data FROM events"
        )
        assert {(r["source"], r["id"]) for r in rows} == set(model.rows)
        for row in rows:
            event, status, reason = model.rows[(row["source"], row["id"])]
            assert (row["seq"], row["status"], row["reason"]) == (event.seq, status, reason)
            assert row["time"] == event.time, (row["time"], event.body["time"])
            # As the nine-array insert stored it: the event's data text cast to jsonb.
            assert row["data"] == await conn.fetchval("SELECT $1::jsonb::text", event.data)
        conflicts = await conn.fetch("SELECT source, id, seq, held_id FROM conflicts")
        assert {(r["source"], r["id"]): (r["seq"], r["held_id"]) for r in conflicts} == (
            model.conflicts
        )
        ranges = await conn.fetch("SELECT source, first_seq, last_seq FROM seq_ranges")
        held: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for source, seq in model.by_seq:
            held[source].append((seq, seq))
        assert sorted(tuple(r) for r in ranges) == sorted(
            (s, f, last) for s, spans in held.items() for f, last in merge_ranges(spans)
        )
        devices = await conn.fetch("SELECT source, held, duplicates, conflicts FROM devices")
        assert {r["source"]: [r["held"], r["duplicates"], r["conflicts"]] for r in devices} == (
            model.devices
        )
        counters = dict(await conn.fetch("SELECT name, value FROM counters"))
        assert counters.get("stored", 0) == len(model.rows)
    finally:
        await conn.close()


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batches=st.lists(st.lists(bodies(), min_size=1, max_size=25), min_size=1, max_size=3))
def test_write_batch_does_what_the_model_says(pg_dsn: str, batches: list[list[dict[str, Any]]]):
    asyncio.run(_check(pg_dsn, batches))
