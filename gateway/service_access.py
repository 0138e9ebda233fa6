"""What the service's own user can read: ``check-config`` from a shell, against the installed unit.

``check-config`` run as root (by hand, or by ``install.sh``) opens every file and passes, while
the daemon, started by systemd as ``User=edge-gateway``, then fails at start on a root-owned
0600 TLS key (issue 18, finding 6). So when ``check-config`` runs outside the service and finds
the unit, it checks each file the daemon will open (the config itself, ``mqtt.password_file``,
``mqtt.tls.ca_file``, ``cert_file`` and ``key_file``) against the unit's ``User=``/``Group=``,
that user's supplementary groups and ``SupplementaryGroups=`` (``DynamicUser=`` too): from
``stat`` (owner, group, mode bits, and a POSIX ACL when the file has one) and the search
permission of every directory on the way. A systemd credential of the unit is exempt: systemd
reads its ``LoadCredential=`` source as root, and loading the config has checked that source.
Run as the service user itself, loading the config has opened every file as that user already.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from gateway.config_lines import KeyPath, LineLocator, format_key_path, format_problem
from gateway.credentials import CREDENTIALS_ROOT, UNIT_DIRS_ENV, unit_dirs, unit_entries

if TYPE_CHECKING:
    from gateway.settings import Settings

UNIT = "edge-gateway.service"
"""The unit checked, unless a credential path in the config names another one."""

Kind = Literal["secret", "public"]
_CREDENTIAL_NAMES = {"password_file": "mqtt-password", "key_file": "mqtt-client-key"}
_READ, _SEARCH = 4, 1
_ACL_XATTR = "system.posix_acl_access"
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = (
    0x01, 0x02, 0x04, 0x08, 0x10, 0x20,
)  # fmt: skip


@dataclass(frozen=True)
class ServiceAccount:
    """Who the unit's processes run as."""

    unit: str
    unit_file: Path
    """Where ``User=`` (or ``DynamicUser=``) was set; the unit file when neither is."""
    user: str
    uid: int | None
    """None for a dynamic user systemd allocates at start: it owns no file."""
    gid: int | None
    groups: dict[int, str] = field(default_factory=dict)
    """Every group the processes have (gid -> name): primary, the user's own, supplementary."""
    missing: tuple[str, ...] = ()
    """Groups the unit names that this box lacks (systemd would refuse to start it)."""

    @property
    def group(self) -> str | None:
        """The primary group's name, for ``chgrp`` advice (None: a dynamic group)."""
        return None if self.gid is None else self.groups.get(self.gid, str(self.gid))

    def describe(self) -> str:
        """``edge-gateway (uid 998; groups edge-gateway, dialout; User= in /etc/...)``."""
        who = "a dynamic uid (DynamicUser=)" if self.uid is None else f"uid {self.uid}"
        names = ", ".join(sorted(set(self.groups.values()))) or "none"
        return f"{self.user} ({who}; groups {names}; User= of {self.unit} in {self.unit_file})"


class AccountError(Exception):
    """The unit's user does not exist on this box: nothing can be checked."""


