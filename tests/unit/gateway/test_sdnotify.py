"""sd_notify against real datagram sockets, as systemd would listen."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from gateway.sdnotify import notify


def test_sends_one_datagram_to_a_path_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fields are newline-joined in one datagram."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify("READY=1", "STATUS=running") is True
        assert server.recv(4096) == b"READY=1\nSTATUS=running"


def test_abstract_socket_with_at_sign(monkeypatch: pytest.MonkeyPatch) -> None:
    """A leading @ names an abstract socket."""
    name = f"edge-gateway-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("WATCHDOG=1") is True
        assert server.recv(4096) == b"WATCHDOG=1"


def test_no_socket_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Outside systemd, or with the socket gone, notify says False and never raises."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing.sock"))
    assert notify("READY=1") is False
