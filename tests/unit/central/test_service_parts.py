"""central/service.py's pure parts: what each topic becomes, what the quarantine keeps of it,
and the MQTT settings handed to the link.

Written for the survivors of a mutation run (docs/testing.md).
"""

from __future__ import annotations

import gc
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from central.config import CentralSettings
from central.ledger import Checkpoint, ReplayResult
from central.service import (
    GC_THRESHOLDS,
    MAX_CONTROL_PAYLOAD,
    Central,
    CentralLink,
    _as_message,
    _printable,
    fewer_collections,
    link_section,
)
from central.validate import Event, Quarantined
from tests.integration.central.helpers import raw, scan_event


def settings(**sections: dict) -> CentralSettings:
    return CentralSettings.model_validate({"central": {"instance": "a"}, **sections})


@pytest.fixture
def central() -> Central:
    return Central(settings(ingest={"quarantine_bytes": 16}))


def test_checkpoints_and_replay_answers_are_read_as_json_objects(central: Central) -> None:
    """``{prefix}/{site}/{gateway}/checkpoint`` and ``.../cmd/result`` carry their root."""
    item = central._item("edge/s1/gw1/checkpoint", b'{"devices": {}}')
    assert item == Checkpoint("edge/s1/gw1", {"devices": {}})
    item = central._item("edge/s1/gw1/cmd/result", b'{"request_id": "r"}')
    assert item == ReplayResult("edge/s1/gw1", {"request_id": "r"})


def test_control_messages_that_are_not_objects_are_quarantined(central: Central) -> None:
    """Invalid JSON, a list, JSON nested too deep: quarantined with the reason, never raised."""
    for payload in (b"not json", b"[1]", b"[" * 100_000, b'"text"'):
        item = central._item("edge/s1/gw1/checkpoint", payload)
        assert isinstance(item, Quarantined), payload[:20]
        assert item.reason == "not a JSON object"
        assert item.topic == "edge/s1/gw1/checkpoint"
        assert item.raw == payload[:16]
        assert item.size == len(payload)


def test_control_payload_bound_is_inclusive(central: Central) -> None:
    """A checkpoint of exactly MAX_CONTROL_PAYLOAD bytes is read; one byte more is not."""
    pad = MAX_CONTROL_PAYLOAD - len(b'{"p": ""}')
    exact = b'{"p": "' + b"x" * pad + b'"}'
    assert len(exact) == MAX_CONTROL_PAYLOAD
    item = central._item("edge/s1/gw1/checkpoint", exact)
    assert isinstance(item, Checkpoint)
    over = b'{"p": "' + b"x" * (pad + 1) + b'"}'
    item = central._item("edge/s1/gw1/cmd/result", over)
    assert isinstance(item, Quarantined)
    assert item.reason == "control message too large"
    assert item.size == MAX_CONTROL_PAYLOAD + 1


def test_other_topics_go_to_the_validator(central: Central) -> None:
    """Events are validated; a topic of another prefix, another shape or an unknown control
    name is no control message (the validator refuses it as not an events topic)."""
    body = scan_event(3)
    event = central._item("edge/s1/gw1/events/dock", raw(body))
    assert isinstance(event, Event)
    assert event.seq == 3
    for topic in (
        "other/s1/gw1/checkpoint",
        "edgeX/s1/gw1/checkpoint",
        "edge/s1/gw1/cmd/replay",
        "edge/s1/gw1/status",
        "edge/s1/gw1/checkpoint/x/y",
        "edge/s1/checkpoint",
        "edge/s1/gw1/cmd/result/x",
    ):
        item = central._item(topic, b"{}")
        assert isinstance(item, Quarantined), topic
        assert item.reason == "not an events topic", topic


def test_events_are_never_read_as_control_messages(central: Central) -> None:
    """An events topic goes to the validator whatever its payload: its reasons are the
    validator's (invalid JSON, the event size limit), not the control messages' ones."""
    item = central._item("edge/s1/gw1/events/dock", b"not json")
    assert isinstance(item, Quarantined)
    assert item.reason.startswith("invalid JSON"), item.reason
    huge = b'{"p": "' + b"x" * MAX_CONTROL_PAYLOAD + b'"}'
    item = central._item("edge/s1/gw1/events/dock", huge)
    assert isinstance(item, Quarantined)
    assert item.reason == f"payload of {len(huge)} B > {64 * 1024} B", item.reason


