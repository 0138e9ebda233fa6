"""Settings behaviour that golden files cannot show: secrets, units, paths, the typed result."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from drivers import registry
from gateway.settings import (
    GIB,
    MIB,
    BufferSection,
    ConfigError,
    GatewaySection,
    MqttSection,
    Settings,
    load_settings,
)

SECRET = "pa55-w0rd-do-not-log"
BASE = '[gateway]\nid = "gw-01"\nsite = "dc-east"\n'


def write_config(folder: Path, text: str) -> Path:
    path = folder / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def secret_settings(tmp_path: Path) -> Settings:
    (tmp_path / "password").write_text(SECRET + "\n", encoding="utf-8")
    (tmp_path / "password").chmod(0o600)
    text = BASE + '[mqtt]\nusername = "gw-01"\npassword_file = "password"\n'
    return load_settings(write_config(tmp_path, text))


def test_password_file_is_read_without_trailing_newline(secret_settings: Settings) -> None:
    """Secret files usually end in a newline that is not part of the password."""
    assert secret_settings.mqtt.password() == SECRET


def test_password_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """password_env names a variable, whose value is the password."""
    monkeypatch.setenv("EDGE_GATEWAY_TEST_PASSWORD", SECRET)
    text = BASE + '[mqtt]\nusername = "u"\npassword_env = "EDGE_GATEWAY_TEST_PASSWORD"\n'
    assert load_settings(write_config(tmp_path, text)).mqtt.password() == SECRET


def test_no_password_configured(tmp_path: Path) -> None:
    """Without password keys, password() is None: anonymous or certificate-only brokers."""
    assert load_settings(write_config(tmp_path, BASE)).mqtt.password() is None


def test_secret_never_leaks(secret_settings: Settings) -> None:
    """The password must not reach logs, status output or dumps in any of their usual forms."""
    renderings = [
        repr(secret_settings),
        str(secret_settings),
        repr(secret_settings.mqtt),
        str(secret_settings.mqtt),
        str(secret_settings.model_dump()),
        secret_settings.model_dump_json(),
        str(secret_settings.mqtt.model_dump()),
        secret_settings.mqtt.model_dump_json(),
        repr(vars(secret_settings.mqtt)),
    ]
    for text in renderings:
        assert SECRET not in text


def test_secret_not_in_error_messages(tmp_path: Path) -> None:
    """An invalid config with a password must not echo it in the error report."""
    (tmp_path / "password").write_text(SECRET, encoding="utf-8")
    (tmp_path / "password").chmod(0o600)
    text = BASE + '[mqtt]\nport = 0\npassword_file = "password"\n'
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path, text))
    assert SECRET not in str(caught.value)


def test_password_needs_username(tmp_path: Path) -> None:
    """MQTT only sends a password along with a user name, so a lone password is a mistake."""
    (tmp_path / "password").write_text(SECRET, encoding="utf-8")
    (tmp_path / "password").chmod(0o600)
    text = BASE + '[mqtt]\npassword_file = "password"\n'
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path, text))
    assert caught.value.errors == [
        (
            f"{tmp_path / 'gateway.toml'}:5: mqtt.password_file: needs username as well: "
            "MQTT sends a password only with a user name"
        )
    ]


def test_empty_password_file_is_an_error(tmp_path: Path) -> None:
    """An empty secret file is a provisioning mistake, better caught before connecting."""
    (tmp_path / "password").write_text("\n", encoding="utf-8")
    text = BASE + '[mqtt]\nusername = "u"\npassword_file = "password"\n'
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: .* is empty"):
        load_settings(write_config(tmp_path, text))


def test_defaults_and_derived_values(tmp_path: Path) -> None:
    """A minimal config gets documented defaults, the default topic root and buffer path."""
    config = write_config(tmp_path, BASE)
    settings = load_settings(config)
    assert settings.source_path == config
    assert settings.topic_root == "edge/dc-east/gw-01"
    assert settings.database_path == Path("/var/lib/edge-gateway/buffer.db")
    assert settings.mqtt.host == "localhost"
    assert settings.mqtt.port == 1883
    assert settings.mqtt.tls is None
    assert settings.buffer.max_bytes == GIB
    assert settings.buffer.retention == 7 * 86400
    assert settings.logging.level == "info"
    assert settings.devices == ()


def test_topic_root_override(tmp_path: Path) -> None:
    """mqtt.topic_root replaces the default edge/{site}/{id} prefix."""
    text = BASE + '[mqtt]\ntopic_root = "acme/dc-east"\n'
    assert load_settings(write_config(tmp_path, text)).topic_root == "acme/dc-east"


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    """Under systemd the working directory is /, so relative paths mean 'next to the config'."""
    (tmp_path / "ca.pem").write_text("pem", encoding="utf-8")
    text = BASE.replace('site = "dc-east"\n', 'site = "dc-east"\nstate_dir = "state"\n')
    text += '[mqtt.tls]\nca_file = "ca.pem"\n'
    settings = load_settings(write_config(tmp_path, text))
    assert settings.gateway.state_dir == tmp_path / "state"
    assert settings.database_path == tmp_path / "state" / "buffer.db"
    assert settings.mqtt.tls is not None
    assert settings.mqtt.tls.ca_file == tmp_path / "ca.pem"
    assert not (tmp_path / "state").exists()


def test_devices_use_their_driver_model(tmp_path: Path) -> None:
    """Each device is validated and returned as its driver's own config model."""
    text = BASE + '[[devices]]\nid = "s1"\ndriver = "barcode-serial"\nport = "/dev/ttyS0"\n'
    settings = load_settings(write_config(tmp_path, text))
    device = settings.devices[0]
    assert type(device) is registry.config_model("barcode-serial")
    assert settings.model_dump()["devices"][0]["port"] == "/dev/ttyS0"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (2 * MIB, 2 * MIB),
        ("512MiB", 512 * MIB),
        ("2GB", 2 * 10**9),
        ("100MB", 10**8),
        ("1GiB", GIB),
        ("1024KiB", MIB),
        ("1.5 GiB", 3 * GIB // 2),
        ("4096kb", 4096 * 1000),
    ],
)
def test_byte_sizes(raw: object, expected: int) -> None:
    """Sizes are bytes or strings with decimal or binary units."""
    assert BufferSection.model_validate({"max_bytes": raw}).max_bytes == expected


