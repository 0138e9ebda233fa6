"""Whether a message is a valid event from the gateway whose topic it arrived on.

CloudEvents 1.0 (structured JSON: the required context attributes and their types), the JSON
Schema the gateway ships for the type (gateway/schemas/, checked with jsonschema-rs: ~2 µs an
event where the pure-Python ``jsonschema`` took ~200-450 µs and capped ingest near 2k/s), the
``seq`` extension, and the
``source`` against the topic: a gateway must not write events for another gateway or device.
Anything else becomes a :class:`Quarantined` with the reason; nothing here raises.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import jsonschema_rs
import orjson

_NAME = re.compile(r"^[^/#+\x00]+$")
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
_REQUIRED = ("specversion", "id", "source", "type")
MAX_ID = 128
_EXACT_FLOAT_LIMIT = float(2**63)
"""orjson reads an integer past 64 bits as a float (2**70 became 1.1805916207174113e+21): a
float in ``data`` this large and whole may have been one (see :func:`_parse`)."""


@dataclass(frozen=True, slots=True)
class Event:
    """A valid event, as the ledger stores it."""

    root: str
    device: str
    source: str
    id: str
    seq: int
    type: str
    time: datetime
    historical: bool
    data: str | None
    """``data`` as JSON text, for the JSONB column."""
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Quarantined:
    """Refused input, kept for people to look at."""

    topic: str
    raw: bytes
    size: int
    reason: str


def _parse(payload: bytes) -> tuple[Any, Callable[[object], str]]:
    """The JSON body, and how to write its ``data`` back as text for the JSONB column.

    orjson where it reads the payload as the standard parser would: a third fewer instructions
    per event. What it refuses and the standard parser takes (NaN, lone surrogates), and data
    that may have held an integer past 64 bits (:data:`_EXACT_FLOAT_LIMIT`), are judged as
    before orjson: by the standard parser, and with its text, in which PostgreSQL stores big
    integers exactly and refuses NaN and lone surrogates, that event alone
    (central/service.py, ``_write``). Raises ValueError or RecursionError when the payload is
    not JSON.
    """
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        pass  # perhaps JSON all the same: the standard parser decides
    else:
        if not (isinstance(body, dict) and _may_have_been_an_integer(body.get("data"))):
            return body, _orjson_text
    return json.loads(payload), _json_text


def _may_have_been_an_integer(value: object) -> bool:
    """Whether ``value`` holds a float that orjson may have made of a big integer."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, float) and abs(item) >= _EXACT_FLOAT_LIMIT and item.is_integer():
            return True
    return False


def _orjson_text(data: object) -> str:
    try:
        return orjson.dumps(data).decode()
    except orjson.JSONEncodeError:  # nested past orjson's 254 levels (it reads 1,024)
        return _json_text(data)


def _json_text(data: object) -> str:
    return json.dumps(data, separators=(",", ":"))


@functools.lru_cache(maxsize=4096)
def split_event_topic(topic: str, prefix: str) -> tuple[str, str, str, str] | None:
    """``{prefix}/{site}/{gateway}/events/{device}`` -> (root, site, gateway, device).

    Cached: a site's topics are few (one per device) and come again with every event, and the
    split and three pattern matches were ~3 µs an event. Bounded, so a flood of made-up topics
    only evicts.
    """
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != prefix or parts[3] != "events":
        return None
    _, site, gateway, _, device = parts
    if not all(_NAME.match(p) for p in (site, gateway, device)):
        return None
    return f"{prefix}/{site}/{gateway}", site, gateway, device


class Validator:
    """Checks one message; the schemas are compiled once."""

    def __init__(self, *, prefix: str, max_payload: int, keep_bytes: int) -> None:
        self._prefix, self._max, self._keep = prefix, max_payload, keep_bytes
        self._schemas: dict[str, Any] = {}
        for item in resources.files("gateway").joinpath("schemas").iterdir():
            if item.name.endswith(".json"):
                schema = json.loads(item.read_text())
                self._schemas[item.name[:-5]] = jsonschema_rs.validator_for(
                    schema, validate_formats=True
                )

    def quarantine(self, topic: str, payload: bytes, reason: str) -> Quarantined:
        """A quarantine record with at most ``quarantine_bytes`` of the payload."""
        return Quarantined(topic[:1024], payload[: self._keep], len(payload), reason[:1000])

    def check(self, topic: str, payload: bytes) -> Event | Quarantined:
        """The event, or why it is refused."""
        where = split_event_topic(topic, self._prefix)
        if where is None:
            return self.quarantine(topic, payload, "not an events topic")
        if len(payload) > self._max:
            return self.quarantine(topic, payload, f"payload of {len(payload)} B > {self._max} B")
        try:
            body, as_text = _parse(payload)
        except (ValueError, RecursionError) as exc:
            return self.quarantine(topic, payload, f"invalid JSON: {str(exc)[:200]}")
        reason = self._problem(body)
        if reason is not None:
            return self.quarantine(topic, payload, reason)
        root, site, gateway, device = where
        expected = f"/{site}/{gateway}/{device}"
        if body["source"] != expected:
            return self.quarantine(
                topic, payload, f"source {body['source'][:200]!r} does not match topic {expected!r}"
            )
        data = body.get("data")
        return Event(
            root=root,
            device=device,
            source=expected,
            id=body["id"],
            seq=body["seq"],
            type=body["type"],
            time=datetime.fromisoformat(body["time"]),
            historical=body.get("historical") is True,
            data=None if data is None else as_text(data),
            body=body,
        )

    def _problem(self, body: object) -> str | None:  # noqa: PLR0911 - one reason each
        if not isinstance(body, dict):
            return "not a JSON object"
        if body.get("specversion") != "1.0":
            return f"not a CloudEvents 1.0 event: specversion {str(body.get('specversion'))[:20]!r}"
        for key in _REQUIRED:
            if not isinstance(body.get(key), str) or not body[key]:
                return f"CloudEvents: {key} missing or not a non-empty string"
        if len(body["id"]) > MAX_ID:
            return f"id longer than {MAX_ID}"
        seq = body.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq < 2**63:
            return "seq missing or not a positive integer"
        problem = _time_problem(body.get("time"))
        if problem is not None:
            return problem
        validator = self._schemas.get(body["type"])
        if validator is not None and not validator.is_valid(body):
            error = next(iter(validator.iter_errors(body)))
            path = "/".join(str(p) for p in error.instance_path)
            return f"schema {body['type']}: {path}: {error.message[:300]}"
        return None


def _time_problem(time: object) -> str | None:
    """Why ``time`` is refused: not RFC 3339, not a date, or an instant outside Python's years.

    The ledger stores the instant (UTC, central/ledger.py ``_events_json``): converting year 1
    east of UTC or 9999 west of it raises OverflowError, which in the writer would fail the
    batch every retry instead of quarantining the event (asyncpg refused these as data before).
    """
    if not isinstance(time, str) or not _TIME.match(time):
        return "time missing or not RFC 3339"
    try:
        datetime.fromisoformat(time).astimezone(UTC)
    except ValueError:
        return "time is not a valid date"
    except OverflowError:
        return "time is outside years 1-9999 in UTC"
    return None
