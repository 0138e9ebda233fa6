"""One writer per buffer file: an exclusive ``flock`` on ``buffer.db.lock`` beside it.

Each writer keeps its own in-memory seq counters, so two of them on one file hand out the same
seq twice (found by the issue 13 review: once the first writer's rows are pruned, the second's
``seq 1`` no longer even collides). The daemon already holds the state directory's lock
(gateway/statelock.py); this one belongs to the buffer itself, so no other way of opening it
(a second ``Buffer`` in one process, a tool, a future command) can get around it. The kernel
drops it when the process ends, however it ends.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from buffer.schema import BufferOpenError


def take(path: Path) -> int:
    """Lock ``path`` for writing; returns the descriptor to :func:`release`."""
    lock = Path(f"{path}.lock")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BufferOpenError(f"{path}: cannot create buffer file: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BufferOpenError(
            f"{path}: another writer has this buffer open (is another edge-gateway running on"
            " this state_dir?); it was left as it is"
        ) from None
    return fd


def release(fd: int) -> None:
    """Give the lock up (closing the descriptor drops it)."""
    os.close(fd)
