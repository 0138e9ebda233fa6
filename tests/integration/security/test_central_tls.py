"""edge-central over mutual TLS to a real Mosquitto, with certificates made here by trustme."""

from __future__ import annotations

from pathlib import Path

import aiomqtt

from central.config import load_central_settings
from tests.integration.central.conftest import running_central, write_central_config
from tests.integration.central.helpers import raw, scan_event, topic_of
from tests.integration.security.conftest import Pki, SecureBroker
from tests.support import wait_until


async def test_central_connects_with_mtls_and_ingests(
    tmp_path: Path, pki: Pki, secure_broker: SecureBroker, pg_dsn: str
) -> None:
    """`[mqtt.tls]` with the broker's CA and a client certificate: events land in the ledger."""
    cert, key = pki.leaf("central", pki.ca, "central-a")
    path = write_central_config(
        tmp_path / "central.toml", broker=secure_broker, dsn=pg_dsn, replay={"enabled": False}
    )
    text = path.read_text().replace(
        f"port = {secure_broker.port}", f"port = {secure_broker.tls_port}"
    )
    ca = pki.pem("ca-trust", pki.ca.cert_pem)
    path.write_text(
        text + f'[mqtt.tls]\nca_file = "{ca}"\ncert_file = "{cert}"\nkey_file = "{key}"\n'
    )
    settings = load_central_settings(path)
    assert settings.mqtt.tls is not None
    body = scan_event(1)
    async with running_central(settings) as central:
        async with aiomqtt.Client(secure_broker.host, secure_broker.port) as client:  # plain
            await client.publish(topic_of(body), raw(body), qos=1)
        await wait_until(lambda: central.totals["stored"] == 1, timeout=10)
