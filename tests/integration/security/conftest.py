"""A Mosquitto with a plain listener (for test observers), a TLS/mTLS listener and a
password-only listener, all with certificates and credentials made in the test by trustme."""

from __future__ import annotations

import datetime as dt
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from simulators.broker import MosquittoBroker, free_port

USER, PASSWORD = "gw-test", "s3cret-Pa55-do-not-log"


@dataclass
class Pki:
    """The broker's CA and certs, plus a client cert and a foreign CA, written as PEM files."""

    folder: Path
    ca: trustme.CA
    other_ca: trustme.CA

    def pem(self, name: str, blob: trustme.Blob) -> Path:
        """Write one PEM blob under the test folder."""
        path = self.folder / f"{name}.pem"
        blob.write_to_path(str(path))
        path.chmod(0o600)
        return path

    def leaf(
        self, name: str, ca: trustme.CA, *identities: str, expired: bool = False
    ) -> tuple[Path, Path]:
        """A certificate and key for ``identities``, optionally expired yesterday."""
        now = dt.datetime.now(dt.UTC)
        window = (
            {
                "not_before": now - dt.timedelta(days=30),
                "not_after": now - dt.timedelta(days=1),
            }
            if expired
            else {}
        )
        cert = ca.issue_cert(*identities, **window)
        return self.pem(f"{name}-cert", cert.cert_chain_pems[0]), self.pem(
            f"{name}-key", cert.private_key_pem
        )


class SecureBroker(MosquittoBroker):
    """MosquittoBroker plus a TLS listener (``tls_port``) and a password listener
    (``auth_port``); the base class's plain listener stays for observers."""

    def __init__(self, workdir: Path, pki: Pki, *, server: tuple[Path, Path]) -> None:
        super().__init__(workdir)
        self.tls_port, self.auth_port = free_port(), free_port()
        passwords = workdir / "passwd"
        passwords.touch(mode=0o600)
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwords), USER, PASSWORD],
            check=True,
            capture_output=True,
        )
        base = self.config_path.read_text()
        self.config_path.write_text(
            "per_listener_settings true\n"
            + base
            + f"listener {self.tls_port} 127.0.0.1\nallow_anonymous true\n"
            f"cafile {pki.pem('ca', pki.ca.cert_pem)}\ncertfile {server[0]}\nkeyfile {server[1]}\n"
            "require_certificate true\n"
            f"listener {self.auth_port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
        )


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A fresh CA for the broker and clients, and an unrelated one."""
    folder = tmp_path / "pki"
    folder.mkdir(mode=0o700)
    return Pki(folder, trustme.CA(), trustme.CA())


@pytest.fixture
def secure_broker(tmp_path: Path, pki: Pki) -> Iterator[SecureBroker]:
    """The broker with a valid server certificate for 127.0.0.1 and localhost."""
    broker = SecureBroker(
        tmp_path / "broker", pki, server=pki.leaf("server", pki.ca, "127.0.0.1", "localhost")
    )
    broker.start()
    yield broker
    broker.stop()
