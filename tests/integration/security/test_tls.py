"""TLS and mutual TLS to a real Mosquitto, and password logins, with credentials made here."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.integration.security.conftest import PASSWORD, USER, Pki, SecureBroker
from tests.support import running_gateway, write_config


def gateway_config(
    tmp_path: Path, port: int, *, tls: dict[str, Any] | None = None, **mqtt: Any
) -> Path:
    """A device-less gateway config for ``port``, with a ``[mqtt.tls]`` table when given."""
    cfg = write_config(
        tmp_path / "gateway.toml",
        mqtt_port=port,
        state_dir=tmp_path / "state",
        devices=[],
        mqtt={"publish_timeout": 2.0, **mqtt},
    )
    if tls is not None:
        with cfg.open("a") as out:
            out.write("[mqtt.tls]\n")
            for key, value in tls.items():
                out.write(f"{key} = {'true' if value is True else f'{chr(34)}{value}{chr(34)}'}\n")
    return cfg


async def connects(cfg: Path, within: float) -> tuple[bool, list[dict[str, Any]]]:
    """Run the gateway for up to ``within`` seconds: did it get a session, and what it logged."""
    with capture_logs() as logs:
        async with running_gateway(cfg) as gw:
            try:
                async with asyncio.timeout(within):
                    await gw.publisher.connected.wait()
            except TimeoutError:
                return False, logs
            return True, logs


async def test_mtls_with_the_right_ca_and_client_cert_connects(
    tmp_path: Path, pki: Pki, secure_broker: SecureBroker
) -> None:
    """Right CA, client certificate from the broker's CA: a session is established."""
    cert, key = pki.leaf("client", pki.ca, "gw-test")
    tls = {"ca_file": pki.pem("ca-trust", pki.ca.cert_pem), "cert_file": cert, "key_file": key}
    ok, logs = await connects(gateway_config(tmp_path, secure_broker.tls_port, tls=tls), 10)
    assert ok, [e for e in logs if e["log_level"] != "info"]


REFUSALS = [
    "wrong-ca",
    "expired-server",
    "hostname-mismatch",
    "no-client-cert",
    "foreign-client-cert",
    "expired-client-cert",
    "insecure-still-checks-chain",
]


@pytest.mark.parametrize("case", REFUSALS)
async def test_tls_refuses_what_it_must(tmp_path: Path, pki: Pki, case: str) -> None:
    """Each broken trust relation keeps the gateway from connecting, with the reason logged."""
    server = {
        "expired-server": pki.leaf("server", pki.ca, "127.0.0.1", expired=True),
        "hostname-mismatch": pki.leaf("server", pki.ca, "other.example"),
    }.get(case) or pki.leaf("server", pki.ca, "127.0.0.1", "localhost")
    broker = SecureBroker(tmp_path / "broker", pki, server=server)
    broker.start()
    try:
        trust = pki.other_ca if case in ("wrong-ca", "insecure-still-checks-chain") else pki.ca
        issuer = pki.other_ca if case == "foreign-client-cert" else pki.ca
        cert, key = pki.leaf("client", issuer, "gw-test", expired=case == "expired-client-cert")
        tls: dict[str, Any] = {"ca_file": pki.pem("ca-trust", trust.cert_pem)}
        if case != "no-client-cert":
            tls |= {"cert_file": cert, "key_file": key}
        if case == "insecure-still-checks-chain":
            tls["insecure"] = True
        ok, logs = await connects(gateway_config(tmp_path, broker.tls_port, tls=tls), 2.5)
    finally:
        broker.stop()
    assert not ok, f"{case}: connected although it must not"
    errors = [e for e in logs if e["event"] == "mqtt_disconnected"]
    assert errors, f"{case}: no reason logged"


async def test_password_login_accepted_and_wrong_password_refused(
    tmp_path: Path, secure_broker: SecureBroker
) -> None:
    """A 0600 password file with the right password logs in; a wrong one is refused."""
    good = tmp_path / "password"
    good.write_text(PASSWORD + "\n")
    good.chmod(0o600)
    cfg = gateway_config(tmp_path, secure_broker.auth_port, username=USER, password_file=str(good))
    ok, _ = await connects(cfg, 10)
    assert ok
    good.write_text("wrong-password\n")
    cfg = gateway_config(tmp_path, secure_broker.auth_port, username=USER, password_file=str(good))
    ok, logs = await connects(cfg, 3)
    assert not ok
    assert any(e["event"] == "mqtt_disconnected" for e in logs)
