"""Config loading on random TOML-ish text: every outcome is a Settings or a ConfigError whose
lines read ``PATH:LINE: key.path: message`` (or ``PATH: cannot read config``), never a crash."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.settings import ConfigError, Settings, load_settings
from tests.fuzz.budget import FUZZ

ERROR_LINE = re.compile(
    r"^(?P<path>[^\n]+?):(?P<line>\d+): [^\n]+$|^[^\n]+: cannot read config: .+$"
)

KEYS = {
    "gateway": ["id", "site", "state_dir", "shutdown_timeout", "bogus"],
    "mqtt": [
        "host",
        "port",
        "client_id",
        "username",
        "password_file",
        "password_env",
        "keepalive",
        "topic_root",
        "max_inflight",
        "publish_timeout",
        "reconnect_min",
        "reconnect_max",
        "checkpoint_interval",
        "tls",
    ],
    "buffer": ["max_bytes", "retention", "batch_max"],
    "logging": ["level", "format"],
    "devices": ["id", "driver", "port", "baudrate", "confirm", "host", "unit", "points", "zones"],
    "bogus": ["x"],
}
VALUES = st.one_of(
    st.integers(-(2**65), 2**65),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=20),
    st.sampled_from(
        [
            "gw-01",
            "dc-east",
            "1MiB",
            "512 MiB",
            "7d",
            "30s",
            "-1s",
            "barcode-serial",
            "modbus",
            "rfid-llrp",
            "stored",
            "delivered",
            "accepted",
            "edge/+/#",
            "/dev/ttyUSB0",
            "json",
        ]
    ),
)


def toml_value(value: Any) -> str:
    """A TOML literal for a scalar (floats keep inf/nan spellings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value))
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


@st.composite
def structured(draw: st.DrawFn) -> str:
    """Plausible configs: known sections and keys with random values, some devices."""
    lines: list[str] = []
    for section in draw(st.lists(st.sampled_from(sorted(KEYS)), unique=True, max_size=6)):
        header = "[[devices]]" if section == "devices" else f"[{section}]"
        for _ in range(draw(st.integers(1, 2)) if section == "devices" else 1):
            lines.append(header)
            keys = draw(st.lists(st.sampled_from(KEYS[section]), unique=True, max_size=6))
            lines.extend(f"{key} = {toml_value(draw(VALUES))}" for key in keys)
    return "\n".join(lines) + "\n"


TOKENS = st.sampled_from(
    [
        "[",
        "]",
        "[[",
        "]]",
        "=",
        '"',
        "'",
        "\n",
        " ",
        "{",
        "}",
        ",",
        ".",
        "#",
        "gateway",
        "mqtt",
        "devices",
        "id",
        "tls",
        "1",
        "true",
        '"""',
        "\\u0000",
        "\t",
        "\r",
    ]
)
RAW = st.one_of(st.text(max_size=200), st.lists(TOKENS, max_size=60).map("".join))


@FUZZ
@given(text=st.one_of(structured(), RAW), as_bytes=st.binary(max_size=40))
# Found by the 100k run: an OS error quoting a path with a newline split one problem in two lines.
@example(text='[mqtt]\nhost = 0\nport = 0\npassword_file = "\\n"\n', as_bytes=b"")
def test_config_loader_reports_every_problem_as_a_located_line(text: str, as_bytes: bytes) -> None:
    """Random text (and a few raw bytes): Settings, or ConfigError lines that all point at the
    file and a line number inside it; no other exception type."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "gateway.toml"
        path.write_bytes(text.encode("utf-8", "surrogatepass") + (as_bytes if text == "" else b""))
        errors: list[str] = []
        try:
            settings = load_settings(path)
        except ConfigError as exc:
            errors = exc.errors or ["(ConfigError without lines)"]
        if errors:
            lines = max(1, path.read_bytes().count(b"\n") + 1)
            for line in errors:
                match = ERROR_LINE.match(line)
                assert match, line
                if match["line"] is not None:
                    assert match["path"] == str(path)
                    assert 1 <= int(match["line"]) <= lines, line
            return
    assert isinstance(settings, Settings)
    assert settings.gateway.id and settings.gateway.site
