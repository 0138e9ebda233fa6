"""check-config checks what the unit's own user can read (issue 18, finding 6), as processes.

``check-config`` run as root used to accept a root-owned 0600 TLS key that ``User=edge-gateway``
cannot read; the daemon then failed at start. With the unit found (``EDGE_GATEWAY_UNIT_DIRS``
points at a copy of the shipped unit running as ``nobody``), every file the daemon opens is
checked against that user from ``stat``: a file it cannot read is exit 2 naming the config line,
the key, the file, its owner and mode, the user, and what to do. These pass as root and as an
ordinary user; only the cases that must give a file to another user need root.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.credentials import CREDENTIALS_ROOT
from tests.support import ROOT, write_config

TESTCASES = ROOT / "tests" / "unit" / "gateway" / "testcases" / "valid"
KEY_CREDENTIAL = CREDENTIALS_ROOT / "edge-gateway.service" / "mqtt-client-key"
ME = pwd.getpwuid(os.geteuid()).pw_name
MY_GROUP = grp.getgrgid(os.getegid()).gr_name

try:
    NOBODY = pwd.getpwnam("nobody")
except KeyError:  # pragma: no cover - every Debian box has it
    NOBODY = None

pytestmark = [
    pytest.mark.skipif(NOBODY is None, reason="no 'nobody' account on this box"),
    pytest.mark.skipif(
        NOBODY is not None and os.geteuid() == NOBODY.pw_uid, reason="runs as nobody itself"
    ),
]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="giving a file to another user (chown) needs root"
)


def check_config(config: Path, units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(config)],
        capture_output=True, text=True, timeout=30, cwd=ROOT, check=False,
        env={**os.environ, "EDGE_GATEWAY_UNIT_DIRS": str(units)},
    )  # fmt: skip


@pytest.fixture
def site() -> Iterator[Path]:
    """A folder everyone may enter: pytest's tmp_path is 0700, which nobody could ever pass."""
    folder = Path(tempfile.mkdtemp(prefix="edge-gateway-svc-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def install_unit(site: Path, user: str = "nobody", *extra: str) -> Path:
    """The shipped unit as User=user, its credential sources under ``site``; returns its dir."""
    units = site / "units"
    units.mkdir(exist_ok=True)
    lines = []
    for shipped in (ROOT / "systemd" / "edge-gateway.service").read_text().splitlines():
        if shipped.startswith(("User=", "Group=", "SupplementaryGroups=")):
            continue  # "input" and the edge-gateway user need not exist on a test box
        line = shipped
        if line.startswith("LoadCredential="):
            name, _, source = line.removeprefix("LoadCredential=").partition(":")
            line = f"LoadCredential={name}:{site / 'etc' / Path(source).name}"
        lines.append(line)
        if line == "[Service]":
            lines.extend([f"User={user}", *extra])
    (units / "edge-gateway.service").write_text("\n".join(lines) + "\n")
    return units


def tls_config(site: Path, *, key: Path | str, mode: int = 0o600, **more: str) -> Path:
    """A config with mutual TLS; the key copied to ``key`` (unless it is a credential path)."""
    cert = site / "client.crt"
    shutil.copy(TESTCASES / "client.crt", cert)
    cert.chmod(0o644)
    if isinstance(key, Path):
        shutil.copy(TESTCASES / "client.key", key)
        key.chmod(mode)
    config = write_config(site / "gw.toml", mqtt_port=1883, state_dir=site / "state", devices=[])
    tls = {"cert_file": str(cert), "key_file": str(key), **more}
    with config.open("a") as out:
        out.write("[mqtt.tls]\n" + "".join(f'{k} = "{v}"\n' for k, v in tls.items()))
    config.chmod(0o644)
    return config


def line_of(config: Path, key: str) -> int:
    lines = config.read_text().splitlines()
    return next(n for n, text in enumerate(lines, 1) if text.startswith(f"{key} ="))


def test_a_key_only_its_owner_can_read_is_refused_naming_the_units_user(site: Path) -> None:
    """The finding: a 0600 key of the user running check-config, the unit's user is nobody."""
    key = site / "client.key"
    config = tls_config(site, key=key)
    refused = check_config(config, install_unit(site))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    line = line_of(config, "key_file")
    (error,) = [e for e in refused.stderr.splitlines() if "mqtt.tls.key_file" in e]
    assert error.startswith(f"{config}:{line}: mqtt.tls.key_file: "), error
    assert f'"{key}" (owner {ME}:{MY_GROUP}, mode 0600)' in error
    assert "service's user nobody (uid" in error
    assert "LoadCredential=mqtt-client-key:" in error and str(KEY_CREDENTIAL) in error
    assert "ok (" not in refused.stdout
    assert "Traceback" not in refused.stderr
    # No unit found: today's behaviour, and said.
    (site / "empty").mkdir()
    alone = check_config(config, site / "empty")
    assert alone.returncode == 0, alone.stderr
    assert "nothing checked for the service's user" in alone.stdout


def test_the_key_as_a_credential_and_readable_files_pass(site: Path) -> None:
    """key_file at the unit's mqtt-client-key credential: its source is systemd's (root's) to
    read; the certificate and CA, 0644, are readable by nobody. Exit 0, and said."""
    if KEY_CREDENTIAL.exists():
        pytest.skip("this box runs edge-gateway.service: its credential is there")
    source = site / "etc" / "mqtt-client.key"
    source.parent.mkdir()
    shutil.copy(TESTCASES / "client.key", source)
    source.chmod(0o600)
    ca = site / "ca.pem"
    shutil.copy(TESTCASES / "client.crt", ca)
    ca.chmod(0o644)
    config = tls_config(site, key=str(KEY_CREDENTIAL), ca_file=str(ca))
    ok = check_config(config, install_unit(site))
    assert ok.returncode == 0, ok.stderr
    assert f"{config}: ok" in ok.stdout
    assert 'mqtt.tls.key_file: systemd credential "mqtt-client-key"' in ok.stdout
    assert str(source) in ok.stdout
    assert "nobody" in ok.stdout
    assert "can read the config, mqtt.tls.ca_file, mqtt.tls.cert_file: checked" in ok.stdout
    source.chmod(0o644)  # the source must be as private as the credential
    loose = check_config(config, install_unit(site))
    assert loose.returncode == 2
    assert "mqtt.tls.key_file" in loose.stderr and str(source) in loose.stderr


def test_group_read_counts_through_supplementary_groups(site: Path) -> None:
    """A 0640 CA of the caller's group: refused for nobody, fine once the unit adds that group."""
    ca = site / "ca.pem"
    shutil.copy(TESTCASES / "client.crt", ca)
    ca.chmod(0o640)
    source = site / "etc" / "mqtt-client.key"
    source.parent.mkdir()
    shutil.copy(TESTCASES / "client.key", source)
    source.chmod(0o600)
    config = tls_config(site, key=str(KEY_CREDENTIAL), ca_file=str(ca))
    refused = check_config(config, install_unit(site))
    assert refused.returncode == 2
    assert f"{config}:{line_of(config, 'ca_file')}: mqtt.tls.ca_file: " in refused.stderr
    assert f'"{ca}" && chmod 0640 "{ca}"' in refused.stderr
    granted = check_config(config, install_unit(site, "nobody", f"SupplementaryGroups={MY_GROUP}"))
    assert granted.returncode == 0, granted.stderr


def test_the_password_file_and_the_config_itself_are_checked(site: Path) -> None:
    """A 0600 password file (no credential) and a 0600 config: both refused for nobody."""
    secret = site / "mqtt-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    config = write_config(
        site / "gw.toml", mqtt_port=1883, state_dir=site / "state", devices=[],
        mqtt={"username": "gw-01", "password_file": str(secret)},
    )  # fmt: skip
    config.chmod(0o600)
    refused = check_config(config, install_unit(site))
    assert refused.returncode == 2
    line = line_of(config, "password_file")
    assert f"{config}:{line}: mqtt.password_file: " in refused.stderr
    assert "LoadCredential=mqtt-password:" in refused.stderr
    assert f'{config}: "{config}" (owner {ME}:{MY_GROUP}, mode 0600) cannot be read' in (
        refused.stderr
    )


def test_a_directory_the_user_cannot_enter_is_named(site: Path) -> None:
    """A readable certificate in a 0700 folder is still out of the service's reach."""
    private = site / "private"
    private.mkdir(mode=0o700)
    source = site / "etc" / "mqtt-client.key"
    source.parent.mkdir()
    shutil.copy(TESTCASES / "client.key", source)
    source.chmod(0o600)
    config = tls_config(site, key=str(KEY_CREDENTIAL))
    cert = private / "client.crt"
    shutil.move(site / "client.crt", cert)
    config.write_text(config.read_text().replace(str(site / "client.crt"), str(cert)))
    refused = check_config(config, install_unit(site))
    assert refused.returncode == 2
    assert f'directory "{private}" (owner {ME}:{MY_GROUP}, mode 0700) cannot be entered' in (
        refused.stderr
    )


def test_run_as_the_units_user_the_files_were_opened_as_it(site: Path) -> None:
    """User= is the caller: loading the config opened every file as that user; nothing more."""
    config = tls_config(site, key=site / "client.key")
    mine = check_config(config, install_unit(site, ME))
    assert mine.returncode == 0, mine.stderr
    assert f"running as the service's user {ME}" in mine.stdout


def test_a_dynamic_user_reads_only_what_others_may(site: Path) -> None:
    """DynamicUser= with no such static user: it owns nothing, so only "other" bits count."""
    dynamic = ("DynamicUser=yes",)
    source = site / "etc" / "mqtt-client.key"
    source.parent.mkdir()
    shutil.copy(TESTCASES / "client.key", source)
    source.chmod(0o600)
    config = tls_config(site, key=str(KEY_CREDENTIAL))
    ok = check_config(config, install_unit(site, "edge-gateway-no-such-user", *dynamic))
    assert ok.returncode == 0, ok.stderr
    assert "a dynamic uid" in ok.stdout
    (site / "client.crt").chmod(0o640)
    refused = check_config(config, install_unit(site, "edge-gateway-no-such-user", *dynamic))
    assert refused.returncode == 2
    assert "mqtt.tls.cert_file" in refused.stderr and "a dynamic uid" in refused.stderr


def test_an_acl_granting_the_user_is_honoured(site: Path) -> None:
    """setfacl -m u:nobody:r on a 0600 CA: readable by nobody (the owner may set it, no root)."""
    assert NOBODY is not None
    ca = site / "ca.pem"
    shutil.copy(TESTCASES / "client.crt", ca)
    ca.chmod(0o600)
    undefined = 0xFFFFFFFF
    entries = [(0x01, 6, undefined), (0x02, 4, NOBODY.pw_uid), (0x04, 0, undefined),
               (0x10, 4, undefined), (0x20, 0, undefined)]  # fmt: skip
    acl = b"\x02\x00\x00\x00" + b"".join(
        tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + ident.to_bytes(4, "little")
        for tag, perm, ident in entries
    )
    source = site / "etc" / "mqtt-client.key"
    source.parent.mkdir()
    shutil.copy(TESTCASES / "client.key", source)
    source.chmod(0o600)
    config = tls_config(site, key=str(KEY_CREDENTIAL), ca_file=str(ca))
    refused = check_config(config, install_unit(site))
    assert refused.returncode == 2
    try:
        os.setxattr(ca, "system.posix_acl_access", acl)
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs on {ca.parent}: {exc}")
    granted = check_config(config, install_unit(site))
    assert granted.returncode == 0, granted.stderr


@needs_root
def test_a_key_owned_by_the_units_user_passes(site: Path) -> None:
    """chown nobody + 0600: the key is the service user's own, as docs/security.md says."""
    assert NOBODY is not None
    key = site / "client.key"
    config = tls_config(site, key=key)
    os.chown(key, NOBODY.pw_uid, -1)
    ok = check_config(config, install_unit(site))
    assert ok.returncode == 0, ok.stderr
    assert "can read the config, mqtt.tls.cert_file, mqtt.tls.key_file: checked" in ok.stdout


@needs_root
def test_a_certificate_given_to_the_units_group_passes(site: Path) -> None:
    """chgrp nogroup + 0640, the advice check-config gives for a certificate."""
    assert NOBODY is not None
    source = site / "etc" / "mqtt-client.key"
    source.parent.mkdir()
    shutil.copy(TESTCASES / "client.key", source)
    source.chmod(0o600)
    config = tls_config(site, key=str(KEY_CREDENTIAL))
    cert = site / "client.crt"
    cert.chmod(0o640)
    refused = check_config(config, install_unit(site))
    assert refused.returncode == 2
    group = grp.getgrgid(NOBODY.pw_gid).gr_name
    assert f'chgrp {group} "{cert}" && chmod 0640 "{cert}"' in refused.stderr
    os.chown(cert, -1, NOBODY.pw_gid)
    ok = check_config(config, install_unit(site))
    assert ok.returncode == 0, ok.stderr