@pytest.mark.parametrize("raw", ["64KiB", 1000, "1MB", "lots", "12 parsecs", 2.5 * GIB, True])
def test_bad_byte_sizes(raw: object) -> None:
    """Below 1MiB a buffer is useless; unknown units and non-integers are refused."""
    with pytest.raises(ValidationError):
        BufferSection.model_validate({"max_bytes": raw})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (3600, 3600.0),
        (0.25, 0.25),
        ("7d", 7 * 86400.0),
        ("12h", 43200.0),
        ("30m", 1800.0),
        ("45s", 45.0),
        ("500ms", 0.5),
        ("1w", 604800.0),
    ],
)
def test_durations(raw: object, expected: float) -> None:
    """Durations are seconds or strings with one unit."""
    assert BufferSection.model_validate({"retention": raw}).retention == pytest.approx(expected)


@pytest.mark.parametrize("raw", ["7 days", "12H", "soon", "", "-5s", True])
def test_bad_durations(raw: object) -> None:
    """Anything else is refused rather than guessed at."""
    with pytest.raises(ValidationError):
        BufferSection.model_validate({"retention": raw})


def test_sections_are_frozen(tmp_path: Path) -> None:
    """Settings are shared by every task; nobody may change them under the others' feet."""
    settings = load_settings(write_config(tmp_path, BASE))
    with pytest.raises(ValidationError):
        settings.gateway.id = "other"


def test_reconnect_bounds_are_ordered() -> None:
    """A backoff whose minimum exceeds its maximum is a typo, reported on reconnect_max."""
    with pytest.raises(ValidationError) as caught:
        MqttSection(reconnect_min=60, reconnect_max=1)
    assert caught.value.errors()[0]["loc"] == ("reconnect_max",)


def test_gateway_ids_follow_device_id_rules() -> None:
    """Gateway id and site become topic levels, so they cannot hold '/' or wildcards."""
    with pytest.raises(ValidationError):
        GatewaySection(id="gw/01", site="dc-east")
    with pytest.raises(ValidationError):
        GatewaySection(id="gw-01", site="dc+east")


@pytest.mark.parametrize("name", ["missing.toml", "."])
def test_unreadable_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """A config that cannot be read gets one PATH-only line, no traceback, no line number."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_settings(name)
    [line] = caught.value.errors
    assert line.startswith(f"{name}: cannot read config: ")


def test_syntax_error_at_end_of_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tomllib reports some errors 'at end of document'; they point at the last line."""
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, BASE + 'host = "unterminated\n')
    with pytest.raises(ConfigError) as caught:
        load_settings("gateway.toml")
    assert caught.value.errors[0].startswith("gateway.toml:4: (syntax): ")


def test_config_error_is_not_a_validation_error(tmp_path: Path) -> None:
    """Callers catch ConfigError alone; pydantic's exception must never escape load_settings."""
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path, "[gateway]\nid = 5\n"))
    assert not isinstance(caught.value, ValidationError)
    assert caught.value.errors == [
        f"{tmp_path / 'gateway.toml'}:1: gateway.site: missing required key",
        f"{tmp_path / 'gateway.toml'}:2: gateway.id: expected a string, got 5",
    ]
