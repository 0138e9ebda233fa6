"""Starting on a buffer written by release 1: the ids are packed, systemd hears progress."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from pathlib import Path

import pytest

from buffer import schema
from buffer.event_ids import id_text
from simulators.broker import MosquittoBroker
from tests.support import make_v1_buffer, running_gateway, write_config


async def test_start_on_a_v1_buffer_extends_the_start_timeout_then_is_ready(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before READY=1, each packed chunk asks systemd for 30 s more and says how far it got."""
    monkeypatch.setattr(schema, "PACK_CHUNK", 1000)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    ids = [f"0190a3b4-1111-7222-8333-{n:012x}" for n in range(3000)]
    make_v1_buffer(state / "buffer.db", list(ids))
    config = write_config(
        tmp_path / "gateway.toml", mqtt_port=broker.port, state_dir=state, devices=[]
    )
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(notify_path))
        systemd.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
        async with running_gateway(config):
            # In a thread: the gateway may still be starting (packing, READY=1) in this loop,
            # which a blocking recv here would stall until it timed out.
            heard = [(await asyncio.to_thread(systemd.recv, 4096)).decode() for _ in range(5)]
    assert heard[:4] == [
        *(f"EXTEND_TIMEOUT_USEC=30000000\nSTATUS=packing event ids: {p} %" for p in (33, 66, 100)),
        "EXTEND_TIMEOUT_USEC=30000000\nSTATUS=counting buffered events: 100 %",  # v4
    ]
    assert heard[4].startswith("READY=1")
    with sqlite3.connect(state / "buffer.db") as conn:
        stored = [id_text(i) for (i,) in conn.execute("SELECT id FROM events ORDER BY rowid")]
        assert conn.execute("PRAGMA user_version").fetchone() == (schema.SCHEMA_VERSION,)
    assert stored == ids
