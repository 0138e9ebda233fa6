"""The key-path-to-line locator and the error-line formatting used by config errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.config_lines import LineLocator, format_key_path, format_problem, show_value


def locate(text: str) -> LineLocator:
    tomllib.loads(text)  # the locator only ever sees text tomllib accepted
    return LineLocator(text)


def test_tables_and_keys() -> None:
    """Plain headers and keys land on their own lines; comments and blanks do not count."""
    locator = locate('# top\n\n[gateway]\nid = "gw"  # [not.a.table]\n\n[mqtt]\nport = 1\n')
    assert locator.defined_at(["gateway"]) == 3
    assert locator.defined_at(["gateway", "id"]) == 4
    assert locator.defined_at(["mqtt"]) == 6
    assert locator.defined_at(["mqtt", "port"]) == 7
    assert locator.defined_at(["not"]) is None


def test_array_tables_are_counted() -> None:
    """Each ``[[devices]]`` header opens the next index, as in pydantic's error locations."""
    text = '[[devices]]\nid = "a"\n\n[[devices]]\nid = "b"\n[devices.extra]\nx = 1\n'
    locator = locate(text)
    assert locator.defined_at(["devices", 0]) == 1
    assert locator.defined_at(["devices", 1, "id"]) == 5
    assert locator.defined_at(["devices", 1, "extra", "x"]) == 7


def test_nested_array_tables_restart_per_parent() -> None:
    """A nested array of tables counts within its parent entry, not across the file."""
    text = "[[a]]\n[[a.b]]\nx = 1\n[[a]]\n[[a.b]]\nx = 2\n[[a.b]]\nx = 3\n"
    locator = locate(text)
    assert locator.defined_at(["a", 0, "b", 0, "x"]) == 3
    assert locator.defined_at(["a", 1, "b", 0, "x"]) == 6
    assert locator.defined_at(["a", 1, "b", 1, "x"]) == 8


def test_inline_tables_and_arrays() -> None:
    """Keys inside inline tables and arrays map to the line they are written on."""
    text = (
        "[mqtt]\n"
        'tls = { ca_file = "ca.pem", "odd key" = { deep = 1 } }\n'
        "points = [\n"
        "  { name = 'a' },  # first\n"
        "  { name = 'b' },\n"
        "]\n"
    )
    locator = locate(text)
    assert locator.defined_at(["mqtt", "tls", "ca_file"]) == 2
    assert locator.defined_at(["mqtt", "tls", "odd key", "deep"]) == 2
    assert locator.defined_at(["mqtt", "points"]) == 3
    assert locator.defined_at(["mqtt", "points", 1, "name"]) == 5


def test_multiline_strings_do_not_shift_lines() -> None:
    """Headers, quotes and '=' inside multi-line strings are text, not structure."""
    text = (
        '[a]\ns = """\n[b]\nx = "y"\n\\""" still inside\n"""\n'
        "t = '''\n[[c]]\n'''\n"
        'u = """ends with quotes"""""\n'
        "[d]\nk = 1\n"
    )
    locator = locate(text)
    assert locator.defined_at(["b"]) is None
    assert locator.defined_at(["c"]) is None
    assert locator.defined_at(["a", "t"]) == 7
    assert locator.defined_at(["a", "u"]) == 10
    assert locator.defined_at(["d", "k"]) == 12


def test_quoted_and_dotted_keys() -> None:
    """Quoted keys may contain dots; dotted keys create their parents on the same line."""
    text = '[x]\n"a.b" = 1\n\'lit\' = 2\nc . d."e f" = 3\n"esc\\"q" = 4\n'
    locator = locate(text)
    assert locator.defined_at(["x", "a.b"]) == 2
    assert locator.defined_at(["x", "lit"]) == 3
    assert locator.defined_at(["x", "c"]) == 4
    assert locator.defined_at(["x", "c", "d", "e f"]) == 4
    assert locator.defined_at(["x", 'esc"q']) == 5


def test_strings_with_comment_and_bracket_characters() -> None:
    """A '#' or ']' inside a string neither starts a comment nor ends an array."""
    text = 'a = "x # y"\nb = ["]", \'#\', "\\""]\nc = 1\n'
    locator = locate(text)
    assert locator.defined_at(["b", 2]) == 2
    assert locator.defined_at(["c"]) == 3


def test_crlf_line_endings() -> None:
    """Files edited on Windows still get the right line numbers."""
    locator = locate('[a]\r\nx = 1\r\n\r\n[b]\r\ny = "z"\r\n')
    assert locator.defined_at(["b", "y"]) == 5


def test_line_of_falls_back_to_the_nearest_parent() -> None:
    """A missing key points at its table's header, an absent table at line 1."""
    locator = locate('\n[gateway]\nsite = "x"\n\n[[devices]]\nid = "a"\n')
    assert locator.line_of(["gateway", "id"]) == 2
    assert locator.line_of(["devices", 0, "port"]) == 5
    assert locator.line_of(["mqtt", "host"]) == 1


@pytest.mark.parametrize(
    ("path", "text"),
    [
        (("devices", 0, "port"), "devices[0].port"),
        (("mqtt", "tls", "ca_file"), "mqtt.tls.ca_file"),
        (("logging", "odd.key"), 'logging."odd.key"'),
        (("a", "b", 2), "a.b[2]"),
    ],
)
def test_format_key_path(path: tuple[str | int, ...], text: str) -> None:
    """Key paths read like TOML, with array indexes in brackets."""
    assert format_key_path(path) == text


def test_format_problem() -> None:
    """One line per problem, in the PATH:LINE: key.path: message shape editors understand."""
    line = format_problem("config.toml", 7, ("devices", 1, "baudrate"), "expected an integer")
    assert line == "config.toml:7: devices[1].baudrate: expected an integer"


@pytest.mark.parametrize(
    ("value", "text"),
    [("fast", '"fast"'), (True, "true"), (5, "5"), ({"a": 1}, "a table"), ([1], "an array")],
)
def test_show_value(value: object, text: str) -> None:
    """Values are shown as written in TOML so the technician can search for them."""
    assert show_value(value) == text


def _key_paths(value: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    paths: list[tuple[str | int, ...]] = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            paths += _key_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths += _key_paths(item, (*prefix, index))
    return paths


def _is_toml(path: Path) -> bool:
    try:
        tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError:
        return False
    return True


CONFIGS = [
    *sorted(Path(__file__).parent.glob("testcases/*/config.toml")),
    Path(__file__).parents[3] / "config" / "gateway.example.toml",
]
VALID_TOML = [path for path in CONFIGS if _is_toml(path)]


@pytest.mark.parametrize("path", VALID_TOML, ids=lambda path: path.parent.name)
def test_every_key_tomllib_sees_is_located(path: Path) -> None:
    """Across real config files (valid TOML only, as in use), each key's line names that key."""
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    lines = text.splitlines()
    locator = LineLocator(text)
    for key_path in _key_paths(data):
        line = locator.defined_at(key_path)
        assert line is not None, key_path
        last = key_path[-1]
        if isinstance(last, str):
            assert last in lines[line - 1], (key_path, line)
