"""CloudEvents 1.0 structured-JSON payloads (contract section 5) and their ids.

The payload is rendered once, inside the buffer's commit (when ``seq`` is known), and stored as
the exact bytes that go on the wire: a redelivery or replay sends the same id, seq and body.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from uuid_utils import uuid7 as _uuid7

SPECVERSION = "1.0"
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_dumps = orjson.dumps
_ENVELOPE = (
    b'{"specversion":"' + SPECVERSION.encode() + b'","id":%b,"source":%b,"type":%b,"time":%b,'
    b'"seq":%d,"datacontenttype":"application/json","data":%b}'
)
_HISTORICAL_SUFFIX = b',"historical":true}'
_REPLAYED_SUFFIX = b',"historical":true,"replayed":true}'


def uuid7() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so ids sort by capture time, and globally unique.

    uuid-utils (Rust) makes it in 0.2 µs; the pure-Python version with a pooled CSPRNG it
    replaced took 1.35 µs, on every event.
    """
    return str(_uuid7())


def new_id() -> tuple[str, bytes]:
    """A :func:`uuid7` and its 16 bytes, the form the buffer stores (``buffer.event_ids``).

    The pipeline's ids: packing the text back into bytes (``id_key``) cost five times what
    reading the bytes off the UUID does, on every event.
    """
    made = _uuid7()
    return str(made), made.bytes


_second: tuple[int | None, str] = (None, "")
"""The last whole second formatted (with its ".") and its number: most stamps fall in it."""


def rfc3339_now() -> str:
    """Capture time on the gateway: RFC 3339, UTC, microseconds.

    Formats the date and time once per second and only the microseconds per call: this runs
    for every event, and datetime's isoformat was 1.5 µs of it. The microseconds are the last
    six digits of the count of them since the epoch, already zero-padded (a ``:06d`` format
    cost more than the rest of the stamp); :func:`_new_second` keeps only seconds where that
    holds.
    """
    micros = time.time_ns() // 1000
    cached = _second
    if cached[0] != micros // 1_000_000:
        return _new_second(micros)
    return f"{cached[1]}{str(micros)[-6:]}Z"


def _new_second(micros: int) -> str:
    """The stamp of ``micros``; its second is kept for the next stamps from 1970-01-01T00:00:01.

    Earlier counts have fewer than seven digits, where the fast path's slice would be wrong.
    """
    global _second  # noqa: PLW0603 - a one-entry cache, replaced whole (thread-safe)
    second, fraction = divmod(micros, 1_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
    if micros >= 1_000_000:
        _second = (second, text)
    return f"{text}{fraction:06d}Z"


def source_for(site: str, gateway: str, device: str) -> str:
    """The CloudEvents ``source`` of a device."""
    return f"/{site}/{gateway}/{device}"


def render_event(
    *, event_id: str, source: str, type_: str, time_: str, seq: int, data: Mapping[str, Any]
) -> bytes:
    """Serialize one event compactly; ``historical`` is added at publish time, never stored.

    The bytes ``json.dumps(..., separators=(",", ":"), ensure_ascii=False)`` gives for the
    attributes in this order, written with orjson (2.2 -> 0.5 µs): the same text except that a
    float may be spelled otherwise (``1.5e-05`` as ``0.000015``; the same number) and a NaN or
    infinity becomes ``null`` (``json`` wrote ``NaN``, which is not JSON). What orjson refuses
    (an integer beyond 64 bits, a key that is not a string, a mapping that is not a dict) goes
    through ``json`` as before, with its NaNs and infinities as ``null`` too (:func:`_finite`).
    """
    body = data_json(data)
    return _ENVELOPE % (
        _dumps(event_id),
        _dumps(source),
        _dumps(type_),
        _dumps(time_),
        int(seq),
        body,
    )


def data_json(data: Mapping[str, Any]) -> bytes:
    """An event's ``data`` as JSON, the same bytes for every renderer.

    orjson's, or for what orjson refuses, ``json``'s with NaNs and infinities as null
    (:func:`_finite`).
    """
    try:
        return _dumps(data)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return _encode(_finite(data)).encode()


def _finite(value: Any) -> Any:  # noqa: ANN401
    """``value`` with each NaN or infinity as None, as orjson writes them (json: ``NaN``).

    Only for what orjson refused; keys and everything json cannot take are left as they are.
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


class SourceRenderer:
    """:func:`render_event` for one ``source``, as a ``render(seq)`` per event, for less work.

    The same bytes (tests/unit/gateway/test_events.py compares them), for ids from
    :func:`new_id` and times from :func:`rfc3339_now`, which JSON writes as they are: the
    source's JSON is made once, each event type's once (they are few), and the rest is one
    format and one encode instead of five ``orjson.dumps`` and a call with keywords. A type
    orjson refuses (a lone surrogate) is left to :func:`render_event`, so its event is
    refused when it is rendered, alone, as before.
    """

    __slots__ = ("_middles", "_source", "_source_json")

    MAX_TYPES = 64
    """Event types whose JSON is kept; a driver has a handful."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._source_json = _dumps(source).decode()
        self._middles: dict[str, str] = {}
        """Event type -> the envelope between the id and the time."""

    def render_for(
        self, event_id: str, type_: str, time_: str, data: Mapping[str, Any]
    ) -> Callable[[int], bytes]:
        """The event's ``render(seq)``: its payload once the buffer numbered it."""
        middle = self._middles.get(type_)
        if middle is None:
            middle = self._middle(type_)
            if middle is None:
                return self._slow(event_id, type_, time_, data)

        def render(seq: int) -> bytes:
            body = data_json(data)
            return (
                (
                    f'{{"specversion":"{SPECVERSION}","id":"{event_id}{middle}{time_}","seq":{seq},'
                    '"datacontenttype":"application/json","data":'
                ).encode()
                + body
                + b"}"
            )

        return render

    def _middle(self, type_: str) -> str | None:
        """``","source":...,"type":...,"time":"`` for ``type_``, kept; None if not JSON."""
        try:
            type_json = _dumps(type_).decode()
        except TypeError:
            return None
        middle = f'","source":{self._source_json},"type":{type_json},"time":"'
        if len(self._middles) < self.MAX_TYPES:
            self._middles[type_] = middle
        return middle

    def _slow(
        self, event_id: str, type_: str, time_: str, data: Mapping[str, Any]
    ) -> Callable[[int], bytes]:
        def render(seq: int) -> bytes:
            return render_event(
                event_id=event_id, source=self._source, type_=type_, time_=time_, seq=seq, data=data
            )

        return render


def mark_historical(payload: bytes) -> bytes:
    """Flag a backlog event that live events overtook, without re-parsing the stored payload."""
    return payload[:-1] + _HISTORICAL_SUFFIX


def mark_replayed(payload: bytes) -> bytes:
    """Flag a replayed event: historical (contract section 5) and ``replayed`` (cmd/replay)."""
    return payload[:-1] + _REPLAYED_SUFFIX