def _is_yes(value: str) -> bool:
    return value.strip().lower() in {"1", "yes", "true", "on"}


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid if not name.isdigit() else grp.getgrgid(int(name)).gr_gid
    except KeyError:
        return int(name) if name.isdigit() else None


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_entry(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        return None


def _unit_account(unit: str) -> tuple[str | None, str | None, bool, list[str], Path] | None:
    """``User=``, ``Group=``, ``DynamicUser=``, ``SupplementaryGroups=`` and where User= is."""
    entries = unit_entries(unit)
    if not entries:
        return None
    user: str | None = None
    group: str | None = None
    dynamic = False
    supplementary: list[str] = []
    where = entries[0][2]
    for key, value, unit_file in entries:
        if key == "User":
            user, where = value or None, unit_file
        elif key == "Group":
            group = value or None
        elif key == "DynamicUser":
            dynamic = _is_yes(value)
        elif key == "SupplementaryGroups":  # accumulates; an empty value resets the list
            supplementary = [*supplementary, *value.split()] if value else []
    return user, group, dynamic, supplementary, where


def service_account(unit: str = UNIT) -> ServiceAccount | None:
    """The account the installed ``unit`` runs as; None when no unit file is found.

    Raises AccountError when the unit's user does not exist (systemd could not start it
    either); groups it lacks are listed in ``missing``. ``DynamicUser=`` uses a static user of
    that name when there is one.
    """
    settings = _unit_account(unit)
    if settings is None:
        return None
    user, group, dynamic, supplementary, where = settings
    name = user or (unit.removesuffix(".service") if dynamic else "root")
    entry = _user_entry(name)
    if entry is None and not dynamic:
        raise AccountError(
            f"User={name} of {unit} ({where}) does not exist on this box: systemd cannot start"
            " the service (systemd/install.sh creates the user)"
        )
    gid: int | None = entry.pw_gid if entry is not None else None
    missing: list[str] = []
    if group is not None:
        gid = _group_id(group)
        if gid is None and not dynamic:
            missing.append(f"Group={group}")
    gids: set[int] = set()
    if entry is not None and gid is not None:
        gids.update(os.getgrouplist(entry.pw_name, gid))
    elif gid is not None:
        gids.add(gid)
    for extra in supplementary:
        extra_gid = _group_id(extra)
        if extra_gid is None:
            missing.append(f"SupplementaryGroups={extra}")
        else:
            gids.add(extra_gid)
    return ServiceAccount(
        unit=unit,
        unit_file=where,
        user=name if entry is None else entry.pw_name,
        uid=None if entry is None else entry.pw_uid,
        gid=gid,
        groups={g: _group_name(g) for g in gids},
        missing=tuple(missing),
    )


def _acl(path: Path) -> list[tuple[int, int, int]] | None:
    """The file's POSIX access ACL as (tag, perm, id) entries; None when it has none."""
    try:
        raw = os.getxattr(path, _ACL_XATTR)
    except OSError:
        return None
    if len(raw) < 4 or int.from_bytes(raw[:4], "little") != 2:  # POSIX_ACL_XATTR_VERSION
        return None
    return [struct.unpack_from("<HHI", raw, off) for off in range(4, len(raw) - 7, 8)]


def _may(path: Path, info: os.stat_result, account: ServiceAccount, want: int) -> bool:
    """The kernel's access check for ``account`` (generic_permission, posix_acl_permission)."""
    if account.uid == 0:
        return True
    entries = _acl(path)
    if entries is None:
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid == account.uid:
            bits = mode >> 6
        elif info.st_gid in account.groups:
            bits = mode >> 3
        else:
            bits = mode
        return bits & want == want
    if info.st_uid == account.uid:
        return any(tag == _ACL_USER_OBJ and perm & want == want for tag, perm, _ in entries)
    mask = next((perm for tag, perm, _ in entries if tag == _ACL_MASK), 7)
    for tag, perm, ident in entries:
        if tag == _ACL_USER and ident == account.uid:
            return perm & mask & want == want
    groups = [
        perm
        for tag, perm, ident in entries
        if (tag == _ACL_GROUP_OBJ and info.st_gid in account.groups)
        or (tag == _ACL_GROUP and ident in account.groups)
    ]
    if groups:
        return any(perm & mask & want == want for perm in groups)
    return any(tag == _ACL_OTHER and perm & want == want for tag, perm, _ in entries)


def _owner(info: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        user = str(info.st_uid)
    return f"owner {user}:{_group_name(info.st_gid)}, mode {stat.S_IMODE(info.st_mode):04o}"


def _describe(path: Path, info: os.stat_result) -> str:
    extra = ", with an ACL" if _acl(path) is not None else ""
    return f'"{path}" ({_owner(info)}{extra})'


def unreadable(path: Path, account: ServiceAccount) -> tuple[Path, str] | None:
    """What stops ``account`` reading ``path``: (the file or directory, its description).

    None when it can read it, or when ``path`` cannot be examined here (loading the config has
    reported a file that is not there).
    """
    absolute = Path(os.path.abspath(path))  # noqa: PTH100 - lexical, no symlinks
    resolved = path.resolve()
    seen: set[Path] = set()
    for directory in [*reversed(absolute.parents), *reversed(resolved.parents)]:
        if directory in seen:
            continue
        seen.add(directory)
        try:
            info = directory.stat()
        except OSError:
            continue
        if not _may(directory, info, account, _SEARCH):
            return directory, f"directory {_describe(directory, info)}"
    try:
        info = resolved.stat()
    except OSError:
        return None
    if not _may(resolved, info, account, _READ):
        return resolved, _describe(resolved, info)
    return None


@dataclass
class ServiceCheck:
    """What ``check-config`` prints about the service user: errors exit 2."""

    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def daemon_files(settings: Settings) -> list[tuple[KeyPath, Path, Kind]]:
    """Every file the daemon opens besides its config: (key, path, secret or not)."""
    targets: list[tuple[KeyPath, Path, Kind]] = []
    if settings.mqtt.password_file is not None:
        targets.append((("mqtt", "password_file"), settings.mqtt.password_file, "secret"))
    tls = settings.mqtt.tls
    if tls is not None:
        for key, kind in (("ca_file", "public"), ("cert_file", "public"), ("key_file", "secret")):
            value = getattr(tls, key)
            if value is not None:
                targets.append((("mqtt", "tls", key), value, kind))  # type: ignore[arg-type]
    return targets


def _credential_of(path: Path) -> tuple[str, str] | None:
    """(unit, name) of a ``/run/credentials/UNIT/NAME`` path."""
    try:
        absolute = Path(os.path.abspath(path))  # noqa: PTH100 - lexical, no symlinks
        unit, name = absolute.relative_to(CREDENTIALS_ROOT).parts
    except ValueError:
        return None
    return unit, name


def _in_credentials_directory(path: Path) -> bool:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    return bool(directory) and path.resolve().is_relative_to(Path(str(directory)).resolve())


def _advice(key: KeyPath, path: Path, kind: Kind, account: ServiceAccount) -> str:
    unit, group = account.unit, account.group
    if kind == "secret":
        name = _CREDENTIAL_NAMES.get(str(key[-1]), str(key[-1]).replace("_", "-"))
        credential = (
            f"hand it to the service with LoadCredential={name}:{path} in {unit} and point"
            f" {format_key_path(key)} at {CREDENTIALS_ROOT / unit / name}"
        )
        if account.uid is None:
            return credential
        return f'{credential}, or chown {account.user} "{path}" and keep it 0600'
    if group is None:
        return f'chmod 0644 "{path}" (a dynamic user owns no file and has no fixed group)'
    return f'chgrp {group} "{path}" && chmod 0640 "{path}"'


def _problem(path: Path, blocker: tuple[Path, str], account: ServiceAccount, advice: str) -> str:
    blocked, described = blocker
    verb = "read"
    if blocked != path.resolve():
        verb = "entered"
        advice = (
            f'move "{path}" to a directory the service user can enter (such as'
            f" /etc/edge-gateway, 0750 root:{account.group or 'root'}), or let it enter {blocked}"
        )
    return (
        f"{described} cannot be {verb} by the service's user {account.describe()}:"
        f" the daemon would fail at start; {advice}"
    )


def _account(unit: str, shown: str, result: ServiceCheck) -> ServiceAccount | None:
    """The unit's account, when there is one to check against (else a note or warning why not)."""
    try:
        account = service_account(unit)
    except AccountError as exc:
        result.warnings.append(f"{shown}: warning: {exc}; nothing checked for the service's user")
        return None
    if account is None:
        dirs = ":".join(str(d) for d in unit_dirs())
        result.notes.append(
            f"{shown}: note: no {unit} found in {dirs} ({UNIT_DIRS_ENV}): nothing checked for"
            " the service's user (run check-config as that user to check what it can read)"
        )
        return None
    if account.missing:
        result.warnings.append(
            f"{shown}: warning: {account.unit} ({account.unit_file}) names groups this box does"
            f" not have ({', '.join(account.missing)}): systemd would refuse to start it; checked"
            " without them"
        )
    if account.uid is not None and os.geteuid() == account.uid:
        result.notes.append(
            f"{shown}: running as the service's user {account.user}: every file was opened as it"
        )
        return None
    return account


def check_service_access(settings: Settings, shown: str) -> ServiceCheck:
    """Whether the unit's user can read every file the daemon opens (``check-config``)."""
    result = ServiceCheck()
    targets = daemon_files(settings)
    units = {c[0] for _, p, _ in targets if (c := _credential_of(p)) is not None}
    account = _account(units.pop() if len(units) == 1 else UNIT, shown, result)
    if account is None:
        return result
    locator = LineLocator(settings.source_path.read_text(encoding="utf-8", errors="replace"))
    checked = ["the config"]
    config = settings.source_path
    blocker = unreadable(config, account)
    if blocker is not None:
        advice = _advice(("config",), config, "public", account)
        result.errors.append(f"{shown}: {_problem(config, blocker, account, advice)}")
    for key, path, kind in targets:
        credential = _credential_of(path)
        if credential is not None and credential[0] != account.unit:
            message = (
                f'"{path}" is a credential of {credential[0]}, not of {account.unit}:'
                f" the service never gets it; use {CREDENTIALS_ROOT / account.unit}/NAME"
            )
            result.errors.append(format_problem(shown, locator.line_of(key), key, message))
        if credential is not None or _in_credentials_directory(path):
            continue  # systemd reads the source as root; loading the config checked it
        checked.append(format_key_path(key))
        blocker = unreadable(path, account)
        if blocker is not None:
            problem = _problem(path, blocker, account, _advice(key, path, kind, account))
            result.errors.append(format_problem(shown, locator.line_of(key), key, problem))
    if not result.errors:
        result.notes.append(
            f"{shown}: the service's user {account.describe()} can read {', '.join(checked)}:"
            " checked"
        )
    return result
