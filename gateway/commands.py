"""Untrusted input from central: ``{root}/confirm`` and ``{root}/cmd/*`` (contract section 6).

Anyone with publish rights on the broker can write there, so every payload is size-bounded,
parsed as JSON, and validated against a strict model (unknown keys, wrong types and oversize
lists are errors). Nothing here raises anything but :class:`InvalidMessageError`, whose text
is safe to log and to echo in a ``cmd/result``: whatever of the input it names (a key, a
value) goes through :func:`echo` first, and a ``request_id`` is echoed only when it is short,
printable text or a 64-bit integer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from drivers.base import DEVICE_ID_PATTERN

MAX_PAYLOAD = 64 * 1024
"""Largest confirm or cmd payload accepted (gateway/mqtt_link.py asks the broker to send no
larger packet)."""
MAX_CONFIRMS = 500
"""Most verdicts in one confirm message. Chosen to fit the byte cap: 500 UUID confirms are
35 KB (43 KB with ``"reason": null``; 62 KB as rejections with 40-character reasons), while
1,000 (the old limit) were 70-86 KB, over :data:`MAX_PAYLOAD` (issue 18, finding 4)."""
MAX_REASON = 1024
MAX_REPLAY_SPAN = 1_000_000
MAX_REQUEST_ID = 128
ECHO_LIMIT = 64
"""Most characters of one untrusted key or value repeated in a log line or a ``cmd/result``."""
MAX_DETAIL = 240
"""Most characters of an error detail built from untrusted input."""


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """``value`` as it may be repeated to a log or to central: short, printable, escaped.

    An attacker's key can be 60 KB long and hold newlines, ANSI escapes or bidi overrides: a
    log line or an answer that repeats it verbatim is forged, split or blown up. Printable
    characters stay (so a typo stays readable), everything else is written as a Python escape,
    and the result is cut at ``limit`` characters with the number of characters left off.
    """
    text = value if isinstance(value, str) else repr(value)
    out: list[str] = []
    used = 0
    for index, char in enumerate(text):
        if char == "\\":
            piece = "\\\\"
        elif char.isprintable():
            piece = char
        else:
            piece = char.encode("unicode_escape").decode("ascii")
        if used + len(piece) > limit:
            out.append(f"...(+{len(text) - index} chars)")
            break
        out.append(piece)
        used += len(piece)
    return "".join(out)


def _printable(text: str) -> str:
    if not text.isprintable():
        raise ValueError("must be printable text (no control or format characters)")
    return text


RequestId = (
    Annotated[
        str,
        StringConstraints(min_length=1, max_length=MAX_REQUEST_ID),
        AfterValidator(_printable),
    ]
    | Annotated[int, Field(ge=-(2**63), lt=2**63)]
)
"""Echoed verbatim in every answer, so only what is safe to repeat: short printable text or a
64-bit integer."""
EventId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class InvalidMessageError(ValueError):
    """A payload we refuse; the message says why, briefly, without echoing the payload."""


class Confirm(BaseModel):
    """One verdict from central on one event."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: EventId
    status: Literal["accepted", "rejected"]
    reason: Annotated[str, StringConstraints(max_length=MAX_REASON)] | None = None


