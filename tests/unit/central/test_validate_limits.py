"""central/validate.py at its limits: each bound exactly, each refusal's own reason.

Written for the survivors of a mutation run (docs/testing.md): a bound moved by one, a reason
swapped for another, a record cut one byte longer all passed the first tests.
"""

from __future__ import annotations

import json

from central.validate import MAX_ID, Event, Quarantined, Validator, split_event_topic
from tests.integration.central.helpers import raw, scan_event

TOPIC = "edge/s1/gw1/events/dock"


def judge(payload: bytes, *, topic: str = TOPIC, max_payload: int = 4096) -> Event | Quarantined:
    return Validator(prefix="edge", max_payload=max_payload, keep_bytes=64).check(topic, payload)


def refused(payload: bytes, **kwargs: object) -> str:
    result = judge(payload, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, Quarantined), payload[:80]
    return result.reason


def test_payload_bound_is_inclusive() -> None:
    """A payload of exactly ``max_payload`` bytes is judged; one byte more is refused, with both
    sizes in the reason."""
    payload = raw(scan_event(1))
    assert isinstance(judge(payload, max_payload=len(payload)), Event)
    assert refused(payload, max_payload=len(payload) - 1) == (
        f"payload of {len(payload)} B > {len(payload) - 1} B"
    )


def test_id_bound_is_inclusive() -> None:
    """An id of MAX_ID characters is an event; MAX_ID + 1 is refused."""
    event = judge(raw(scan_event(1, event_id="i" * MAX_ID)))
    assert isinstance(event, Event)
    assert event.id == "i" * MAX_ID
    assert refused(raw(scan_event(1, event_id="i" * (MAX_ID + 1)))) == f"id longer than {MAX_ID}"


def test_seq_bounds() -> None:
    """1 and 2**63 - 1 (PostgreSQL's bigint) are seqs; 0, 2**63, a float, a string are not."""
    for seq in (1, 2**63 - 1):
        event = judge(raw(scan_event(seq)))
        assert isinstance(event, Event), seq
        assert event.seq == seq
    for seq in (0, -1, 2**63, 1.0, "1", None):
        assert refused(raw(scan_event(1) | {"seq": seq})) == (
            "seq missing or not a positive integer"
        ), seq
    assert refused(raw({k: v for k, v in scan_event(1).items() if k != "seq"})) == (
        "seq missing or not a positive integer"
    )


def test_each_required_attribute_is_a_non_empty_string() -> None:
    """An empty, missing or non-string id, source or type is refused, naming the attribute."""
    for key in ("id", "source", "type"):
        for value in ("", 5, None):
            assert refused(raw(scan_event(1) | {key: value})) == (
                f"CloudEvents: {key} missing or not a non-empty string"
            ), (key, value)
        body = {k: v for k, v in scan_event(1).items() if k != key}
        assert refused(raw(body)) == f"CloudEvents: {key} missing or not a non-empty string"


def test_specversion_reason_shows_what_came() -> None:
    """The reason quotes the specversion received, cut at 20 characters."""
    assert refused(raw(scan_event(1, specversion="0.3"))) == (
        "not a CloudEvents 1.0 event: specversion '0.3'"
    )
    long = "9" * 30
    assert refused(raw(scan_event(1, specversion=long))) == (
        f"not a CloudEvents 1.0 event: specversion {'9' * 20!r}"
    )
    missing = {k: v for k, v in scan_event(1).items() if k != "specversion"}
    assert refused(raw(missing)) == "not a CloudEvents 1.0 event: specversion 'None'"


def test_time_must_be_rfc3339_and_a_real_date() -> None:
    """Offsets and fractions are accepted; a shape that is not RFC 3339, or a date that does
    not exist, is refused with its own reason."""
    for text, expected in (
        ("2026-11-30T10:00:00Z", "2026-11-30T10:00:00+00:00"),
        ("2026-11-30T10:00:00.5+02:00", "2026-11-30T10:00:00.500000+02:00"),
        ("2026-11-30T10:00:00-05:30", "2026-11-30T10:00:00-05:30"),
    ):
        event = judge(raw(scan_event(1, time=text)))
        assert isinstance(event, Event), text
        assert event.time.isoformat() == expected
    for text in ("2026-11-30 10:00:00Z", "2026-11-30T10:00:00", "x2026-11-30T10:00:00Z", 5):
        assert refused(raw(scan_event(1, time=text))) == "time missing or not RFC 3339", text
    assert refused(raw(scan_event(1, time="2026-13-45T10:00:00Z"))) == "time is not a valid date"


def test_schema_reason_names_the_type_and_the_path() -> None:
    """A schema violation says which type's schema and where in the event."""
    reason = refused(raw(scan_event(1, code=5)))
    assert reason.startswith("schema warehouse.barcode.scanned.v1: data/code: ")
    assert "5" in reason
    reason = refused(raw(scan_event(1) | {"extra": 1}))
    assert reason.startswith("schema warehouse.barcode.scanned.v1: : ")
    assert "extra" in reason


