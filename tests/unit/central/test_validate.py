"""central/validate.py: CloudEvents, schemas and source-vs-topic, without a broker."""

from __future__ import annotations

import json

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
