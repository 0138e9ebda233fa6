"""``central.toml``: validated with pydantic, every error as ``PATH:LINE: key.path: message``.

The same error wording and line finding as the gateway's config (gateway/config_lines.py), so a
technician reads both the same way. See config/central.example.toml for every key and its
default.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, Strict, ValidationError

from gateway.config_lines import LineLocator, Problem, describe_errors, format_problem
from gateway.settings import ConfigError, Duration

_SECTION = ConfigDict(extra="forbid", frozen=True, strict=True)
FilePath = Annotated[Path, Strict(strict=False)]
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class CentralSection(BaseModel):
    """``[central]``: who this instance is and which stream it shares."""

    model_config = _SECTION
    instance: Name = Field(description="fixed per instance: its MQTT client id and session")
    group: Name = Field(default="central", description="shared-subscription group")
    topic_prefix: Name = Field(default="edge", description="first level of the gateways' roots")


class TlsSection(BaseModel):
    """``[mqtt.tls]``: present means TLS, with the system CAs unless ``ca_file`` is set.

    Checked again, as the gateway checks its own (readable files, a private key readable by
    this service alone), when the link is built and by ``check-config``.
    """

    model_config = _SECTION
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    insecure: bool = Field(default=False, description="skip hostname checks (testing only)")


class MqttSection(BaseModel):
    """``[mqtt]``: the broker connection and the persistent session."""

    model_config = _SECTION
    host: str = Field(default="localhost", min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = Field(default=None, min_length=1)
    password_file: FilePath | None = None
    keepalive: int = Field(default=30, ge=5, le=3600)
    session_expiry: Duration = Field(default=10.0, ge=0, le=0xFFFFFFFF)
    """Short on purpose: a dead member's session keeps taking a share until it expires
    (docs/central.md, "A member that dies for good")."""
    receive_maximum: int = Field(default=1000, ge=1, le=65535)
    timeout: Duration = Field(default=10.0, gt=0, description="CONNACK, SUBACK, PUBACK waits")
    reconnect_min: Duration = Field(default=0.2, gt=0)
    reconnect_max: Duration = Field(default=10.0, gt=0)
    tls: TlsSection | None = None


class DatabaseSection(BaseModel):
    """``[database]``: the ledger's PostgreSQL."""

    model_config = _SECTION
    dsn: str = Field(default="postgresql://localhost/edge_central", min_length=1)
    password_file: FilePath | None = None
    pool_size: int = Field(default=4, ge=2, le=100)
    retry_max: Duration = Field(default=5.0, gt=0, description="longest wait between retries")


class IngestSection(BaseModel):
    """``[ingest]``: batching and the input bounds."""

    model_config = _SECTION
    batch_max: int = Field(default=1000, ge=1, le=100_000)
    max_payload: int = Field(default=64 * 1024, ge=1024, le=64 * 1024)
    quarantine_bytes: int = Field(default=4096, ge=0, le=1024 * 1024)


class ConfirmSection(BaseModel):
    """``[confirm]``: verdicts published after commit."""

    model_config = _SECTION
    enabled: bool = True
    rule: str = Field(default="accept-all", min_length=1, description="accept-all, sku, or a:b")
    batch_max: int = Field(default=500, ge=1, le=500)


class ReplaySection(BaseModel):
    """``[replay]``: asking gateways for gaps, by one instance of the group at a time."""

    model_config = _SECTION
    enabled: bool = True
    replay_after: Duration = Field(default=5.0, gt=0)
    interval: Duration = Field(default=1.0, gt=0, description="how often gaps are looked for")
    min_gap: Duration = Field(default=10.0, gt=0, description="between requests per device")
    max_ranges: int = Field(default=10, ge=1, le=1000)
    lock_key: int = Field(default=0x6564676563, description="PostgreSQL advisory lock key")


class ParitySection(BaseModel):
    """``[parity]``: when ``edge-central parity`` exits non-zero."""

    model_config = _SECTION
    threshold: Duration = Field(default=300.0, ge=0)


class MetricsSection(BaseModel):
    """``[metrics]``: Prometheus ``/metrics``."""

    model_config = _SECTION
    listen: str = Field(default="", pattern=r"^$|^.*:[0-9]{1,5}$", description="host:port")


class LoggingSection(BaseModel):
    """``[logging]``."""

    model_config = _SECTION
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class CentralSettings(BaseModel):
    """The whole file."""

    model_config = _SECTION
    central: CentralSection
    mqtt: MqttSection = MqttSection()
    database: DatabaseSection = DatabaseSection()
    ingest: IngestSection = IngestSection()
    confirm: ConfirmSection = ConfirmSection()
    replay: ReplaySection = ReplaySection()
    parity: ParitySection = ParitySection()
    metrics: MetricsSection = MetricsSection()
    logging: LoggingSection = LoggingSection()

    def mqtt_password(self) -> SecretStr | None:
        """The broker password from its file, if one is configured."""
        path = self.mqtt.password_file
        return SecretStr(path.read_text().strip()) if path else None

    def database_dsn(self) -> str:
        """The DSN; a password file becomes PGPASSWORD-free ``password=`` at connect time."""
        return self.database.dsn

    def database_password(self) -> str | None:
        """The database password from its file, or ``$PGPASSWORD``, if any."""
        if self.database.password_file:
            return self.database.password_file.read_text().strip()
        return os.environ.get("PGPASSWORD")


def load_central_settings(path: Path | str) -> CentralSettings:
    """Read and validate; raise ``ConfigError`` listing every problem with its line."""
    shown, source = str(path), Path(path)
    try:
        text = source.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError([f"{shown}: cannot read config: {reason}"]) from None
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{shown}:1: (syntax): {exc}"]) from None
    mqtt = data.get("mqtt")
    tables = [data.get("database"), mqtt, mqtt.get("tls") if isinstance(mqtt, dict) else None]
    for body in tables:  # file paths are relative to the config file
        for key in ("password_file", "ca_file", "cert_file", "key_file"):
            if isinstance(body, dict) and isinstance(body.get(key), str):
                body[key] = str((source.parent / body[key]).resolve())
    problems: list[Problem] = []
    try:
        settings = CentralSettings.model_validate(data)
    except ValidationError as exc:
        problems = describe_errors(exc, CentralSettings)
    if problems:
        locator = LineLocator(text)
        located = sorted(((locator.line_of(loc), loc, msg) for loc, msg in problems))
        raise ConfigError([format_problem(shown, *item) for item in located])
    return settings
