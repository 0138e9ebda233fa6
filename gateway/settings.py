"""The gateway's config file: its schema, and a loader that reports every mistake at once.

A site technician edits the TOML over SSH and runs ``check-config``; one round trip per typo is
too slow, so ``load_settings`` validates every section and device and raises a single
``ConfigError`` whose lines read ``PATH:LINE: key.path: message``. Relative paths in the file are
taken relative to the file's own folder, because the daemon's working directory under systemd is
``/``, not where the technician was standing.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    SerializeAsAny,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from drivers import registry
from drivers.base import DEVICE_ID_PATTERN, DeviceConfig
from gateway.config_lines import (
    KeyPath,
    LineLocator,
    Problem,
    describe_errors,
    format_problem,
    show_value,
)
from gateway.credentials import outside_service

MIB = 2**20
GIB = 2**30
_SIZE_UNITS: dict[str, float] = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_AMOUNT_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


_LARGEST_AMOUNT = 2.0**62
"""Beyond any sane size or duration; also keeps ``round()`` and timers away from infinity."""


def _amount(value: str, units: dict[str, float], *, fold_case: bool) -> float | None:
    """The number a ``512MiB``/``30s``-style string stands for; None if it is not one.

    A number too large to be meant (``"1<400 zeros>B"`` is infinity as a float) is a ValueError,
    reported as a config error with its line, never an OverflowError traceback.
    """
    match = _AMOUNT_RE.fullmatch(value)
    if match is None:
        return None
    unit = units.get(match[2].lower() if fold_case else match[2])
    if unit is None:
        return None
    amount = float(match[1]) * unit
    if not math.isfinite(amount) or amount > _LARGEST_AMOUNT:
        raise ValueError(f"{show_value(value)} is far too large")
    return amount


def _parse_size(value: object) -> object:
    """Accept ``512MiB``-style strings: nobody should have to count the zeros of a byte cap."""
    if not isinstance(value, str):
        return value
    amount = _amount(value, _SIZE_UNITS, fold_case=True)
    if amount is None:
        raise ValueError(
            f'expected bytes or a size like "512MiB" or "2GB", got {show_value(value)}'
        )
    return round(amount)


def _at_least_one_mib(value: int) -> int:
    if value < MIB:
        raise ValueError(f'must be at least "1MiB" ({MIB} bytes), got {value} bytes')
    return value


def _parse_duration(value: object) -> object:
    """Accept ``7d``/``500ms``-style strings as well as plain seconds."""
    if not isinstance(value, str):
        return value
    amount = _amount(value, _DURATION_UNITS, fold_case=False)
    if amount is None:
        units = "/".join(_DURATION_UNITS)
        raise ValueError(
            f'expected seconds or a duration like "30s" ({units}), got {show_value(value)}'
        )
    return amount


def _against_config_dir(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("config_dir")
    return Path(base) / value if isinstance(base, Path) else value


def _readable(value: Path) -> Path:
    """The file opens; a systemd credential seen from a shell: its ``LoadCredential=`` source."""
    source, note = secret_source(value)
    try:
        with source.open("rb"):
            pass
    except OSError as exc:
        hint = f" ({note}; run as root to read it)" if note else ""
        raise ValueError(f'cannot read "{source}": {exc.strerror or exc}{hint}') from None
    return value


def _is_systemd_credential(path: Path) -> bool:
    """A file systemd handed to this service (``LoadCredential=``): only the unit can read it.

    systemd shows such files as 0400, or 0440 when it grants access with an ACL; the directory
    is private to the unit, so group read there does not widen who can read the secret.
    """
    roots = [Path("/run/credentials")]
    if os.environ.get("CREDENTIALS_DIRECTORY"):
        roots.append(Path(os.environ["CREDENTIALS_DIRECTORY"]))
    resolved = path.resolve()
    return any(resolved.is_relative_to(root.resolve()) for root in roots)


def _check_private(path: Path) -> None:
    """A secret (broker password, TLS private key) must be readable by this service alone.

    Refused: anything for others, group write, and group read outside systemd's credentials
    directory (hand the file over with ``LoadCredential=`` instead of widening its mode).
    """
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o007 or mode & 0o020:
        raise ValueError(
            f'"{path}" is open to others or writable by its group (mode {mode:o}); chmod 600 it'
        )
    if mode & 0o040 and not _is_systemd_credential(path):
        raise ValueError(
            f'"{path}" is readable by its group (mode {mode:o}); chmod 600 it, owned by the'
            " service user, or pass it with systemd LoadCredential= (see systemd/README.md)"
        )


def secret_source(path: Path) -> tuple[Path, str]:
    """The file a secret is read from, and a note saying why when it is not ``path``.

    A systemd credential path read from a shell is not there: its ``LoadCredential=`` source
    is read instead (gateway/credentials.py), so ``check-config`` checks the file the service
    will get and ``replay`` can run as root.
    """
    credential = outside_service(path)
    if credential is None:
        return path, ""
    if credential.source is None:
        raise ValueError(
            f'"{path}" is a {credential.describe()}: only the service gets it; name its source in'
            f" the unit (LoadCredential={credential.name}:/etc/edge-gateway/{credential.name})"
        )
    return credential.source, credential.describe()


def _read_secret(path: Path) -> str:
    source, note = secret_source(path)
    hint = f" ({note}; run as root to read it)" if note else ""
    try:
        secret = source.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ValueError(f'cannot read "{source}": {reason}{hint}') from None
    if not secret:
        raise ValueError(f'"{source}" is empty' + (f" ({note})" if note else ""))
    _check_private(source)
    return secret


def _secrets_wanted(info: ValidationInfo) -> bool:
    """False for ``status``: it needs no password, and must work where none can be read."""
    return bool((info.context or {}).get("secrets", True))


def _private_key(value: Path | None) -> Path | None:
    if value is not None:
        _check_private(secret_source(value)[0])
    return value


ByteSize = Annotated[int, BeforeValidator(_parse_size), AfterValidator(_at_least_one_mib)]


def _finite(value: float) -> float:
    if not math.isfinite(value) or abs(value) > _LARGEST_AMOUNT:
        raise ValueError(f"must be a finite number of seconds, got {show_value(value)}")
    return value


Duration = Annotated[float, BeforeValidator(_parse_duration), AfterValidator(_finite)]
ConfigPath = Annotated[Path, Strict(strict=False), AfterValidator(_against_config_dir)]
ReadableFile = Annotated[ConfigPath, AfterValidator(_readable)]
_SECTION = ConfigDict(extra="forbid", frozen=True, strict=True)


class GatewaySection(BaseModel):
    """``[gateway]``: who this box is; its id and site become MQTT topic levels."""

    model_config = _SECTION

    id: str = Field(pattern=DEVICE_ID_PATTERN, description="gateway id, unique within its site")
    site: str = Field(pattern=DEVICE_ID_PATTERN, description="site (warehouse) name")
    state_dir: ConfigPath = Field(
        default=Path("/var/lib/edge-gateway"), description="folder holding the SQLite buffer"
    )
    shutdown_timeout: Duration = Field(
        default=5.0, gt=0, le=300, description="seconds to drain and stop before giving up"
    )


class TlsSection(BaseModel):
    """``[mqtt.tls]``: present means TLS is on, with the system CAs unless ``ca_file`` is set."""

    model_config = _SECTION

    ca_file: ReadableFile | None = Field(default=None, description="CA bundle (PEM)")
    cert_file: ReadableFile | None = Field(default=None, description="client certificate (PEM)")
    key_file: Annotated[ReadableFile | None, AfterValidator(_private_key)] = Field(
        default=None,
        validate_default=True,
        description="client private key (PEM), readable by this service alone",
    )
    insecure: bool = Field(default=False, description="skip hostname checks (testing only)")

    @field_validator("key_file")
    @classmethod
    def _client_cert_pair(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "cert_file" not in info.data:  # cert_file itself was invalid, already reported
            return value
        if value is None and info.data["cert_file"] is not None:
            raise ValueError("missing required key (cert_file needs it)")
        if value is not None and info.data["cert_file"] is None:
            raise ValueError("needs cert_file as well")
        return value


def _topic_root(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    if "+" in value or "#" in value:
        raise ValueError(f"must not contain MQTT wildcards '+' or '#', got {show_value(value)}")
    if value.startswith("/") or value.endswith("/"):
        raise ValueError(f"must not start or end with '/', got {show_value(value)}")
    return value


class MqttSection(BaseModel):
    """``[mqtt]``: the broker connection. The password is read once here and kept out of dumps."""

    model_config = _SECTION

    host: str = Field(default="localhost", min_length=1, description="broker host name or IP")
    port: int = Field(default=1883, ge=1, le=65535, description="broker port")
    client_id: str | None = Field(
        default=None, min_length=1, description='MQTT client id; default "edge-gateway-{site}-{id}"'
    )
    username: str | None = Field(default=None, min_length=1, description="MQTT user name")
    password_file: ConfigPath | None = Field(default=None, description="file holding the password")
    password_env: str | None = Field(
        default=None, min_length=1, description="environment variable holding the password"
    )
    keepalive: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive, seconds")
    topic_root: Annotated[str, AfterValidator(_topic_root)] | None = Field(
        default=None, description='topic prefix; default "edge/{site}/{id}"'
    )
    tls: TlsSection | None = Field(default=None, description="TLS settings; absent means plain")
    max_inflight: int = Field(
        # MQTT has 65535 packet ids; the rest stay free for status, checkpoint and answers.
        default=100,
        ge=1,
        le=60000,
        description="unacked QoS 1 publishes",
    )
    publish_timeout: Duration = Field(default=10.0, gt=0, description="wait for a PUBACK")
    reconnect_min: Duration = Field(default=0.5, gt=0, description="first reconnect backoff")
    reconnect_max: Duration = Field(default=30.0, gt=0, description="longest reconnect backoff")
    checkpoint_interval: Duration = Field(
        default=30.0, gt=0, description="period of the retained checkpoint message"
    )
    replay_rate: float = Field(
        default=500.0, gt=0, le=100_000, description="events/s a replay may publish"
    )

    _password: SecretStr | None = PrivateAttr(default=None)

    @field_validator("password_file", "password_env")
    @classmethod
    def _one_password(cls, value: Path | str, info: ValidationInfo) -> Path | str:
        if isinstance(value, Path):
            if _secrets_wanted(info):
                _read_secret(value)
        elif info.data.get("password_file", "invalid, so given") is not None:
            raise ValueError("give password_file or password_env, not both")
        elif _secrets_wanted(info) and not os.environ.get(value):
            raise ValueError(f"environment variable {value} is not set or empty")
        if "username" in info.data and info.data["username"] is None:
            raise ValueError("needs username as well: MQTT sends a password only with a user name")
        return value

    @field_validator("reconnect_max")
    @classmethod
    def _backoff_range(cls, value: float, info: ValidationInfo) -> float:
        minimum = info.data.get("reconnect_min")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least reconnect_min ({minimum}), got {value}")
        return value

    @model_validator(mode="after")
    def _keep_password(self, info: ValidationInfo) -> Self:
        if not _secrets_wanted(info):
            return self
        if self.password_file is not None:
            self._password = SecretStr(_read_secret(self.password_file))
        elif self.password_env is not None:
            self._password = SecretStr(os.environ[self.password_env])
        return self

    def with_password_file(self, path: Path) -> MqttSection:
        """A copy with the password read from ``path`` (``replay --password-file``).

        Raises ValueError (the message names the file) if it cannot be read or is not private.
        """
        if self.username is None:
            raise ValueError(
                "mqtt.username is not set: MQTT sends a password only with a user name"
            )
        section = self.model_copy(update={"password_file": path, "password_env": None})
        section._password = SecretStr(_read_secret(path))  # noqa: SLF001 - our own private attr
        return section

    def password(self) -> str | None:
        """Return the broker password, if one is configured; read at load time, never logged."""
        return None if self._password is None else self._password.get_secret_value()


class BufferSection(BaseModel):
    """``[buffer]``: how much the store-and-forward buffer may hold during a broker outage."""

    model_config = _SECTION

    max_bytes: ByteSize = Field(default=GIB, description="size cap of the SQLite buffer")
    retention: Duration = Field(
        default=7 * 86400.0, gt=0, description="how long sent events are kept for replays"
    )
    batch_max: int = Field(
        default=500, ge=1, le=10000, description="most events committed in one transaction"
    )


def _listen_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if (
        not sep
        or not host
        or not (port.isascii() and port.isdigit())
        or not 1 <= int(port) <= 65535
    ):
        raise ValueError(f'expected "host:port", such as "127.0.0.1:9108", got {show_value(value)}')
    return value


class MetricsSection(BaseModel):
    """``[metrics]``: the Prometheus endpoint, off unless ``listen`` is set."""

    model_config = _SECTION

    listen: Annotated[str, AfterValidator(_listen_address)] | None = Field(
        default=None, description='address of /metrics, e.g. "127.0.0.1:9108"; unset means off'
    )


class LoggingSection(BaseModel):
    """``[logging]``: verbosity and format; ``auto`` means console on a TTY, JSON otherwise."""

    model_config = _SECTION

    level: Literal["debug", "info", "warning", "error"] = Field(default="info")
    format: Literal["auto", "json", "console"] = Field(default="auto")


class Settings(BaseModel):
    """The whole validated config; devices are instances of each driver's own config model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gateway: GatewaySection
    mqtt: MqttSection = Field(default_factory=MqttSection)
    buffer: BufferSection = Field(default_factory=BufferSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    devices: tuple[SerializeAsAny[DeviceConfig], ...] = ()
    source_path: Path

    @property
    def topic_root(self) -> str:
        """Prefix of every topic this gateway publishes or subscribes to."""
        return self.mqtt.topic_root or f"edge/{self.gateway.site}/{self.gateway.id}"

    @property
    def database_path(self) -> Path:
        """Where the buffer's SQLite file lives."""
        return self.gateway.state_dir / "buffer.db"


class ConfigError(Exception):
    """All problems found in a config file."""

    errors: list[str]
    """Each ``PATH:LINE: key.path: message`` (or ``PATH: cannot read config: ...``), by line."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


_SECTIONS: dict[str, type[BaseModel]] = {
    "gateway": GatewaySection,
    "mqtt": MqttSection,
    "buffer": BufferSection,
    "logging": LoggingSection,
    "metrics": MetricsSection,
}
_TOP_LEVEL = sorted([*_SECTIONS, "devices"])


def load_settings(path: Path | str, *, secrets: bool = True) -> Settings:
    """Read and validate a config file; raise ``ConfigError`` listing every problem found.

    ``secrets=False`` (``status``) neither reads nor checks the broker password.
    """
    shown, source = str(path), Path(path)
    try:
        text = source.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError([f"{shown}: cannot read config: {reason}"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{shown}:{_syntax_line(exc, text)}: (syntax): {exc}"]) from None

    context = {"config_dir": source.parent, "secrets": secrets}
    problems: list[Problem] = [
        ((key,), f"unknown key (allowed: {', '.join(_TOP_LEVEL)})")
        for key in data
        if key not in _TOP_LEVEL
    ]
    sections: dict[str, Any] = {}
    for name, model in _SECTIONS.items():
        try:
            sections[name] = model.model_validate(data.get(name, {}), context=context)
        except ValidationError as exc:
            problems.extend(describe_errors(exc, model, prefix=(name,)))
        except Exception as exc:  # a value no validator foresaw: still a config error, no traceback
            problems.append(((name,), f"invalid value: {type(exc).__name__}: {str(exc)[:200]}"))
    raw_devices = data.get("devices", [])
    devices = _load_devices(raw_devices, context, problems)
    if problems:
        locator = LineLocator(text)
        located = sorted(
            ((locator.line_of(loc), loc, msg) for loc, msg in problems), key=lambda item: item[0]
        )
        ids = _raw_device_ids(raw_devices)
        raise ConfigError([format_problem(shown, *item, device_ids=ids) for item in located])
    # With the context: pydantic runs the sections' model validators again here.
    return Settings.model_validate(
        {**sections, "devices": tuple(devices), "source_path": source}, context=context
    )


def _raw_device_ids(raw: object) -> dict[int, str]:
    """Index -> id of each ``[[devices]]`` entry that has a string id, to name it in errors."""
    if not isinstance(raw, list):
        return {}
    return {
        i: entry["id"]
        for i, entry in enumerate(raw)
        if isinstance(entry, dict) and isinstance(entry.get("id"), str)
    }


def _claims(device: DeviceConfig) -> list[tuple[str, str, tuple[Any, ...], int | None]]:
    """What a device holds alone: (key in its table, what, identity, Modbus unit or None).

    Two devices on one serial port fight over it (only one can open it, or both read half the
    frames), two on one LLRP reader replace each other's ROSpec, two on one Modbus unit write
    the same coils. Several Modbus units may share one RTU line: that is what a bus is for.
    """
    claims: list[tuple[str, str, tuple[Any, ...], int | None]] = []
    driver = device.driver
    serial = getattr(device, "serial_port", None) if driver == "modbus" else None
    if driver == "barcode-serial":
        serial = getattr(device, "port", None)
    unit = getattr(device, "unit", None) if driver == "modbus" else None
    if serial is not None:
        key = "serial_port" if driver == "modbus" else "port"
        claims.append((key, f"serial port {json.dumps(serial)}", ("serial", serial), unit))
    if driver == "modbus" and getattr(device, "host", None) is not None:
        host, port = device.host, device.port  # type: ignore[attr-defined]
        what = f"Modbus unit {unit} at {host}:{port}"
        claims.append(("unit", what, ("modbus-tcp", host, port, unit), None))
    if driver == "rfid-llrp":  # by port too: simulated readers share 127.0.0.1
        host, port = device.host, device.port  # type: ignore[attr-defined]
        claims.append(("host", f"LLRP reader {host}:{port}", ("llrp", host, port), None))
    if driver == "barcode-hid" and getattr(device, "path", None) is not None:
        path = device.path  # type: ignore[attr-defined]
        claims.append(("path", f"input device {json.dumps(path)}", ("hid", path), None))
    return claims


def _check_shared(devices: list[tuple[int, DeviceConfig]], problems: list[Problem]) -> None:
    """Two devices holding one port, reader or Modbus unit: an error on the later one."""
    holders: dict[tuple[Any, ...], list[tuple[int, DeviceConfig, int | None]]] = {}
    for index, device in devices:
        for key, what, identity, unit in _claims(device):
            for first_index, first, first_unit in holders.get(identity, []):
                bus = device.driver == first.driver == "modbus" and unit != first_unit
                if not bus:
                    other = f"devices[{first_index}] (id {json.dumps(first.id)})"
                    at, held = key, what
                    if unit is not None and device.driver == first.driver:  # one unit, one bus
                        at, held = "unit", f"Modbus unit {unit} on {what}"
                    problems.append((("devices", index, at), f"{held} is already used by {other}"))
                    break
            holders.setdefault(identity, []).append((index, device, unit))


def _load_devices(
    raw: object, context: dict[str, Any], problems: list[Problem]
) -> list[DeviceConfig]:
    """Validate each ``[[devices]]`` entry with its driver's model; note duplicate ids."""
    if not isinstance(raw, list):
        problems.append((("devices",), f"expected [[devices]] tables, got {show_value(raw)}"))
        return []
    devices: list[DeviceConfig] = []
    indexed: list[tuple[int, DeviceConfig]] = []
    first_index: dict[str, int] = {}
    for index, entry in enumerate(raw):
        loc: KeyPath = ("devices", index)
        if not isinstance(entry, dict):
            problems.append((loc, f"expected a table, got {show_value(entry)}"))
            continue
        device_id = entry.get("id")
        if isinstance(device_id, str) and first_index.setdefault(device_id, index) != index:
            also = f"(also devices[{first_index[device_id]}])"
            problems.append(((*loc, "id"), f"duplicate device id {show_value(device_id)} {also}"))
        model = _device_model(entry.get("driver"))
        if isinstance(model, str):
            problems.append(((*loc, "driver"), model))
            continue
        try:
            devices.append(_validate_device(model, entry, context))
            indexed.append((index, devices[-1]))
        except ValidationError as exc:
            problems.extend(describe_errors(exc, model, prefix=loc))
        except Exception as exc:  # a value the driver's model did not foresee: no traceback
            problems.append((loc, f"invalid value: {type(exc).__name__}: {str(exc)[:200]}"))
    _check_shared(indexed, problems)
    return devices


def _validate_device(
    model: type[DeviceConfig], entry: dict[str, Any], context: dict[str, Any]
) -> DeviceConfig:
    """Validate one device as strictly as the gateway's own sections (issue 14).

    ``baudrate = "9600"`` used to pass while ``mqtt.port = "18999"`` was refused. Pydantic's
    strict mode as it applies to JSON input is TOML's too: no string for a number or a boolean,
    yet arrays for tuples and strings for enums, paths and literals. TOML values JSON cannot
    hold (dates) fall back to the lax check, which refuses them anyway where they do not belong.
    """
    try:
        text = json.dumps(entry)
    except (TypeError, ValueError):
        return model.model_validate(entry, context=context)
    return model.model_validate_json(text, strict=True, context=context)


def _device_model(driver: object) -> type[DeviceConfig] | str:
    """Return the driver's config model, or why there is none."""
    if driver is None:
        return "missing required key"
    if not isinstance(driver, str) or not registry.is_known(driver):
        known = ", ".join(registry.known_drivers())
        return f"unknown driver {show_value(driver)} (known: {known})"
    try:
        return registry.config_model(driver)
    except Exception as exc:  # a broken third-party plugin is a config problem, not a crash
        return f"cannot load driver {show_value(driver)}: {exc}"


def _syntax_line(exc: tomllib.TOMLDecodeError, text: str) -> int:
    """Find the line in tomllib's message; "end of document" means the last line."""
    match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
    if match:
        return int(match[1])
    return max(1, text.count("\n") + (0 if text.endswith("\n") else 1))


def status_settings(path: Path) -> tuple[Settings, frozenset[str]] | None:
    """What ``status`` needs from a config that does not validate: ``[gateway]`` alone.

    The daemon keeps running on its old config after a rejected reload, which is exactly when a
    technician asks for the status. Returns the settings with no devices, and the ids of the
    devices the raw file puts at ``confirm = "accepted"``; None if even ``[gateway]`` is unusable.
    """
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
        gateway = GatewaySection.model_validate(
            data.get("gateway", {}), context={"config_dir": path.parent}
        )
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValidationError):
        return None
    raw_devices = data.get("devices", [])
    accepted = frozenset(
        str(d["id"])
        for d in (raw_devices if isinstance(raw_devices, list) else [])
        if isinstance(d, dict) and d.get("confirm") == "accepted" and isinstance(d.get("id"), str)
    )
    return Settings(gateway=gateway, source_path=path), accepted
