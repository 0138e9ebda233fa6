"""`edge-gateway demo` as operators run it: in a pipe, stopped by any signal (issue 14, item 4)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
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


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


class DemoWatch:
    """One demo's own processes and private directories, told apart from another demo's.

    Another test (another pytest-xdist worker) may run a demo at the same time, so "demo
    processes that were not there before" is not "this demo's". A thread samples this demo's
    descendants every few milliseconds while it runs and keeps the private directories their
    command lines name (``/tmp/edge-gateway-demo-*``): whatever names them after the demo
    ended outlived it, even once reparented to PID 1.
    """

    def __init__(self, demo: subprocess.Popen[bytes]) -> None:
        self.demo = demo
        self.directories: set[bytes] = set()
        self.programs: set[bytes] = set()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            done = self.demo.poll() is not None
            for pid in _demo_processes(b""):
                ancestor: int | None = pid
                while ancestor not in (None, 0, 1, self.demo.pid):
                    ancestor = _parent(ancestor)
                if ancestor == self.demo.pid:
                    self._note(pid)
            if done:
                return
            time.sleep(0.005)

    def _note(self, pid: int) -> None:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        self.directories.update(re.findall(rb"edge-gateway-demo-[A-Za-z0-9_-]+", cmdline))
        self.programs.add(cmdline.split(b"\0", 1)[0].rsplit(b"/", 1)[-1])

    def ran(self, program: bytes) -> bool:
        """Whether a process of this demo running ``program`` (its file name) was seen."""
        return program in self.programs

    def leftovers(self) -> tuple[list[int], list[str]]:
        """Processes and directories of this demo that still exist (after it ended)."""
        self._thread.join(10)
        pids = [
            pid
            for pid in _demo_processes(b"")
            if any(d in Path(f"/proc/{pid}/cmdline").read_bytes() for d in self.directories)
        ]
        tmp = Path(tempfile.gettempdir())
        return pids, [d.decode() for d in self.directories if (tmp / d.decode()).exists()]


def _until_gone(watch: DemoWatch) -> tuple[list[int], list[str]]:
    """Leftovers after up to 5 s of letting them go."""
    deadline = time.monotonic() + 5
    left = watch.leftovers()
    while (left[0] or left[1]) and time.monotonic() < deadline:
        time.sleep(0.1)
        left = watch.leftovers()
    return left


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
    demo = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--scanners", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    watch = DemoWatch(demo)
    try:
        assert demo.stdout is not None
        first = demo.stdout.readline().decode()  # blocks until the first progress line
        assert first.startswith("demo "), first
        assert "stored" in first and "good-feedback p99" in first
        assert re.search(r"ledger \d+ events, parity \d+/\d+ devices", first), first
        assert watch.ran(b"mosquitto"), "the demo's private Mosquitto was not found"
        assert watch.ran(b"postgres"), "the demo's private PostgreSQL was not found"
        demo.send_signal(sig)
        out, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, err.decode()[-2000:]
    assert b"Traceback" not in err
    assert _until_gone(watch) == ([], []), "the demo's broker, database or directory outlived it"
    assert b"edge-gateway demo" in out  # the final frame is still drawn once


@pytest.mark.slow
@pytest.mark.parametrize("phase", [b"initdb", b"postgres"])
def test_a_signal_while_the_database_starts_leaves_nothing_behind(phase: bytes) -> None:
    """SIGTERM while the demo's initdb runs (its modules still importing), or once its
    postgres runs: no initdb, no postgres, no broker and no temporary directory outlives it.

    The signal waits for the process of that phase to appear rather than for a fixed delay:
    on a loaded box a fixed 0.2 s could come before Python had installed any handler (exit
    -15, a test of nothing), or after the phase had passed.
    """
    demo = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--scanners", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    watch = DemoWatch(demo)
    try:
        deadline = time.monotonic() + 30
        while not watch.ran(phase) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert watch.ran(phase), f"the demo's {phase.decode()} never ran"
        demo.send_signal(signal.SIGTERM)
        _, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, err.decode()[-2000:]
    assert b"Traceback" not in err, err.decode()[-2000:]
    assert _until_gone(watch) == ([], []), "initdb, postgres, the broker or a directory outlived it"
