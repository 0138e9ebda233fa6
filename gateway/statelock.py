"""One daemon per state directory: an exclusive ``flock`` on the state directory itself.

Two daemons on one buffer write the same SQLite file with their own seq counters and fight over
one MQTT client id (issue 14): events are duplicated and the link flaps. ``run`` takes this lock
before the buffer opens and holds it for the life of the process; the kernel drops it when the
process ends however it ends (SIGKILL, power cut), so nothing stale ever blocks a restart.

The lock is on the directory, not on a file in it: a lock file can be deleted while its holder
runs (``rm /var/lib/edge-gateway/*.lock``, a technician clearing "stale locks"), and a second
daemon would then lock a new file of the same name and run beside the first on one buffer
(issue 14 audit). The directory cannot be swapped without moving the buffer with it, and a
symlink or bind mount of it is the same inode, so the same lock. ``STATE_DIR/gateway.lock``
holds the holder's pid (its modification time is when it started), for the message a second
``run`` prints and for ``status``; when it is gone, the pid is taken from ``/proc/locks``.

Read-only commands (``status``) never take it: they only ask whether someone holds it, with a
shared lock taken and dropped at once. A daemon that finds only such shared holders waits for
them to go (:data:`SHARED_WAIT_S`) instead of taking them for another daemon.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path

LOCK_NAME = "gateway.lock"
"""The pid file beside the lock (the lock itself is on the directory)."""

SHARED_WAIT_S = 10.0
"""How long a starting daemon waits for shared holders (``status`` probes, each holding it for
microseconds unless stopped or starved of CPU) before it gives up."""

_RETRY_S = 0.01


class AlreadyRunningError(RuntimeError):
    """Another process holds the state directory's lock."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        self.state_dir = state_dir
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"already running ({who}) on {state_dir}")


def _open_dir(state_dir: Path) -> int:
    return os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _pid_in_file(state_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((state_dir / LOCK_NAME).read_text(encoding="ascii").strip() or "x")
    return None


def _pid_in_proc_locks(fd: int) -> int | None:
    """The pid holding an exclusive flock on ``fd``'s inode, from ``/proc/locks``."""
    st = os.fstat(fd)
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 12345 fe:00:2154359 0 EOF" ("->" marks a waiter)
        if len(fields) >= 6 and fields[1:4] == ["FLOCK", "ADVISORY", "WRITE"]:
            with contextlib.suppress(ValueError):
                if fields[5] == device and int(fields[4]) > 0:
                    return int(fields[4])
    return None


def _holder_pid(state_dir: Path, fd: int) -> int | None:
    """Who holds the lock: the pid file, else (deleted, or not written yet) ``/proc/locks``.

    The file first: it is the pid in the daemon's own pid namespace, as in ``mqtt-link.json``
    (``/proc/locks`` shows it as this process's namespace sees it).
    """
    return _pid_in_file(state_dir) or _pid_in_proc_locks(fd)


def _lock_exclusive(fd: int, state_dir: Path) -> None:
    deadline = time.monotonic() + SHARED_WAIT_S
    while True:
        with contextlib.suppress(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        # Held: by a daemon (exclusive), or only by status probes (shared)?
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunningError(state_dir, _holder_pid(state_dir, fd)) from None
        fcntl.flock(fd, fcntl.LOCK_UN)
        if time.monotonic() >= deadline:
            raise BlockingIOError(
                errno.EWOULDBLOCK,
                f"held shared by another process for {SHARED_WAIT_S:.0f} s"
                " (a stopped `edge-gateway status`?)",
            )
        time.sleep(_RETRY_S)


class StateLock:
    """The held lock; :meth:`release` (or process exit) gives it up."""

    def __init__(self, state_dir: Path, fd: int) -> None:
        self.state_dir = state_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        """Take the lock, creating the directory (0700) if needed, and write the pid file.

        Raises :class:`AlreadyRunningError` if another process holds it, ``OSError`` if the
        directory cannot be created or locked. A refused daemon writes nothing.
        """
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = _open_dir(state_dir)
        try:
            _lock_exclusive(fd, state_dir)
            pid_file = os.open(
                state_dir / LOCK_NAME, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            try:
                os.ftruncate(pid_file, 0)
                os.pwrite(pid_file, f"{os.getpid()}\n".encode(), 0)
            finally:
                os.close(pid_file)
        except BaseException:
            os.close(fd)
            raise
        return cls(state_dir, fd)

    def release(self) -> None:
        """Empty the pid file, then give the lock up (the file stays, empty)."""
        if self._fd is not None:
            if _pid_in_file(self.state_dir) == os.getpid():  # still ours: we hold the lock
                with contextlib.suppress(OSError):
                    os.truncate(self.state_dir / LOCK_NAME, 0)
            os.close(self._fd)
            self._fd = None


def holder(state_dir: Path) -> int | None:
    """The pid of the daemon holding ``state_dir``'s lock, or None if none does.

    Probes with a shared lock, taken and dropped at once: never blocks, never writes.
    A holder whose pid cannot be found is reported as 0. A state directory that does not exist
    has no holder; one this user may not open raises ``PermissionError``.
    """
    try:
        fd = _open_dir(state_dir)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder_pid(state_dir, fd)
            return 0 if pid is None else pid
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
