"""Finds the line a TOML key is defined on, so config errors can say ``PATH:LINE: key.path``.

``tomllib`` returns plain dicts with no positions, and a site technician fixing a config over SSH
needs the line. This is not a TOML parser: it runs only on text ``tomllib`` already accepted and
records where each key path starts. It understands what would otherwise shift its count or its
paths: comments, quoted and dotted keys, multi-line strings and arrays, inline tables and
``[[array]]`` tables (whose entries become integer path items, as in pydantic error locations).

It also words the errors: pydantic's messages are written for programmers ("Input should be a
valid integer"), so each error type is translated into what a technician should change.
"""

from __future__ import annotations

import bisect
import json
import re
import tomllib
from typing import TYPE_CHECKING, get_args

from pydantic import BaseModel

from drivers.base import DEVICE_ID_PATTERN

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from pydantic import ValidationError
    from pydantic_core import ErrorDetails

KeyPath = tuple[str | int, ...]

_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SCALAR_END = frozenset(",]}\n#")


class LineLocator:
    """Maps key paths such as ``("devices", 1, "port")`` to 1-based line numbers."""

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        _Scanner(text, self._lines).scan()

    def defined_at(self, path: Sequence[str | int]) -> int | None:
        """Return the line where exactly this path is defined, if it is."""
        return self._lines.get(tuple(path))

    def line_of(self, path: Sequence[str | int]) -> int:
        """Return the line of ``path``, else of its nearest defined parent, else 1.

        A missing key has no line of its own; its table's header is where the fix goes.
        """
        key = tuple(path)
        while key:
            if key in self._lines:
                return self._lines[key]
            key = key[:-1]
        return 1


class _Scanner:
    """A single pass over the text; positions are indexes, turned into lines only when recorded."""

    def __init__(self, text: str, out: dict[KeyPath, int]) -> None:
        self._s = text
        self._i = 0
        self._out = out
        self._line_starts = [0] + [n + 1 for n, ch in enumerate(text) if ch == "\n"]
        self._array_tables: dict[KeyPath, int] = {}

    def scan(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip(newlines=True)
            if self._i >= len(self._s):
                return
            if self._peek() == "[":
                table = self._header()
            else:
                self._keyval(table)

    def _peek(self, size: int = 1) -> str:
        return self._s[self._i : self._i + size]

    def _line(self) -> int:
        return bisect.bisect_right(self._line_starts, self._i)

    def _record(self, path: KeyPath, line: int, *, overwrite: bool = False) -> None:
        for end in range(1, len(path)):
            self._out.setdefault(path[:end], line)
        if overwrite:
            self._out[path] = line
        else:
            self._out.setdefault(path, line)

    def _skip(self, *, newlines: bool) -> None:
        blanks = " \t\r\n" if newlines else " \t"
        while self._i < len(self._s):
            ch = self._s[self._i]
            if ch == "#":
                end = self._s.find("\n", self._i)
                self._i = len(self._s) if end < 0 else end
            elif ch in blanks:
                self._i += 1
            else:
                return

    def _resolve(self, parts: Sequence[str]) -> KeyPath:
        """Resolve a header's dotted key, adding each array table's current index."""
        path: list[str | int] = []
        for part in parts:
            path.append(part)
            count = self._array_tables.get(tuple(path))
            if count is not None:
                path.append(count - 1)
        return tuple(path)

    def _header(self) -> KeyPath:
        line = self._line()
        is_array = self._peek(2) == "[["
        self._i += 2 if is_array else 1
        parts = self._key()
        self._i += 2 if is_array else 1
        if not is_array:
            table = self._resolve(parts)
            self._record(table, line, overwrite=True)
            return table
        array = (*self._resolve(parts[:-1]), parts[-1])
        count = self._array_tables.get(array, 0)
        self._array_tables[array] = count + 1
        table = (*array, count)
        self._record(table, line, overwrite=True)
        return table

    def _key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self._skip(newlines=False)
            start = self._i
            quote = self._peek()
            if quote in {'"', "'"}:
                self._string()
                parts.append(tomllib.loads(f"k = {self._s[start : self._i]}")["k"])
            else:
                while self._i < len(self._s) and self._s[self._i] in _BARE_KEY_CHARS:
                    self._i += 1
                parts.append(self._s[start : self._i])
            self._skip(newlines=False)
            if self._peek() != ".":
                return parts
            self._i += 1

    def _keyval(self, table: KeyPath) -> None:
        line = self._line()
        path = (*table, *self._key())
        self._i += 1  # the "=", after _key skipped the blanks before it
        self._skip(newlines=False)
        self._record(path, line)
        self._value(path)

    def _value(self, path: KeyPath) -> None:
        ch = self._peek()
        if ch in {'"', "'"}:
            self._string()
        elif ch == "[":
            self._array(path)
        elif ch == "{":
            self._inline_table(path)
        else:
            while self._i < len(self._s) and self._s[self._i] not in _SCALAR_END:
                self._i += 1

    def _array(self, path: KeyPath) -> None:
        self._i += 1
        index = 0
        while True:
            self._skip(newlines=True)
            if self._peek() in {"]", ""}:
                self._i += 1
                return
            item = (*path, index)
            self._record(item, self._line())
            self._value(item)
            index += 1
            self._skip(newlines=True)
            if self._peek() == ",":
                self._i += 1

    def _inline_table(self, path: KeyPath) -> None:
        self._i += 1
        while True:
            self._skip(newlines=True)
            if self._peek() in {"}", ""}:
                self._i += 1
                return
            self._keyval(path)
            self._skip(newlines=True)
            if self._peek() == ",":
                self._i += 1

    def _string(self) -> None:
        quote = self._peek()
        delimiter = quote * 3 if self._peek(3) == quote * 3 else quote
        self._i += len(delimiter)
        escapes = quote == '"'
        while self._i < len(self._s):
            if escapes and self._s[self._i] == "\\":
                self._i += 2
            elif self._s.startswith(delimiter, self._i):
                self._i += len(delimiter)
                # A multi-line string may end with up to two quotes of its own before the closer.
                extra = 0
                while len(delimiter) == 3 and extra < 2 and self._peek() == quote:
                    self._i += 1
                    extra += 1
                return
            else:
                self._i += 1


Problem = tuple[KeyPath, str]
"""A key path (relative to the file's root) and a human message, before it gets its line."""


_BOUNDS = {
    "greater_than": ("gt", "must be greater than"),
    "greater_than_equal": ("ge", "must be at least"),
    "less_than": ("lt", "must be less than"),
    "less_than_equal": ("le", "must be at most"),
}
_EXPECTED = {
    kind: expected
    for expected, kinds in [
        ("an integer", "int_type int_parsing int_from_float"),
        ("a number", "float_type float_parsing"),
        ("a finite number", "finite_number"),
        ("true or false", "bool_type bool_parsing"),
        ("a string", "string_type"),
        ("a path (a string)", "path_type"),
        ("a table", "model_type model_attributes_type dict_type"),
        ("an array", "list_type tuple_type set_type"),
    ]
    for kind in kinds.split()
}
_PATTERN_HINTS = {
    DEVICE_ID_PATTERN: (
        'must be 1-64 letters, digits, "_", "." or "-", starting with a letter or digit'
    ),
}


def describe_errors(
    exc: ValidationError, model: type[BaseModel], *, prefix: KeyPath = ()
) -> list[Problem]:
    """Translate pydantic's errors into problems a site technician can act on."""
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        loc: KeyPath = (*prefix, *error["loc"])
        problems.append((loc, _message(error, model)))
    return problems


def _message(error: ErrorDetails, model: type[BaseModel]) -> str:  # noqa: PLR0911 - one per family
    kind, ctx = error["type"], error.get("ctx", {})
    got = f", got {show_value(error['input'])}"
    if kind == "missing":
        return "missing required key"
    if kind == "extra_forbidden":
        owner = _model_at(model, error["loc"][:-1])
        return (
            f"unknown key (allowed: {', '.join(sorted(owner.model_fields))})"
            if owner
            else "unknown key"
        )
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}{got}"
    if kind == "literal_error":
        choices = re.findall(r"'((?:[^'\\]|\\.)*)'", str(ctx.get("expected", "")))
        return f"expected one of: {', '.join(choices)}{got}"
    if kind in _BOUNDS:
        bound, text = _BOUNDS[kind]
        limit = ctx[bound]
        return f"{text} {int(limit) if limit == int(limit) else limit}{got}"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"too short{got}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters{got}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        return f"{_PATTERN_HINTS.get(pattern, f'must match {pattern}')}{got}"
    if kind in {"value_error", "assertion_error"} and "error" in ctx:
        return str(ctx["error"])
    return f"{error['msg']}{got}"


