"""A private PostgreSQL on a free loopback port, for tests, benches and the demo.

Never touches the machine's own server on 5432: it gets its own data directory (``initdb``), its
own port, TCP on 127.0.0.1 only and no Unix socket. ``initdb`` and ``postgres`` refuse to run as
root, so as root both run as the ``postgres`` system user (``runuser``) in a directory that user
owns; as an ordinary user they run as that user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from simulators.broker import free_port


class PostgresUnavailableError(RuntimeError):
    """PostgreSQL's server binaries are not installed."""


def find_pg_bin() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl`` (Debian keeps them off the PATH)."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PostgresUnavailableError(
        "PostgreSQL not found: install it with `apt-get install postgresql` (or ./dev setup)"
    )


class PostgresServer:
    """initdb once, then start, stop, kill -9 and restart one postmaster on a fixed port.

    ``background=True`` only launches ``initdb`` (most of a second) and returns; ``start`` waits
    for it. The demo starts it before importing its modules, so the two overlap.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        durable: bool = True,
        prefix: str = "edge-pg-",
        background: bool = False,
    ) -> None:
        self.bin = find_pg_bin()
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.durable = durable
        self._as_root = os.geteuid() == 0
        # As root, pytest's tmp_path (mode 700, owned by root) is not reachable by "postgres".
        # The prefix names the cluster in `ps` (``-D``): the demo's tests find its server by it.
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix))
        self.datadir = self.workdir / "data"
        self.logfile = self.workdir / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._initdb: subprocess.Popen[bytes] | None = None
        if self._as_root:
            shutil.chown(self.workdir, "postgres", "postgres")
        # --no-sync: every cluster here is thrown away; fsyncing its fresh files cost ~0.2 s.
        initdb = ("-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "-N")
        if background:
            self._initdb = subprocess.Popen(  # noqa: S603 - fixed arguments
                self._command("initdb", *initdb),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=self.workdir,
            )
        else:
            self._run("initdb", *initdb)

    def _wait_initdb(self) -> None:
        """Wait for a background ``initdb``; its error, if it failed."""
        if self._initdb is None:
            return
        _, err = self._initdb.communicate()
        code, self._initdb = self._initdb.returncode, None
        if code != 0:
            raise RuntimeError(f"initdb failed: {err.decode(errors='replace')[-2000:]}")

    @property
    def dsn(self) -> str:
        """A libpq connection string for the ``postgres`` database."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """A libpq connection string for ``database`` on this server."""
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def _command(self, tool: str, *args: str) -> list[str]:
        cmd = [str(self.bin / tool), *args]
        return ["runuser", "-u", "postgres", "--", *cmd] if self._as_root else cmd

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(  # noqa: S603 - fixed arguments
            self._command(tool, *args), capture_output=True, check=False, cwd=self.workdir
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stderr.decode(errors='replace')[-2000:]}")

    def start(self, timeout: float = 30.0) -> None:
        """Start the postmaster and wait until it accepts TCP connections."""
        self._wait_initdb()
        if self.running:
            return
        options = [
            "-D",
            str(self.datadir),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            "unix_socket_directories=",
            "-c",
            "max_connections=100",
        ]
        if not self.durable:  # tests: a kill -9 of the postmaster still keeps the OS cache
            options += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        with self.logfile.open("ab") as log:
            if self._as_root:
                os.chown(self.logfile, *_postgres_ids())
            self.process = subprocess.Popen(  # noqa: S603 - fixed arguments
                self._command("postgres", *options),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.logfile.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"postgres exited with {self.process.returncode}: {tail}")
            if self._ready():
                return
            time.sleep(0.05)
        raise TimeoutError(f"postgres did not accept connections on {self.port} in {timeout}s")

    def _ready(self) -> bool:
        try:
            socket.create_connection((self.host, self.port), 0.2).close()
        except OSError:
            return False
        result = subprocess.run(  # noqa: S603 - fixed arguments
            [str(self.bin / "pg_isready"), "-h", self.host, "-p", str(self.port), "-t", "1"],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast``: clean shutdown, clients disconnected."""
        if not self.running:
            self.process = None
            return
        self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", mode, "-w", "-t", "30")
        assert self.process is not None
        self.process.wait(30)
        self.process = None

    def kill(self) -> None:
        """SIGKILL the postmaster (as a crash would); the children notice and exit."""
        if self.process is None:
            return
        # runuser stays the parent as root: kill the whole session, postmaster included.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 9)
        self.process.wait(10)
        self.process = None
        deadline = time.monotonic() + 10
        pidfile = self.datadir / "postmaster.pid"
        while time.monotonic() < deadline and self._backends_alive(pidfile):
            time.sleep(0.05)

    @staticmethod
    def _backends_alive(pidfile: Path) -> bool:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, 0)
            return True
        return False

    def restart(self) -> None:
        """Stop (fast) and start again on the same port."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """Whether the postmaster process is alive."""
        return self.process is not None and self.process.poll() is None

    def cleanup(self) -> None:
        """Stop (or kill) and remove the data directory."""
        if self._initdb is not None:  # never started: no postmaster, only initdb to end
            self._initdb.terminate()  # as root, runuser passes SIGTERM on to initdb
            try:
                self._initdb.wait(10)
            except subprocess.TimeoutExpired:
                self._initdb.kill()
                self._initdb.wait()
            self._initdb = None
        self._quit()
        with contextlib.suppress(Exception):
            self.stop("immediate")
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _quit(self) -> None:
        """Immediate shutdown: SIGQUIT to the postmaster, without pg_ctl's 100 ms polling.

        It is what ``pg_ctl stop -m immediate`` sends; the demo's exit waited on the polling.
        The postmaster still tells its backends to quit and removes its shared memory, which a
        SIGKILL would leave behind.
        """
        if not self.running:
            return
        assert self.process is not None
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(int((self.datadir / "postmaster.pid").read_text().split()[0]), signal.SIGQUIT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
                self.process = None


def _postgres_ids() -> tuple[int, int]:
    import pwd  # noqa: PLC0415 - only as root

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid
