"""Validation of what central sends: confirms and replay commands are untrusted input."""

from __future__ import annotations

import contextlib
import json
import random
import uuid

import pytest

from gateway.commands import (
    MAX_CONFIRMS,
    MAX_DETAIL,
    MAX_PAYLOAD,
    InvalidMessageError,
    echo,
    parse_confirms,
    parse_replay,
    request_id_of,
    result_payload,
)
from gateway.events import mark_historical, mark_replayed, render_event


def test_one_confirm_or_a_list() -> None:
    """DESIGN 6: one object or a JSON list of them; reason optional."""
    one = parse_confirms(b'{"id": "a", "status": "accepted"}').confirms
    assert [(c.id, c.status) for c in one] == [("a", "accepted")]
    many = parse_confirms(
        json.dumps(
            [{"id": "a", "status": "accepted"}, {"id": "b", "status": "rejected", "reason": "x"}]
        ).encode()
    ).confirms
    assert [c.status for c in many] == ["accepted", "rejected"]
    assert many[1].reason == "x"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe",
        b"null",
        b"[]",
        b'"accepted"',
        b'{"id": "a"}',
        b'{"id": "a", "status": "maybe"}',
        b'{"id": 7, "status": "accepted"}',
        b'{"id": "a", "status": "accepted", "extra": 1}',
        b'{"id": "", "status": "accepted"}',
        b"[" * 100_000,
        json.dumps({"id": "a" * 200, "status": "accepted"}).encode(),
    ],
)
def test_bad_confirms_are_refused_not_raised(payload: bytes) -> None:
    """Every malformed confirm becomes InvalidMessageError, whatever the bytes."""
    with pytest.raises(InvalidMessageError):
        parse_confirms(payload)


def test_confirm_size_and_list_bounds() -> None:
    """Payloads over 64 KiB and lists over MAX_CONFIRMS are refused before validation."""
    with pytest.raises(InvalidMessageError, match="exceeds"):
        parse_confirms(b" " * (MAX_PAYLOAD + 1))
    items = [{"id": str(i), "status": "accepted"} for i in range(MAX_CONFIRMS + 1)]
    with pytest.raises(InvalidMessageError, match="at most"):
        parse_confirms(json.dumps(items, separators=(",", ":")).encode())


def test_the_documented_full_list_fits_the_byte_cap() -> None:
    """MAX_CONFIRMS UUID verdicts fit in MAX_PAYLOAD, even as rejections with 40-character
    reasons (issue 18, finding 4: 1,000 did not)."""
    items = [
        {"id": str(uuid.uuid4()), "status": "rejected", "reason": "r" * 40}
        for _ in range(MAX_CONFIRMS)
    ]
    payload = json.dumps(items).encode()
    assert len(payload) <= MAX_PAYLOAD
    assert len(parse_confirms(payload).confirms) == MAX_CONFIRMS


def test_a_bad_verdict_is_refused_alone() -> None:
    """One over-long reason, one wrong type, one non-object in a list of 500: the other 497
    verdicts are kept, the refusal names the first bad one (issue 18, finding 4)."""
    items: list[object] = [{"id": f"e{i}", "status": "accepted"} for i in range(500)]
    items[3] = {"id": "e3", "status": "rejected", "reason": "x\n" * 1025}
    items[10] = {"id": 10, "status": "accepted"}
    items[20] = "accepted"
    parsed = parse_confirms(json.dumps(items).encode())
    assert len(parsed.confirms) == 497 and parsed.refused == 3
    assert "e3" not in {c.id for c in parsed.confirms}
    assert parsed.problem is not None and parsed.problem.startswith("3.reason")
    assert len(parsed.problem) <= MAX_DETAIL and parsed.problem.isprintable()
    with pytest.raises(InvalidMessageError, match="all 2 verdicts refused"):
        parse_confirms(json.dumps([{"id": 1}, "x"]).encode())