def test_a_prefix_of_its_own() -> None:
    """The topic prefix comes from ``[central] topic_prefix``."""
    central = Central(settings(central={"instance": "a", "topic_prefix": "wh"}))
    assert central._item("wh/s/g/checkpoint", b"{}") == Checkpoint("wh/s/g", {})
    assert isinstance(central._item("edge/s/g/checkpoint", b"{}"), Quarantined)
    assert central.subscriptions == (
        "$share/central/wh/+/+/events/#",
        "$share/central/wh/+/+/cmd/result",
        "wh/+/+/checkpoint",
    )


def test_what_postgresql_refused_is_kept_as_it_came() -> None:
    """The quarantine gets the topic and payload an item came as, text PostgreSQL can store."""
    event = Event(
        root="edge/s1/gw1",
        device="dock",
        source="/s1/gw1/dock",
        id="i",
        seq=1,
        type="t",
        time=datetime(2026, 1, 1, tzinfo=UTC),
        historical=False,
        data=None,
        body={"id": "i", "x": "\x00"},
    )
    assert _as_message(event) == (
        "edge/s1/gw1/events/dock",
        json.dumps({"id": "i", "x": "\x00"}).encode(),
    )
    assert _as_message(Checkpoint("edge/s1/gw1", {"a": 1})) == (
        "edge/s1/gw1/checkpoint",
        b'{"a": 1}',
    )
    assert _as_message(ReplayResult("edge/s1/gw1", {"b": 2})) == (
        "edge/s1/gw1/cmd/result",
        b'{"b": 2}',
    )
    quarantined = Quarantined("edge/\x00/\ud800", b"\x00raw", 4, "r")
    assert _as_message(quarantined) == ("edge/\\x00/\\ud800", b"\x00raw")
    assert _as_message(Checkpoint("edge/s\x00/gw1", {}))[0] == "edge/s\\x00/gw1/checkpoint"


def test_printable_escapes_only_what_postgresql_refuses() -> None:
    assert _printable("plain é ✓") == "plain é ✓"
    assert _printable("a\x00b") == "a\\x00b"
    assert _printable("lone \ud800") == "lone \\ud800"


def test_link_settings_come_from_mqtt(tmp_path: Path) -> None:
    """Host, port, keepalive, timeout, user, password file and TLS reach the link's model."""
    password = tmp_path / "password"
    password.write_text("secret\n")
    password.chmod(0o600)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    section = link_section(
        settings(
            mqtt={
                "host": "broker.example",
                "port": 8883,
                "keepalive": 45,
                "timeout": 7,
                "username": "central",
                "password_file": str(password),
                "tls": {"insecure": True, "ca_file": str(ca)},
            }
        )
    )
    assert (section.host, section.port, section.keepalive, section.publish_timeout) == (
        "broker.example",
        8883,
        45,
        7,
    )
    assert section.username == "central"
    assert section.password_file == password
    assert section.tls is not None
    assert section.tls.insecure is True
    assert section.tls.ca_file == ca
    plain = link_section(settings())
    assert plain.username is None
    assert plain.password_file is None
    assert plain.tls is None


def test_link_asks_for_the_configured_session() -> None:
    """The persistent session's expiry and the Receive Maximum are ``[mqtt]``'s; the client id
    is the instance's."""
    link = CentralLink(
        settings(mqtt={"session_expiry": 42, "receive_maximum": 77}), lambda *_: None
    )
    props = link._client._connect_properties
    assert props["session_expiry_interval"] == 42
    assert props["receive_maximum"] == 77
    assert link._client._client_id == "a"
    assert link._client._clean_session is False
    assert link.unacknowledged == 0


async def test_nothing_counts_as_published_without_a_link(central: Central) -> None:
    """Before the first session (or between sessions) a replay request or reconfirm is not
    sent, and says so: the replayer then asks again instead of waiting for an answer."""
    assert await central._publish("edge/s1/gw1/cmd/replay", b"{}") is False
    central._link = CentralLink(settings(mqtt={"timeout": 0.2}), lambda *_: None)  # no session
    assert await central._publish("edge/s1/gw1/cmd/replay", b"{}") is False


def test_collections_are_fewer_while_an_instance_runs_and_as_before_after_the_last() -> None:
    before = gc.get_threshold()
    assert before != GC_THRESHOLDS
    with fewer_collections():
        assert gc.get_threshold() == GC_THRESHOLDS
        with fewer_collections():  # a second instance in the same process
            assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_threshold() == GC_THRESHOLDS, "the first instance still runs"
    assert gc.get_threshold() == before
