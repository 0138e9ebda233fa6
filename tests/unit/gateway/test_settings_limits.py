"""Values no validator foresaw, and secrets' modes (issue 18 findings 5 and 6).

A typo such as ``max_bytes = "1<400 zeros>B"`` once raised OverflowError: a traceback and exit 1
from ``check-config``, and a reloader task that died silently. Secrets: systemd's credential
modes were refused, a world-readable TLS key passed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.settings import ConfigError, load_settings
from tests.support import cli

BASE = '[gateway]\nid = "gw-01"\nsite = "dc-east"\n'
HUGE = "1" + "0" * 400


def write_config(folder: Path, text: str) -> Path:
    path = folder / "gateway.toml"
    path.write_text(BASE + text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        (f'[buffer]\nmax_bytes = "{HUGE}B"\n', 5, "buffer.max_bytes"),
        (f'[buffer]\nretention = "{HUGE}s"\n', 5, "buffer.retention"),
        ("[buffer]\nretention = 1e400\n", 5, "buffer.retention"),
        (f"[mqtt]\nkeepalive = {HUGE}\n", 5, "mqtt.keepalive"),
        (f'[mqtt]\npublish_timeout = "{HUGE}ms"\n', 5, "mqtt.publish_timeout"),
    ],
)
def test_absurd_numbers_are_config_errors_with_their_line(
    tmp_path: Path, text: str, line: int, key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write_config(tmp_path, text))
    (error,) = caught.value.errors
    assert error.startswith(f"{tmp_path / 'gateway.toml'}:{line}: {key}: "), error
    assert len(error) < 300, "the value is shown bounded"


def test_check_config_on_an_absurd_size_exits_2_without_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path, f'[buffer]\nmax_bytes = "{HUGE}B"\n')
    done = cli("check-config", "--config", str(config))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "buffer.max_bytes" in done.stdout + done.stderr


def tls_config(tmp_path: Path, key_mode: int) -> Path:
    shutil.copy(Path(__file__).parent / "testcases" / "valid" / "client.crt", tmp_path)
    key = tmp_path / "client.key"
    shutil.copy(Path(__file__).parent / "testcases" / "valid" / "client.key", key)
    key.chmod(key_mode)
    return write_config(
        tmp_path, '[mqtt]\n[mqtt.tls]\ncert_file = "client.crt"\nkey_file = "client.key"\n'
    )


def test_tls_key_readable_by_others_is_refused_like_the_password_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tls_config(tmp_path, 0o644))
    assert "mqtt.tls.key_file" in caught.value.errors[0]
    assert "chmod 600" in caught.value.errors[0]
    assert load_settings(tls_config(tmp_path, 0o600)).mqtt.tls is not None


def password_config(folder: Path, secret: Path) -> Path:
    return write_config(folder, f'[mqtt]\nusername = "gw-01"\npassword_file = "{secret}"\n')


@pytest.mark.parametrize("mode", [0o400, 0o440])
def test_systemd_credential_modes_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    """LoadCredential= files are 0400, or 0440 when systemd grants access by ACL: the directory
    is the unit's own, so both are fine there."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secret = credentials / "mqtt-password"
    secret.write_text("s3cret\n")
    secret.chmod(mode)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert load_settings(password_config(tmp_path, secret)).mqtt.password() == "s3cret"


def test_group_readable_secret_outside_the_credentials_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o440)
    with pytest.raises(ConfigError) as caught:
        load_settings(password_config(tmp_path, secret))
    assert "LoadCredential" in caught.value.errors[0]


def test_a_secret_open_to_others_is_refused_even_as_a_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o604)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(ConfigError, match="chmod 600"):
        load_settings(password_config(tmp_path, secret))