def _model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """Find the model owning the keys at ``loc``, to list them when a key is unknown."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        if current is None or part not in current.model_fields:
            return None
        current = _inner_model(current.model_fields[part].annotation)
    return current


def _inner_model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def show_value(value: object) -> str:
    """Render a value as the technician wrote it in TOML, so it can be found in the file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = json.dumps(value, ensure_ascii=False)
        return shown if len(shown) <= 80 else f"{shown[:60]}... ({len(value)} characters)"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    shown = str(value)
    return shown if len(shown) <= 80 else f"{shown[:60]}... ({len(shown)} digits)"


def format_key_path(path: Sequence[str | int]) -> str:
    """``("devices", 0, "port")`` -> ``devices[0].port``; odd keys are quoted as in TOML."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            bare = bool(part) and set(part) <= _BARE_KEY_CHARS
            text += ("." if text else "") + (part if bare else json.dumps(part, ensure_ascii=False))
    return text


def format_problem(
    shown_path: str,
    line: int,
    loc: KeyPath,
    message: str,
    device_ids: Mapping[int, str] | None = None,
) -> str:
    """One error line: ``PATH:LINE: key.path: message``.

    A device's key names the device too when its id is known: ``devices[0] (id "dock-1").port``
    (issue 14), so an error in a long file points at the right scanner. Control characters in
    the message (a value quoted back, an OS error naming a path) are escaped: one problem must
    stay one line, or tools and eyes reading the output lose track.
    """
    key = format_key_path(loc)
    if device_ids and len(loc) >= 2 and loc[0] == "devices" and isinstance(loc[1], int):
        device_id = device_ids.get(loc[1])
        if device_id is not None:
            rest = format_key_path(loc[2:])
            shown_id = json.dumps(device_id[:64], ensure_ascii=False)
            key = f"devices[{loc[1]}] (id {shown_id})" + (
                "" if not rest else rest if rest.startswith("[") else f".{rest}"
            )
    return f"{shown_path}:{line}: {_CONTROL.sub(_escape, key)}: {_CONTROL.sub(_escape, message)}"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _escape(match: re.Match[str]) -> str:
    return json.dumps(match[0])[1:-1]