def test_replay_command_validation() -> None:
    """Strict types, a valid device id, a sane range; to_seq may be omitted."""
    cmd = parse_replay(b'{"request_id": "r1", "device": "dock-1", "from_seq": 3, "to_seq": 9}')
    assert (cmd.request_id, cmd.device, cmd.from_seq, cmd.to_seq) == ("r1", "dock-1", 3, 9)
    assert parse_replay(b'{"request_id": 5, "device": "d", "from_seq": 1}').to_seq is None
    for bad in (
        b'{"request_id": "r", "device": "d", "from_seq": 0}',
        b'{"request_id": "r", "device": "d", "from_seq": "1"}',
        b'{"request_id": "r", "device": "a/b", "from_seq": 1}',
        b'{"request_id": "r", "device": "d", "from_seq": 5, "to_seq": 4}',
        b'{"request_id": "r", "device": "d", "from_seq": 1, "to_seq": 99999999}',
        b'{"request_id": true, "device": "d", "from_seq": 1}',
        b'{"device": "d", "from_seq": 1}',
        b'{"request_id": "r", "device": "d", "from_seq": 1, "x": 1}',
    ):
        with pytest.raises(InvalidMessageError):
            parse_replay(bad)


def test_request_id_is_echoed_only_when_readable() -> None:
    """A refused command is answered with its request_id when one can be read, else not."""
    assert request_id_of(b'{"request_id": "abc", "device": 1}') == "abc"
    assert request_id_of(b'{"request_id": 42}') == 42
    assert request_id_of(b'{"request_id": true}') is None
    assert request_id_of(b'{"request_id": "' + b"x" * 500 + b'"}') is None
    assert request_id_of(b"garbage") is None
    assert request_id_of(b"[1]") is None
    assert json.loads(result_payload("r", ok=False, detail="d")) == {
        "request_id": "r",
        "ok": False,
        "detail": "d",
    }


def test_random_bytes_never_raise_anything_else() -> None:
    """Fuzz: random payloads only ever produce InvalidMessageError (or a valid parse)."""
    rng = random.Random(5)
    for _ in range(2000):
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        for parse in (parse_confirms, parse_replay):
            with contextlib.suppress(InvalidMessageError):
                parse(payload)
        request_id_of(payload)


def test_replayed_marker_is_valid_json_and_keeps_id_and_seq() -> None:
    """A replay carries the stored id and seq, plus historical and replayed flags."""
    stored = render_event(
        event_id="e1",
        source="/s/g/d",
        type_="t",
        time_="2026-01-01T00:00:00.000000Z",
        seq=7,
        data={},
    )
    body = json.loads(mark_replayed(stored))
    assert (body["id"], body["seq"], body["historical"], body["replayed"]) == ("e1", 7, True, True)
    assert json.loads(mark_historical(stored))["historical"] is True


def test_echo_is_short_printable_and_escaped() -> None:
    """Untrusted text repeated to a log or to central: bounded, no control or format characters."""
    assert echo("dock-1") == "dock-1"
    assert echo("a\nb\x1b[31m\u202e") == "a\\nb\\x1b[31m\\u202e"
    assert echo("back\\slash") == "back\\\\slash", "escapes cannot be forged"
    cut = echo("k" * 60_000)
    assert cut.startswith("k" * 10) and cut.endswith("(+59936 chars)") and len(cut) < 90
    assert len(echo("\n" * 60_000)) < 90
    assert echo(7) == "7"


def test_unknown_key_is_named_bounded() -> None:
    """An unknown key of 60 KB with newlines: the error names it, short and on one line."""
    key = "x\n" * 20_000
    for parse, body in (
        (parse_confirms, {"id": "e", "status": "accepted", key: 1}),
        (parse_replay, {"request_id": "r", "device": "d", "from_seq": 1, key: 1}),
    ):
        with pytest.raises(InvalidMessageError) as caught:
            parse(json.dumps(body).encode())
        detail = str(caught.value)
        assert "\n" not in detail and len(detail) <= 240 and detail.startswith("x\\nx\\n")


def test_unprintable_request_ids_are_not_echoed() -> None:
    """A request id is echoed verbatim, so only printable text or a 64-bit integer is."""
    for rid in ("r\n1", "\u202eevil", "\x00"):
        assert request_id_of(json.dumps({"request_id": rid}).encode()) is None
        with pytest.raises(InvalidMessageError):
            parse_replay(json.dumps({"request_id": rid, "device": "d", "from_seq": 1}).encode())
    assert request_id_of(b'{"request_id": 99999999999999999999999}') is None
    assert request_id_of('{"request_id": "Lager-Ü 7"}'.encode()) == "Lager-Ü 7"
