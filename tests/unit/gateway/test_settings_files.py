"""Golden config cases and the shipped example config, checked against the settings models."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel, TypeAdapter

from drivers import registry
from gateway.settings import (
    BufferSection,
    ConfigError,
    GatewaySection,
    LoggingSection,
    MqttSection,
    TlsSection,
    load_settings,
)

CASES = Path(__file__).parent / "testcases"
EXAMPLE = Path(__file__).parents[3] / "config" / "gateway.example.toml"
CASE_NAMES = sorted(path.name for path in CASES.iterdir() if (path / "config.toml").is_file())

SECTION_MODELS: dict[str, type[BaseModel]] = {
    "gateway": GatewaySection,
    "mqtt": MqttSection,
    "mqtt.tls": TlsSection,
    "buffer": BufferSection,
    "logging": LoggingSection,
}
HEADER = re.compile(r"#?\s*\[\[?([A-Za-z0-9_.-]+)\]\]?\s*")
DEFAULT_LINE = re.compile(r"# ([A-Za-z_][A-Za-z0-9_]*) = (.+)")


def test_there_are_enough_golden_cases() -> None:
    """The suite promises at least 14 error cases plus a valid one; guard against lost folders."""
    assert len(CASE_NAMES) >= 15
    assert "valid" in CASE_NAMES


@pytest.mark.parametrize("case", CASE_NAMES)
def test_golden_case(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each case's config yields exactly its expected.err lines (none for a valid config)."""
    monkeypatch.chdir(CASES / case)
    for secret in [*(CASES / case).glob("secret*"), *(CASES / case).glob("*.key")]:
        secret.chmod(0o600)  # git keeps no modes but the exec bit; secrets must be 0600
    monkeypatch.delenv("EDGE_GATEWAY_TEST_UNSET_PASSWORD", raising=False)
    expected = (CASES / case / "expected.err").read_text(encoding="utf-8").splitlines()
    if not expected:
        load_settings("config.toml")
        return
    with pytest.raises(ConfigError) as caught:
        load_settings("config.toml")
    assert caught.value.errors == expected
    assert str(caught.value) == "\n".join(expected)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_golden_errors_are_sorted_by_line(case: str) -> None:
    """Expected files list errors in file order, as a technician reads top to bottom."""
    lines = (CASES / case / "expected.err").read_text(encoding="utf-8").splitlines()
    numbers = [int(line.split(":")[1]) for line in lines]
    assert numbers == sorted(numbers)


def test_example_config_loads_cleanly() -> None:
    """The example shipped to technicians is itself a valid config, devices included."""
    settings = load_settings(EXAMPLE)
    assert settings.gateway.id == "gw-01"
    assert [device.id for device in settings.devices] == ["dock-3-scanner"]
    device = settings.devices[0]
    assert isinstance(device, registry.config_model("barcode-serial"))
    assert device.model_dump()["baudrate"] == 9600
    assert device.confirm == "delivered"


def _documented(text: str) -> dict[str, dict[str, str]]:
    """Map each (possibly commented-out) section to its ``# key = value`` lines."""
    sections: dict[str, dict[str, str]] = {}
    current = ""
    for line in text.splitlines():
        if header := HEADER.fullmatch(line):
            current = header[1]
            sections.setdefault(current, {})
        elif default := DEFAULT_LINE.fullmatch(line):
            sections.setdefault(current, {})[default[1]] = default[2]
    return sections


def _models() -> dict[str, type[BaseModel]]:
    return {**SECTION_MODELS, "devices": registry.config_model("barcode-serial")}


def test_example_documents_every_section_key() -> None:
    """Every key of every section appears in the example, set or as a ``# key = ...`` line."""
    text = EXAMPLE.read_text(encoding="utf-8")
    documented = _documented(text)
    data = tomllib.loads(text)
    for section, model in SECTION_MODELS.items():
        table = data
        for part in section.split("."):
            table = table.get(part, {})
        subsections = {
            name.rsplit(".", 1)[1] for name in documented if name.startswith(f"{section}.")
        }
        given = set(documented.get(section, {})) | set(table) | subsections
        assert given == set(model.model_fields), section


def test_example_defaults_match_model_defaults() -> None:
    """A ``# key = value`` line shows the real default, unless the key has none (an example)."""
    documented = _documented(EXAMPLE.read_text(encoding="utf-8"))
    checked: set[tuple[str, str]] = set()
    for section, model in _models().items():
        for key, raw in documented.get(section, {}).items():
            field = model.model_fields[key]
            value = tomllib.loads(f"v = {raw}")["v"]
            if field.is_required() or field.default is None:
                continue
            parsed = TypeAdapter(field.rebuild_annotation()).validate_python(value)
            assert parsed == field.default, f"[{section}] {key} = {raw}"
            checked.add((section, key))
    with_defaults = {
        (section, key)
        for section, model in SECTION_MODELS.items()
        for key, field in model.model_fields.items()
        if not field.is_required() and field.default is not None
    }
    assert with_defaults <= checked
