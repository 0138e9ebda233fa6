"""One daemon per state directory: an exclusive ``flock`` on ``STATE_DIR/gateway.lock``.

Two daemons on one buffer write the same SQLite file with their own seq counters and fight over
one MQTT client id (issue 14): events are duplicated and the link flaps. ``run`` takes this lock
before the buffer opens and holds it for the life of the process; the kernel drops it when the
process ends however it ends (SIGKILL, power cut), so a stale file never blocks a restart. The
file holds the pid of the holder, for the message a second ``run`` prints and for ``status``.

Read-only commands (``status``) never take it: they only ask whether someone holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

LOCK_NAME = "gateway.lock"

_TRIES = 5
"""``status`` probes with a shared lock held for microseconds: a daemon starting at that very
moment tries again a few times (10 ms apart) before it believes another daemon holds it."""


class AlreadyRunningError(RuntimeError):
    """Another process holds the state directory's lock."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        self.state_dir = state_dir
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(f"already running ({who}) on {state_dir}")


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip() or "x")
    return None


class StateLock:
    """The held lock; :meth:`release` (or process exit) gives it up."""

    def __init__(self, state_dir: Path, fd: int) -> None:
        self.state_dir = state_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        """Take the lock, creating the directory (0700) if needed.

        Raises :class:`AlreadyRunningError` if another process holds it, ``OSError`` if the
        directory or the file cannot be created.
        """
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            for attempt in range(_TRIES):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == _TRIES - 1:
                        raise AlreadyRunningError(state_dir, _read_pid(fd)) from None
                    time.sleep(0.01)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(state_dir, fd)

    def release(self) -> None:
        """Give the lock up (the file stays: removing it would race a starting daemon)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def holder(state_dir: Path) -> int | None:
    """The pid of the daemon holding ``state_dir``'s lock, or None if none does.

    Probes with a shared lock, taken and dropped at once: never blocks, never writes.
    A holder whose pid cannot be read is reported as 0.
    """
    try:
        fd = os.open(state_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            return 0 if pid is None else pid
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
