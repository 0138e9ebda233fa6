"""Builders for central tests: CloudEvents as the gateway writes them, and that gateway's config."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from central.validate import Event, Validator
from simulators.broker import MosquittoBroker
from simulators.scanner import ScannerSimulator
from tests.support import scanner_device, write_config

SCAN = "warehouse.barcode.scanned.v1"


def scan_event(
    seq: int,
    *,
    site: str = "s1",
    gateway: str = "gw1",
    device: str = "dock",
    code: str = "0123456789012",
    event_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A barcode scan CloudEvent."""
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": f"/{site}/{gateway}/{device}",
        "type": SCAN,
        "time": "2026-11-30T10:00:00.000001Z",
        "seq": seq,
        "datacontenttype": "application/json",
        "data": {"code": code},
        **extra,
    }


def topic_of(event: dict[str, Any], prefix: str = "edge") -> str:
    """The events topic that matches the event's source."""
    _, site, gateway, device = event["source"].split("/")
    return f"{prefix}/{site}/{gateway}/events/{device}"


def raw(event: dict[str, Any]) -> bytes:
    """As sent on the wire."""
    return json.dumps(event).encode()


def events(*bodies: dict[str, Any]) -> list[Event]:
    """The bodies as the ledger takes them: checked by the validator, each one valid."""
    validator = Validator(prefix="edge", max_payload=65536, keep_bytes=100)
    out = [validator.check(topic_of(b), raw(b)) for b in bodies]
    assert all(isinstance(e, Event) for e in out), out
    return out  # type: ignore[return-value]


def gateway_config(
    tmp_path: Path, broker: MosquittoBroker, scanner: ScannerSimulator, *, confirm: str
) -> Path:
    """The gateway central's tests run: ``gw-1`` at site ``dc-1`` with one scanner, ``dock-1``,
    confirmed at ``confirm``, a checkpoint every 0.3 s so parity and replay move quickly."""
    return write_config(
        tmp_path / "gateway.toml",
        mqtt_port=broker.port,
        state_dir=tmp_path / "state",
        devices=[scanner_device("dock-1", scanner.link, confirm=confirm)],
        gateway={"id": "gw-1", "site": "dc-1"},
        mqtt={"checkpoint_interval": 0.3},
    )
