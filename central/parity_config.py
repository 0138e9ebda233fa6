"""The few ``central.toml`` keys ``edge-central parity`` reads, without pydantic.

``parity`` runs from cron and monitoring checks, so its process time is its cost: importing
pydantic and building the settings models took ~100 ms of the ~230 ms the command took (the
query itself takes ~3 ms). This reader accepts only what is plainly valid, with exactly the
values the full loader (``central.config``) would give. Anything else (a duration string it
does not know, a wrong type, a value out of bounds, an unknown key in a section it reads)
returns ``None``, and the caller runs the full loader, which reports the problem as every other
command does (``PATH:LINE: key.path: message``). So a config is never accepted here that the full
loader rejects in the sections parity reads; sections parity does not read are only checked to
be tables (``check-config`` validates the whole file).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

SECTIONS = frozenset(
    {"central", "mqtt", "database", "ingest", "confirm", "replay", "parity", "metrics", "logging"}
)
_DATABASE_KEYS = frozenset({"dsn", "password_file", "pool_size", "retry_max"})
_PARITY_KEYS = frozenset({"threshold"})
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# A subset of gateway.settings' duration syntax (no spaces, no exotic forms): same value.
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_LARGEST = 2.0**62

DEFAULT_DSN = "postgresql://localhost/edge_central"
DEFAULT_THRESHOLD = 300.0


@dataclass(frozen=True)
class ParityConfig:
    """What ``edge-central parity`` needs: where the ledger is and when to exit 1."""

    dsn: str
    password_file: Path | None
    threshold: float

    def database_password(self) -> str | None:
        """As ``CentralSettings.database_password``: the file, else ``$PGPASSWORD``."""
        if self.password_file:
            return self.password_file.read_text().strip()
        return os.environ.get("PGPASSWORD")


def _seconds(value: object) -> float | None:
    """A duration as the full loader reads it, or None when this reader cannot vouch for it."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = float(match[1]) * _UNITS[match[2]]
    else:
        return None
    return seconds if math.isfinite(seconds) and abs(seconds) <= _LARGEST else None


def _database(body: object, base: Path) -> tuple[str, Path | None] | None:
    if not isinstance(body, dict) or not body.keys() <= _DATABASE_KEYS:
        return None
    dsn, password_file = body.get("dsn", DEFAULT_DSN), body.get("password_file")
    pool_size, retry_max = body.get("pool_size", 4), body.get("retry_max", 5.0)
    if not isinstance(dsn, str) or not dsn:
        return None
    if password_file is not None and not isinstance(password_file, str):
        return None
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or not 2 <= pool_size <= 100:
        return None
    retry = _seconds(retry_max)
    if retry is None or retry <= 0:
        return None
    return dsn, (base / password_file).resolve() if password_file is not None else None


def read_parity_config(path: Path) -> ParityConfig | None:
    """The parity keys of ``path``, or None: then ask ``central.config`` (errors, odd forms)."""
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    if not data.keys() <= SECTIONS or not all(isinstance(v, dict) for v in data.values()):
        return None
    central = data.get("central")
    instance = central.get("instance") if isinstance(central, dict) else None
    if not isinstance(instance, str) or not _NAME.fullmatch(instance):
        return None
    database = _database(data.get("database", {}), path.parent)
    parity = data.get("parity", {})
    if database is None or not parity.keys() <= _PARITY_KEYS:
        return None
    threshold = _seconds(parity.get("threshold", DEFAULT_THRESHOLD))
    if threshold is None or threshold < 0:
        return None
    return ParityConfig(dsn=database[0], password_file=database[1], threshold=threshold)