class ReplayCommand(BaseModel):
    """Re-publish ``device``'s events ``from_seq..to_seq`` (to the last stored one if absent)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    request_id: RequestId
    device: Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
    from_seq: int = Field(ge=1, le=2**62)
    to_seq: int | None = Field(default=None, ge=1, le=2**62)

    def span_error(self) -> str | None:
        """Range problems pydantic cannot express field by field."""
        if self.to_seq is None:
            return None
        if self.to_seq < self.from_seq:
            return f"to_seq {self.to_seq} is before from_seq {self.from_seq}"
        if self.to_seq - self.from_seq + 1 > MAX_REPLAY_SPAN:
            return f"range longer than {MAX_REPLAY_SPAN} events; split the request"
        return None


def _load(payload: bytes) -> Any:  # noqa: ANN401 - whatever JSON the sender wrote
    if len(payload) > MAX_PAYLOAD:
        raise InvalidMessageError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        raise InvalidMessageError("payload is not JSON (UTF-8)") from None


def _describe(exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> str:
    """The first error, naming where it is; keys come from the sender, so they are echoed."""
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(echo(p) for p in (*prefix, *first["loc"])[:4]) or "(message)"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"[:MAX_DETAIL]


@dataclass(slots=True)
class ParsedConfirms:
    """The valid verdicts of one confirm message, and how many of its verdicts were refused."""

    confirms: list[Confirm] = field(default_factory=list)
    refused: int = 0
    problem: str | None = None
    """Why the first refused verdict was refused (bounded, escaped), None if none was."""


_CONFIRM_KEYS = frozenset(Confirm.model_fields)


def _shape_problem(item: object, prefix: tuple[int | str, ...]) -> str | None:
    """Why ``item`` cannot be a Confirm, found cheaply (None: validate it fully).

    Only its keys are looked at: a dict of thousands of unknown keys is refused naming the
    first, without building an error for each.
    """
    where = ".".join(echo(p) for p in prefix)
    if not isinstance(item, dict):
        return f"{where or '(message)'}: Input should be an object"[:MAX_DETAIL]
    unknown = [key for key in item if key not in _CONFIRM_KEYS]
    if not unknown:
        return None
    more = f" (+{len(unknown) - 1} more)" if len(unknown) > 1 else ""
    name = ".".join(filter(None, (where, echo(unknown[0]))))
    return f"{name}: Extra inputs are not permitted{more}"[:MAX_DETAIL]


def parse_confirms(payload: bytes) -> ParsedConfirms:
    """One confirm object or a non-empty list of at most ``MAX_CONFIRMS`` of them.

    A bad verdict in a list is refused alone: the others are kept (one over-long ``reason``
    used to cost the whole list, issue 18, finding 4). The message as a whole is refused
    (InvalidMessageError) when it is too big, not JSON, an empty or too long list, a single bad
    object, or a list of which no verdict is valid.
    """
    body = _load(payload)
    items = body if isinstance(body, list) else [body]
    if not items:
        raise InvalidMessageError("empty confirm list")
    if len(items) > MAX_CONFIRMS:
        raise InvalidMessageError(f"{len(items)} confirms in one message, at most {MAX_CONFIRMS}")
    parsed = ParsedConfirms()
    for index, item in enumerate(items):
        prefix: tuple[int | str, ...] = (index,) if isinstance(body, list) else ()
        shape = _shape_problem(item, prefix)
        if shape is not None:
            # Refused before pydantic: a 64 KiB object of thousands of unknown keys cost ~13 ms
            # of validation errors on the event loop each, and an invalid confirm is
            # acknowledged at once, so a flood of them slowed every scan's feedback 20-50x
            # (found by the second review of issue 13).
            parsed.refused += 1
            parsed.problem = parsed.problem or shape
            continue
        try:
            parsed.confirms.append(Confirm.model_validate(item))
        except ValidationError as exc:
            parsed.refused += 1
            if parsed.problem is None:
                parsed.problem = _describe(exc, prefix)
    if not parsed.confirms:
        many = f" (all {len(items)} verdicts refused)" if len(items) > 1 else ""
        raise InvalidMessageError(f"{parsed.problem or 'no valid verdict'}{many}"[:MAX_DETAIL])
    return parsed


def parse_replay(payload: bytes) -> ReplayCommand:
    """A validated replay command, or InvalidMessageError."""
    try:
        command = ReplayCommand.model_validate(_load(payload))
    except ValidationError as exc:
        raise InvalidMessageError(_describe(exc)) from None
    problem = command.span_error()
    if problem:
        raise InvalidMessageError(problem)
    return command


def request_id_of(payload: bytes) -> str | int | None:
    """The request id of a command we refuse, when one can be read, to echo in the answer."""
    if len(payload) > MAX_PAYLOAD:
        return None
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    rid = body.get("request_id")
    echoable = (isinstance(rid, int) and not isinstance(rid, bool) and -(2**63) <= rid < 2**63) or (
        isinstance(rid, str) and 0 < len(rid) <= MAX_REQUEST_ID and rid.isprintable()
    )
    return rid if echoable else None


def result_payload(request_id: str | int | None, *, ok: bool, **fields: Any) -> bytes:  # noqa: ANN401
    """A ``cmd/result`` body: ``{"request_id", "ok", ...}``."""
    return json.dumps({"request_id": request_id, "ok": ok, **fields}).encode()
