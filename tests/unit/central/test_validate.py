"""central/validate.py: CloudEvents, schemas and source-vs-topic, without a broker."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central.validate import Event, Quarantined, Validator, split_event_topic
from tests.integration.central.helpers import raw, scan_event, topic_of

V = Validator(prefix="edge", max_payload=4096, keep_bytes=64)


def test_a_gateway_event_is_valid() -> None:
    """The shape the gateway publishes passes, with data kept as JSON text."""
    body = scan_event(7, historical=True)
    event = V.check(topic_of(body), raw(body))
    assert isinstance(event, Event)
    assert (event.root, event.device, event.seq, event.historical) == (
        "edge/s1/gw1",
        "dock",
        7,
        True,
    )
    assert json.loads(event.data or "") == {"code": "0123456789012"}


def test_source_must_match_the_topic() -> None:
    """A gateway cannot write events for another gateway, site or device."""
    for other in ({"site": "s2"}, {"gateway": "gw2"}, {"device": "d2"}):
        body = scan_event(1, **other)
        result = V.check("edge/s1/gw1/events/dock", raw(body))
        assert isinstance(result, Quarantined)
        assert "does not match topic" in result.reason


def test_refusals_say_why() -> None:
    """Each family of bad input has its own reason."""
    cases = {
        b"nope": "invalid JSON",
        b"[]": "not a JSON object",
        raw(scan_event(1, specversion="0.3")): "specversion",
        raw(scan_event(0)): "seq",
        raw(scan_event(1) | {"seq": True}): "seq",
        raw(scan_event(1, time="yesterday")): "RFC 3339",
        raw(scan_event(1, data={})): "schema",
        raw(scan_event(1, event_id="x" * 200)): "id longer",
        b"x" * 5000: "B >",
    }
    for payload, reason in cases.items():
        result = V.check("edge/s1/gw1/events/dock", payload)
        assert isinstance(result, Quarantined), payload[:40]
        assert reason in result.reason
        assert len(result.raw) <= 64
        assert result.size == len(payload)


@pytest.mark.parametrize(
    ("zone", "instant"),
    [
        ("WEST+12", "0001-01-01T00:00:00Z"),  # the box's zone 12 h west of UTC: year 0 there
        ("EAST-14", "9999-12-31T23:59:59Z"),  # 14 h east: year 10000 there
    ],
)
def test_a_time_is_judged_in_utc_whatever_the_box_zone(
    monkeypatch: pytest.MonkeyPatch, zone: str, instant: str
) -> None:
    """Years 1-9999 are checked in UTC, the zone the ledger stores: a time at the edge of them
    is valid on any box, not refused where the local date would fall outside
    (``_time_problem__mutmut_8`` converted to the local zone)."""
    body = scan_event(1, time=instant)
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        result = V.check(topic_of(body), raw(body))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert isinstance(result, Event), result
    assert result.time.isoformat() == instant.replace("Z", "+00:00")


def test_topic_split() -> None:
    """Only {prefix}/{site}/{gateway}/events/{device} is an events topic."""
    assert split_event_topic("edge/a/b/events/c", "edge") == ("edge/a/b", "a", "b", "c")
    assert split_event_topic("edge/a/b/events/c/d", "edge") is None
    assert split_event_topic("other/a/b/events/c", "edge") is None


@settings(max_examples=300, deadline=None)
@given(
    topic=st.text(max_size=60),
    payload=st.one_of(
        st.binary(max_size=600),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
def test_never_raises(topic: str, payload: bytes) -> None:
    """Fuzzed topics and payloads: a verdict every time, never an exception."""
    assert isinstance(V.check(topic, payload), Event | Quarantined)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(list(scan_event(1))), st.text(max_size=10) | st.integers()))
def test_mutated_events_never_raise(overrides: dict) -> None:
    """A real event with fields replaced by junk is judged, never crashes the consumer."""
    body = scan_event(1) | overrides
    assert isinstance(V.check("edge/s1/gw1/events/dock", raw(body)), Event | Quarantined)


def test_what_the_fast_parser_refuses_is_judged_as_before() -> None:
    """orjson parses events; what it refuses and the standard parser takes (an integer past
    64 bits, NaN, a lone surrogate) is judged by the standard parser, as before orjson: a
    big integer is valid data, NaN and the surrogate stay in the text for PostgreSQL, which
    refuses that event alone (tests/integration/central/test_poison.py)."""
    for value, text in ((2**70, str(2**70)), (float("nan"), "NaN"), ("\ud800", '"\\ud800"')):
        body = scan_event(3)
        body["type"] = "example.plugin.reading.v1"  # a plugin's type: no schema shipped for it
        body["data"] = {"code": "x", "reading": value}
        payload = json.dumps(body).encode()
        event = V.check(topic_of(body), payload)
        assert isinstance(event, Event), (text, event)
        assert event.data == '{"code":"x","reading":' + text + "}"


def test_the_data_text_is_the_same_json_on_both_parsers() -> None:
    """Non-ASCII, nesting and floats: the fast path's text is the same JSON value."""
    body = scan_event(4)
    body["type"] = "example.plugin.reading.v1"
    body["data"] = {"code": "Größe ✓", "points": {"t": {"value": 21.5, "ok": True}}, "n": None}
    event = V.check(topic_of(body), raw(body))
    assert isinstance(event, Event)
    assert json.loads(event.data or "") == body["data"]


def test_data_nested_deeper_than_orjson_writes_is_still_an_event() -> None:
    """orjson reads 1,024 levels but writes 254: 300 levels must not make check() raise."""
    body = scan_event(5)
    body["type"] = "example.plugin.reading.v1"
    deep: object = "x"
    for _ in range(300):
        deep = [deep]
    body["data"] = {"deep": deep}
    event = V.check(topic_of(body), json.dumps(body).encode())
    assert isinstance(event, Event)
    assert json.loads(event.data or "") == body["data"]
