"""A private Mosquitto on a free loopback port, for tests and the demo.

Never touches a system broker on 1883: it gets its own config, port and persistence directory.
Persistence is on so that a central subscriber's persistent session survives a broker restart,
as it would with a production broker.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

CANDIDATES = ("mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class BrokerUnavailableError(RuntimeError):
    """Mosquitto is not installed."""


def find_mosquitto() -> str:
    """The mosquitto binary, or a clear error saying how to install it."""
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found:
            return found
    raise BrokerUnavailableError(
        "mosquitto not found: install it with `apt-get install mosquitto` (or run ./dev setup)"
    )


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MosquittoBroker:
    """Start, stop, kill and restart one Mosquitto process on a fixed port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "mosquitto.conf"
        self.config_path.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 100\n"
            # Mosquitto leaves Nagle on by default: small QoS 1 messages to subscribers (and
            # PUBACKs) then wait for delayed ACKs, tens of milliseconds on loopback.
            "set_tcp_nodelay true\n"
            "log_dest stderr\n"
            # As root, Mosquitto would drop to the "mosquitto" user and then fail to write its
            # persistence file here: stay as whoever runs the tests.
            f"user {getpass.getuser()}\n"
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait until the port accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen(  # noqa: S603 - fixed arguments
            [find_mosquitto(), "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "mosquitto.log").open("ab"),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
            ):
                return
            time.sleep(0.02)
        raise TimeoutError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        """Graceful stop (SIGTERM): Mosquitto saves its persistent sessions."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash or power loss would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        """Stop and start on the same port."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None
