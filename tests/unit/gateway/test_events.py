"""CloudEvent payloads and ids."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buffer.event_ids import id_key, id_text
from gateway import events
from gateway.events import (
    SourceRenderer,
    mark_historical,
    new_id,
    render_event,
    rfc3339_now,
    source_for,
    uuid7,
)


def test_uuid7_is_a_valid_version_7_uuid_and_time_ordered() -> None:
    """Ids parse as RFC 9562 v7 UUIDs, are unique, and sort by creation time (ms resolution)."""
    ids = [uuid7() for _ in range(2000)]
    assert len(set(ids)) == 2000
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in parsed)
    stamps = [u.int >> 80 for u in parsed]
    assert stamps == sorted(stamps)


def test_uuid7_ids_drawn_from_several_threads_never_collide() -> None:
    """Ids drawn from several threads at once are all distinct."""
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


@settings(max_examples=300)
@given(
    event_id=st.text(),
    source=st.text(),
    type_=st.text(),
    time_=st.text(),
    seq=st.integers(min_value=1, max_value=2**63 - 1),
    data=st.dictionaries(
        st.text(),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner),
            max_leaves=8,
        ),
    ),
)
def test_render_gives_the_bytes_json_dumps_gives(
    event_id: str, source: str, type_: str, time_: str, seq: int, data: dict[str, Any]
) -> None:
    """The rendering must be byte-identical to the json.dumps one it replaced, floats aside.

    Stored payloads are resent and replayed as they are; the format must not drift. orjson may
    spell a float otherwise (``1.5e-05`` as ``0.000015``): the same number once parsed.
    """
    body = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": type_,
        "time": time_,
        "seq": seq,
        "datacontenttype": "application/json",
        "data": data,
    }
    expected = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    rendered = render_event(
        event_id=event_id, source=source, type_=type_, time_=time_, seq=seq, data=data
    )
    if _has_float(data):
        assert json.loads(rendered) == json.loads(expected)
    else:
        assert rendered == expected


def _has_float(value: object) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return False


def test_render_takes_what_orjson_refuses_as_json_did() -> None:
    """Integers beyond 64 bits and keys that are not strings go through json, as before."""
    for data in ({"n": 2**70}, {1: "one", "k": [-(2**80)]}):
        payload = render_event(event_id="i", source="s", type_="t", time_="x", seq=1, data=data)
        assert payload.endswith(
            b'"data":' + json.dumps(data, separators=(",", ":")).encode() + b"}"
        )


def test_render_writes_non_finite_floats_as_null() -> None:
    """A NaN or infinity has no JSON form: null, not json's invalid ``NaN``."""
    payload = render_event(
        event_id="i", source="s", type_="t", time_="x", seq=1, data={"v": float("nan")}
    )
    assert json.loads(payload)["data"] == {"v": None}


def test_render_writes_non_finite_floats_as_null_on_the_json_path_too() -> None:
    """What orjson refuses goes through json: its NaN must be null there as well (contract 5).

    Found by review: ``{1: nan}`` (a key that is not a string) or a NaN beside an integer
    beyond 64 bits went out as ``NaN``/``Infinity``, which is not JSON: a strict parser at
    central rejects the whole event.
    """

    def strict(payload: bytes) -> Any:
        def refuse(constant: str) -> None:
            raise ValueError(f"not JSON: {constant}")

        return json.loads(payload, parse_constant=refuse)

    for data, expected in (
        ({1: float("nan")}, {"1": None}),
        (
            {"n": 2**70, "v": [float("inf"), (float("-inf"), 1.5)]},
            {"n": 2**70, "v": [None, [None, 1.5]]},
        ),
        ({True: {"x": float("nan")}}, {"true": {"x": None}}),
    ):
        payload = render_event(event_id="i", source="s", type_="t", time_="x", seq=1, data=data)
        assert strict(payload)["data"] == expected


def test_capture_time_is_the_clock_to_the_microsecond() -> None:
    """The per-second cache must never give a stale second or lose leading zeros."""
    for _ in range(3):
        before = datetime.now(UTC)
        stamp = rfc3339_now()
        after = datetime.now(UTC)
        parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert before <= parsed <= after
        time.sleep(0.6)  # cross at least one second boundary over the loop


def test_new_id_gives_the_text_and_the_bytes_the_buffer_stores() -> None:
    """The bytes handed to the buffer are exactly what packing the text would store."""
    for _ in range(2000):
        text, packed = new_id()
        assert uuid.UUID(text).version == 7
        assert id_key(text) == packed
        assert id_text(packed) == text


@pytest.mark.parametrize(
    "micros",
    [
        -1_500_000,
        -1,
        0,
        1,
        999_999,
        1_000_000,
        1_764_583_200_000_007,
        1_764_583_200_999_999,
        1_764_583_201_000_000,
        1_764_583_201_012_345,
    ],
)
def test_capture_time_formats_any_clock_reading_as_datetime_does(
    micros: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leading zeros of the microseconds kept, the second changing exactly at its boundary."""
    expected = datetime.fromtimestamp(micros // 10**6, UTC).replace(microsecond=micros % 10**6)
    for before in (micros - 1, micros, micros + 1_000_000, micros):  # the cache in every state
        monkeypatch.setattr(events.time, "time_ns", lambda at=before: at * 1000 + 999)
        rfc3339_now()
        monkeypatch.setattr(events.time, "time_ns", lambda: micros * 1000 + 999)
        assert rfc3339_now() == expected.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@settings(max_examples=300)
@given(
    source=st.text(),
    types=st.lists(st.text(), min_size=1, max_size=4),
    seq=st.integers(min_value=1, max_value=2**63 - 1),
    data=st.dictionaries(
        st.text() | st.integers(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner),
            max_leaves=8,
        ),
    ),
)
def test_source_renderer_gives_the_bytes_render_event_gives(
    source: str, types: list[str], seq: int, data: dict[Any, Any]
) -> None:
    """Byte for byte, for the pipeline's ids and times and any source, type and data.

    Types include lone surrogates (no JSON form: left to render_event, which raises), data
    what orjson refuses (keys that are not strings, integers beyond 64 bits) and NaNs.
    """
    renderer = SourceRenderer(source)
    for type_ in types * 2:  # each type once uncached, once cached
        event_id, stamp = new_id()[0], rfc3339_now()
        render = renderer.render_for(event_id, type_, stamp, data)
        try:
            expected = render_event(
                event_id=event_id, source=source, type_=type_, time_=stamp, seq=seq, data=data
            )
        except (TypeError, ValueError) as exc:
            with pytest.raises(type(exc)):
                render(seq)
        else:
            assert render(seq) == expected


def test_source_renderer_keeps_a_bounded_number_of_types() -> None:
    """A driver inventing types cannot grow the cache: the rest are rendered the same, uncached."""
    renderer = SourceRenderer("/s/g/d")
    for n in range(SourceRenderer.MAX_TYPES + 10):
        type_ = f"t{n}"
        payload = renderer.render_for("i", type_, "x", {"n": n})(n + 1)
        assert payload == render_event(
            event_id="i", source="/s/g/d", type_=type_, time_="x", seq=n + 1, data={"n": n}
        )
    assert len(renderer._middles) == SourceRenderer.MAX_TYPES
