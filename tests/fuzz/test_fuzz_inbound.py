"""Confirm and cmd payloads from the broker (anyone with publish rights can write them)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.commands import (
    MAX_CONFIRMS,
    MAX_PAYLOAD,
    InvalidMessageError,
    parse_confirms,
    parse_replay,
    request_id_of,
    result_payload,
)
from tests.fuzz.budget import FUZZ

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.sampled_from(["accepted", "rejected", "dock-1", "../etc", "+", "#"]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)
CONFIRM_KEYS = st.sampled_from(["id", "status", "reason", "extra"])
CONFIRM_LIKE = st.dictionaries(CONFIRM_KEYS, SCALARS, max_size=4)
REPLAY_KEYS = st.sampled_from(["request_id", "device", "from_seq", "to_seq", "extra"])
REPLAY_LIKE = st.dictionaries(REPLAY_KEYS, SCALARS, max_size=5)


def encode(body: Any) -> bytes:
    """JSON bytes, as central (or an attacker) would publish them."""
    return json.dumps(body).encode()


PAYLOADS = st.one_of(
    st.binary(max_size=300),
    JSON.map(encode),
    CONFIRM_LIKE.map(encode),
    st.lists(CONFIRM_LIKE, max_size=4).map(encode),
    REPLAY_LIKE.map(encode),
    st.sampled_from([b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000, b"9" * 5000, b"\xef\xbb\xbf{}"]),
)


@FUZZ
@given(payload=PAYLOADS)
def test_confirm_parser_only_raises_its_own_error(payload: bytes) -> None:
    """Any payload: a bounded list of valid confirms, or InvalidMessageError without the
    payload echoed in it."""
    try:
        confirms = parse_confirms(payload).confirms
    except InvalidMessageError as exc:
        confirms, error = [], str(exc)
    else:
        error = ""
    if error:
        assert len(error) < 300 and error.isprintable()
        return
    assert 1 <= len(confirms) <= MAX_CONFIRMS
    for confirm in confirms:
        assert confirm.status in ("accepted", "rejected")
        assert 1 <= len(confirm.id) <= 128


@FUZZ
@given(payload=PAYLOADS)
def test_replay_parser_only_raises_its_own_error(payload: bytes) -> None:
    """Any payload: a replay with a sane range and device id, or InvalidMessageError; the
    request id we would echo is always JSON-serialisable and bounded."""
    try:
        command = parse_replay(payload)
    except InvalidMessageError as exc:
        assert len(exc.args[0]) < 300  # noqa: PT017 - a property over many payloads
        assert exc.args[0].isprintable()  # noqa: PT017
    else:
        assert command.from_seq >= 1
        assert command.to_seq is None or command.to_seq >= command.from_seq
        assert "/" not in command.device and "+" not in command.device
    rid = request_id_of(payload)
    answer = json.loads(result_payload(rid, ok=False, detail="x"))
    assert answer["request_id"] == rid
    assert rid is None or isinstance(rid, int) or rid.isprintable()
    assert len(result_payload(rid, ok=False)) < MAX_PAYLOAD + 100


def test_oversize_payload_is_refused_before_parsing() -> None:
    """One byte over the bound is refused by size, whatever it holds."""
    big = b'{"id": "' + b"a" * MAX_PAYLOAD + b'", "status": "accepted"}'
    for parse in (parse_confirms, parse_replay):
        with pytest.raises(InvalidMessageError, match="exceeds"):
            parse(big)


HOSTILE_KEYS = st.text(min_size=1, max_size=3000) | st.sampled_from(
    ["\n" * 2000, "a\r\nlevel=error event=forged", "\u202e\x1b[2J", "\\n"]
)


@FUZZ
@given(key=HOSTILE_KEYS, value=SCALARS, rid=SCALARS | st.text(max_size=200))
def test_echoed_keys_and_ids_are_short_and_printable(key: str, value: Any, rid: Any) -> None:
    """Whatever key or request id the sender invents, what we repeat of it (error detail, the
    request id of the answer) is short printable text: no forged log lines, no 60 KB echoes."""
    for parse, body in (
        (parse_confirms, {"id": "e", "status": "accepted", key: value}),
        (parse_replay, {"request_id": rid, "device": "d", "from_seq": 1, key: value}),
    ):
        payload = encode(body)
        try:
            parse(payload)
        except InvalidMessageError as exc:
            detail = str(exc)
            assert detail.isprintable() and len(detail) <= 240
        echoed = request_id_of(payload)
        assert echoed is None or isinstance(echoed, int) or echoed.isprintable()
        answer = result_payload(echoed, ok=False, detail="x")
        assert b"\n" not in answer and len(answer) < 400
