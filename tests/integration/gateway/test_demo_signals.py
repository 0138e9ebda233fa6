"""`edge-gateway demo` as operators run it: in a pipe, stopped by any signal (issue 14, item 4)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support import ROOT, cli


def _demo_processes(program: bytes) -> list[int]:
    """Pids of ``program`` processes whose command line names a demo's private directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"edge-gateway-demo-" in cmdline and program in cmdline:
            found.append(int(proc.name))
    return found


def _demo_brokers() -> list[int]:
    return _demo_processes(b"mosquitto")


def _demo_databases() -> list[int]:
    """The demo's PostgreSQL (postmaster, its runuser parent as root) and any initdb."""
    return _demo_processes(b"postgres") + _demo_processes(b"initdb")


def _demo_directories() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("edge-gateway-demo-*")}


def test_demo_help_lists_keys_and_defaults() -> None:
    """--help shows every option's default and the keys that work while it runs."""
    result = cli("demo", "--help")
    assert result.returncode == 0
    assert "(default: 2.0)" in result.stdout and "(default: 3)" in result.stdout
    assert "b = stop or start the broker" in result.stdout and "q = quit" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_any_signal_stops_the_demo_and_its_broker(sig: signal.Signals) -> None:
    """Piped stdout gets plain progress lines; a signal stops the demo, exit 0, no broker left."""
    before = set(_demo_brokers())
    before_db = set(_demo_databases())
    demo = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--scanners", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert demo.stdout is not None
        first = demo.stdout.readline().decode()  # blocks until the first progress line
        assert first.startswith("demo "), first
        assert "stored" in first and "good-feedback p99" in first
        assert re.search(r"ledger \d+ events, parity \d+/\d+ devices", first), first
        mine = set(_demo_brokers()) - before
        assert mine, "the demo's private Mosquitto was not found"
        mine_db = set(_demo_databases()) - before_db
        assert mine_db, "the demo's private PostgreSQL was not found"
        demo.send_signal(sig)
        out, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, err.decode()[-2000:]
    assert b"Traceback" not in err
    deadline = time.monotonic() + 5
    while mine & set(_demo_brokers()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not mine & set(_demo_brokers()), "the demo's broker outlived it"
    assert not mine_db & set(_demo_databases()), "the demo's PostgreSQL outlived it"
    assert b"edge-gateway demo" in out  # the final frame is still drawn once


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.2, 0.8])
def test_a_signal_while_the_database_starts_leaves_nothing_behind(delay: float) -> None:
    """SIGTERM during initdb (0.2 s: modules still importing) or right after: no initdb, no
    postgres, no broker and no temporary directory outlives the demo."""
    before, before_dirs = set(_demo_databases()) | set(_demo_brokers()), _demo_directories()
    demo = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--scanners", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        time.sleep(delay)
        demo.send_signal(signal.SIGTERM)
        _, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, err.decode()[-2000:]
    assert b"Traceback" not in err, err.decode()[-2000:]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
        (set(_demo_databases()) | set(_demo_brokers())) - before
        or _demo_directories() - before_dirs
    ):
        time.sleep(0.1)
    assert not (set(_demo_databases()) | set(_demo_brokers())) - before
    assert not _demo_directories() - before_dirs
