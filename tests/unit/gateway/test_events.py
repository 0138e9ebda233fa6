"""CloudEvent payloads and ids."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

from gateway.events import mark_historical, render_event, rfc3339_now, source_for, uuid7


def test_uuid7_is_a_valid_version_7_uuid_and_time_ordered() -> None:
    """Ids parse as RFC 9562 v7 UUIDs, are unique, and sort by creation time (ms resolution)."""
    ids = [uuid7() for _ in range(2000)]
    assert len(set(ids)) == 2000
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    stamps = [u.int >> 80 for u in parsed]
    assert stamps == sorted(stamps)


def test_uuid7_ids_drawn_from_several_threads_never_collide() -> None:
    """The random bytes come from a shared pool: no two threads may be handed the same."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        batches = list(pool.map(lambda _: [uuid7() for _ in range(3000)], range(4)))
    ids = [i for batch in batches for i in batch]
    assert len(set(ids)) == len(ids) == 12000


def test_render_is_compact_cloudevent_json_with_seq() -> None:
    """Required attributes, the seq extension, UTF-8 kept as is, no whitespace."""
    payload = render_event(
        event_id="i-1",
        source=source_for("dc", "gw", "dock"),
        type_="warehouse.barcode.scanned.v1",
        time_="2026-11-24T10:00:00.123456Z",
        seq=7,
        data={"code": "Zürich"},
    )
    assert b" " not in payload
    body = json.loads(payload)
    assert body == {
        "specversion": "1.0",
        "id": "i-1",
        "source": "/dc/gw/dock",
        "type": "warehouse.barcode.scanned.v1",
        "time": "2026-11-24T10:00:00.123456Z",
        "seq": 7,
        "datacontenttype": "application/json",
        "data": {"code": "Zürich"},
    }
    assert "Zürich".encode() in payload


def test_mark_historical_adds_the_flag_and_keeps_everything_else() -> None:
    """The stored bytes get the extension spliced in; id, seq and data are untouched."""
    payload = render_event(
        event_id="i-2", source="/a/b/c", type_="t", time_="x", seq=3, data={"k": [1, {"n": None}]}
    )
    marked = json.loads(mark_historical(payload))
    assert marked.pop("historical") is True
    assert marked == json.loads(payload)


def test_capture_time_is_rfc3339_utc_with_microseconds() -> None:
    """The time attribute ends in Z and carries six fractional digits."""
    stamp = rfc3339_now()
    assert stamp.endswith("Z")
    assert len(stamp.split(".")[1]) == 7