def test_a_type_without_a_schema_needs_only_cloudevents() -> None:
    """Data is kept as compact JSON text; no data is None, not the text 'null'."""
    event = judge(raw(scan_event(1, type="x.custom.v1", data={"a": [1, 2]})))
    assert isinstance(event, Event)
    assert event.data == '{"a":[1,2]}'
    assert event.historical is False
    body = {k: v for k, v in scan_event(1, type="x.custom.v1").items() if k != "data"}
    event = judge(raw(body))
    assert isinstance(event, Event)
    assert event.data is None
    assert event.body == body
    assert event.type == "x.custom.v1"
    assert event.source == "/s1/gw1/dock"
    # historical is only ever the JSON true
    for value in ("true", 1):
        event = judge(raw(scan_event(1, type="x.custom.v1") | {"historical": value}))
        assert isinstance(event, Event)
        assert event.historical is False


def test_refusal_reasons_and_records_are_bounded() -> None:
    """The quarantine keeps at most 1024 characters of topic, ``keep_bytes`` of payload and
    1000 of reason, and the full size."""
    validator = Validator(prefix="edge", max_payload=4096, keep_bytes=64)
    record = validator.quarantine("t" * 2000, b"p" * 100, "r" * 2000)
    assert (record.topic, record.raw, record.size, record.reason) == (
        "t" * 1024,
        b"p" * 64,
        100,
        "r" * 1000,
    )
    assert refused(raw(scan_event(1)), topic="x" * 2000) == "not an events topic"
    assert judge(raw(scan_event(1)), topic="x" * 2000).topic == "x" * 1024  # type: ignore[union-attr]
    # a device name of 2000 characters: the topic and the reason quoting it are cut
    topic = "edge/s1/gw1/events/" + "d" * 2000
    result = judge(raw(scan_event(1)), topic=topic)
    assert isinstance(result, Quarantined)
    assert result.topic == topic[:1024]
    full = f"source '/s1/gw1/dock' does not match topic '/s1/gw1/{'d' * 2000}'"
    assert result.reason == full[:1000]
    # invalid JSON: the parser's message (json's are far shorter than the 200 kept)
    bad = b'{"a": 1, x'
    assert refused(bad) == f"invalid JSON: {_json_error(bad)}"
    # a foreign source is quoted, cut at 200 characters
    other = "/s1/gw1/" + "o" * 300
    assert refused(raw(scan_event(1) | {"source": other})) == (
        f"source {other[:200]!r} does not match topic '/s1/gw1/dock'"
    )


def _json_error(payload: bytes) -> str:
    try:
        json.loads(payload)
    except ValueError as exc:
        return str(exc)
    raise AssertionError("valid JSON")


def test_topic_names_must_be_plain() -> None:
    """Empty names and MQTT wildcards in site, gateway or device are not an events topic."""
    for topic in (
        "edge//gw/events/d",
        "edge/s//events/d",
        "edge/s/gw/events/",
        "edge/s+/gw/events/d",
        "edge/s/g#/events/d",
        "edge/s/gw/events/d\x00",
        "edge/s/gw/other/d",
    ):
        assert split_event_topic(topic, "edge") is None, topic
    assert split_event_topic("edge/s/gw/events/d", "other") is None
    assert split_event_topic("edge/s/gw/events", "edge") is None


def test_schema_formats_are_checked() -> None:
    """The schemas' ``format`` keywords are enforced, not only their types: an expiry that is
    no date and a dataschema that is no URI are refused; real ones pass."""
    good = scan_event(1, data={"code": "x", "expiry": "2027-02-28"}) | {
        "dataschema": "https://schemas.edge-gateway.example/warehouse.barcode.scanned.v1.json"
    }
    assert isinstance(judge(raw(good)), Event)
    reason = refused(raw(scan_event(1, data={"code": "x", "expiry": "2027-02-30"})))
    assert reason.startswith("schema warehouse.barcode.scanned.v1: data/expiry: ")
    reason = refused(raw(scan_event(1) | {"dataschema": "not a uri"}))
    assert reason.startswith("schema warehouse.barcode.scanned.v1: dataschema: ")


def test_schema_messages_are_cut_and_a_non_object_says_so() -> None:
    """A schema message quoting a long value is cut at 300 characters; JSON that is not an
    object is refused as exactly that."""
    reason = refused(raw(scan_event(1, data={"code": "x", "gtin": "9" * 500})))
    head = "schema warehouse.barcode.scanned.v1: data/gtin: "
    assert reason.startswith(head)
    assert len(reason) == len(head) + 300
    for payload in (b"[]", b"5", b'"text"', b"null"):
        assert refused(payload) == "not a JSON object", payload
