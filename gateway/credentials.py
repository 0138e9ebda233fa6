"""systemd credentials seen from a shell: which file ``LoadCredential=`` hands the service.

The recommended ``password_file`` is ``/run/credentials/edge-gateway.service/mqtt-password``:
systemd creates it for the service alone, from the source file the unit's
``LoadCredential=mqtt-password:/etc/edge-gateway/mqtt-password`` names. From a shell
(``check-config``, ``replay``, ``install.sh``'s own check) that path does not exist, so the
commands read the source the unit names instead, and say so (issue 14). Inside the service (or
whenever the credential file is there) the credential itself is read, as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CREDENTIALS_ROOT = Path("/run/credentials")
UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
UNIT_DIRS_ENV = "EDGE_GATEWAY_UNIT_DIRS"
"""Colon-separated directories searched for the unit instead of :data:`UNIT_DIRS` (tests, and
boxes that keep units elsewhere)."""


@dataclass(frozen=True)
class Credential:
    """A credential path of a unit, and where its unit says it comes from."""

    unit: str
    name: str
    source: Path | None
    """The file ``LoadCredential=NAME:SOURCE`` names; None if no unit file names one."""
    unit_file: Path | None

    def describe(self) -> str:
        """One line for messages: which credential, from where."""
        if self.source is None:
            return f'systemd credential "{self.name}" of {self.unit} (no LoadCredential= names it)'
        return (
            f'systemd credential "{self.name}" of {self.unit}, whose source is {self.source}'
            f" (LoadCredential= in {self.unit_file})"
        )


def unit_dirs() -> list[Path]:
    """Where units are looked for: ``EDGE_GATEWAY_UNIT_DIRS``, else systemd's own directories."""
    configured = os.environ.get(UNIT_DIRS_ENV)
    names = configured.split(":") if configured else list(UNIT_DIRS)
    return [Path(name) for name in names if name]


def _unit_files(unit: str) -> list[Path]:
    """The unit file systemd would use, then its drop-ins (later ones override)."""
    dirs = unit_dirs()
    files = [d / unit for d in dirs if (d / unit).is_file()][:1]
    dropins = sorted(
        (f for d in dirs if (d / f"{unit}.d").is_dir() for f in (d / f"{unit}.d").glob("*.conf")),
        key=lambda f: f.name,
    )
    return files + dropins


def unit_entries(unit: str) -> list[tuple[str, str, Path]]:
    """Every ``Key=value`` of the unit and its drop-ins, in the order systemd reads them.

    Empty when no unit file is found. Comments are skipped; section headers are not kept (the
    keys read here, ``User=``, ``LoadCredential=`` and the like, exist in ``[Service]`` only).
    """
    entries: list[tuple[str, str, Path]] = []
    for unit_file in _unit_files(unit):
        try:
            lines = unit_file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            stripped = line.strip()
            if not stripped or stripped[0] in "#;[":
                continue
            key, sep, value = stripped.partition("=")
            if sep:
                entries.append((key.strip(), value.strip(), unit_file))
    return entries


def _load_credential_source(unit: str, name: str) -> tuple[Path | None, Path | None]:
    source: Path | None = None
    found_in: Path | None = None
    for key, value, unit_file in unit_entries(unit):
        if key != "LoadCredential":
            continue
        cred, _, path = value.partition(":")
        if cred == name and path:
            source, found_in = Path(path), unit_file
    return source, found_in


def outside_service(path: Path) -> Credential | None:
    """The credential ``path`` stands for, when it is one and we are not in its service.

    None when ``path`` is no ``/run/credentials/UNIT/NAME`` path, or when the file is there to
    be read (this is the service, or a root shell beside the running service).
    """
    try:
        unit, name = path.relative_to(CREDENTIALS_ROOT).parts
    except ValueError:
        return None
    try:
        if path.exists():
            return None
    except OSError:
        pass
    source, unit_file = _load_credential_source(unit, name)
    return Credential(unit=unit, name=name, source=source, unit_file=unit_file)
