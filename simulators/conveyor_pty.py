"""A serial null-modem cable made of two ptys, for Modbus RTU without hardware.

pymodbus's serial server opens its port by path, and so does the driver; a single pty has a path
only at its slave end. So the simulator opens two pty pairs and copies bytes between their
masters: the server opens one slave, the driver the other (through a symlink, as udev's
``/dev/serial/by-id`` links). Both slaves are held open here and set raw, so neither side sees a
hang-up or echoed bytes while the other is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from pathlib import Path


class PtyCable:
    """Two ptys joined master to master; ``device_path`` for the server, ``link`` for clients."""

    def __init__(self, link: Path) -> None:
        self.link = Path(link)
        self.device_path = ""
        self._fds: list[int] = []
        self._masters: tuple[int, int] | None = None

    def open(self) -> None:
        """Create the ptys, start copying, point ``link`` at the client end."""
        loop = asyncio.get_running_loop()
        master_a, slave_a = os.openpty()
        master_b, slave_b = os.openpty()
        self._fds = [master_a, slave_a, master_b, slave_b]
        for fd in (slave_a, slave_b):
            tty.setraw(fd)
        for fd in (master_a, master_b):
            os.set_blocking(fd, False)
        self._masters = (master_a, master_b)
        loop.add_reader(master_a, self._copy, master_a, master_b)
        loop.add_reader(master_b, self._copy, master_b, master_a)
        self.device_path = os.ttyname(slave_a)
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        self.link.symlink_to(os.ttyname(slave_b))

    def _copy(self, source: int, target: int) -> None:
        try:
            data = os.read(source, 4096)
        except OSError:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(target, data)

    def close(self) -> None:
        """Stop copying, close every fd, remove the link."""
        if self._masters is not None:
            loop = asyncio.get_running_loop()
            for fd in self._masters:
                loop.remove_reader(fd)
            self._masters = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
