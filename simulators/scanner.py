"""A serial barcode scanner on a pseudo-terminal: what the driver tests and the demo plug in.

A pty is a real serial port as far as pyserial is concerned (termios, EIO on hang-up), so the
driver runs unmodified against it, including unplug and replug. The simulator points a symlink
at the pty's slave, the way udev's ``/dev/serial/by-id`` links point at ``/dev/ttyUSB*``.

Two Linux pty details make it exact rather than timing-based: poll() on the master reports
POLLHUP while nobody has the slave open (so we see the gateway open and close the port), and in
packet mode (TIOCPKT) the master is told when the slave flushes its input, which pyserial does
on open: codes typed before that flush would be silently lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import itertools
import os
import select
import signal
import struct
import sys
import termios
import time
import tty
from pathlib import Path
from typing import TYPE_CHECKING, Self

from simulators.barcodes import GENERATORS, generate

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

_POLL_INTERVAL = 0.01
_TERMINATORS = {"cr": b"\r", "lf": b"\n", "crlf": b"\r\n"}


class ScannerSimulator:
    """One simulated scanner; ``feedback`` holds (monotonic time, bytes) read from the gateway.

    Feedback entries are reads from the pty, so two writes in quick succession may arrive as
    one entry: match on ``b"".join`` of them (what ``wait_feedback`` hands a predicate).
    """

    def __init__(
        self,
        link: Path,
        *,
        terminator: bytes = b"\r",
        aim: str | None = None,
        stx_etx: bool = False,
        settle: float = 1.0,
    ) -> None:
        self.link = Path(link)
        self.terminator = terminator
        self.aim = aim
        self.stx_etx = stx_etx
        self.settle = settle  # longest wait for the post-open flush, for openers that skip it
        self.feedback: list[tuple[float, bytes]] = []
        self.slave_path: str | None = None
        self._master: int | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()
        self._flushed = asyncio.Event()
        self._opened_at = 0.0
        self._fed = asyncio.Event()

    @property
    def plugged(self) -> bool:
        """Whether the simulated device exists (started or replugged, not unplugged)."""
        return self._master is not None

    @property
    def is_open(self) -> bool:
        """Whether someone (the gateway) has the port open right now."""
        return self._opened.is_set()

    async def start(self) -> None:
        """Create the pty and the symlink; the port then waits to be opened."""
        if self._master is not None:
            raise RuntimeError("already plugged")
        master, slave = os.openpty()
        tty.setraw(slave)
        fcntl.ioctl(master, termios.TIOCPKT, struct.pack("i", 1))
        self.slave_path = os.ttyname(slave)
        os.close(slave)  # ours would hide the gateway's open and close from POLLHUP
        os.set_blocking(master, False)
        self._master = master
        tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.{id(self)}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.slave_path)
        tmp.replace(self.link)  # atomic: the link never dangles half-updated
        self._watcher = asyncio.get_running_loop().create_task(self._watch(master))

    async def wait_opened(self, timeout: float | None = 5.0) -> None:
        """Wait until the port is open and its opener has flushed input (or ``settle`` passed)."""
        async with asyncio.timeout(timeout):
            await self._opened.wait()
            remaining = self._opened_at + self.settle - asyncio.get_running_loop().time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(remaining, 0)):
                    await self._flushed.wait()

    async def type_code(self, code: str, *, aim: str | None = None) -> None:
        """Send a scan: AIM id (``aim`` or the default, "" for none), code, terminator or ETX.

        With ``stx_etx`` the frame is STX + AIM id + code + ETX, without the terminator.
        """
        prefix = self.aim if aim is None else aim
        body = f"{prefix or ''}{code}".encode()
        await self.write_raw(b"\x02" + body + b"\x03" if self.stx_etx else body + self.terminator)

    async def write_raw(self, data: bytes) -> None:
        """Send bytes as they are: for noise, split frames and other abuse."""
        view = memoryview(data)
        while view:
            if self._master is None:
                raise RuntimeError("scanner is unplugged")
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            view = view[written:]

    async def wait_taken(self, timeout: float | None = 5.0) -> None:
        """Wait until the gateway has read every byte typed so far off the port.

        Polls the slave side through a descriptor of our own: the kernel moves bytes still in
        the pty's flip buffer to the line discipline before it answers a poll, so "nothing to
        read" means the gateway took them all (we never read from it ourselves).
        """
        if self.slave_path is None:
            raise RuntimeError("scanner is unplugged")
        fd = os.open(self.slave_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            async with asyncio.timeout(timeout):
                while any(events & select.POLLIN for _, events in poller.poll(0)):  # noqa: ASYNC110
                    await asyncio.sleep(_POLL_INTERVAL)
        finally:
            os.close(fd)

    def feedback_bytes(self) -> bytes:
        """Everything received from the gateway so far, concatenated."""
        return b"".join(data for _, data in self.feedback)

    async def wait_feedback(
        self,
        until: int | Callable[[bytes], bool],
        timeout: float | None = 5.0,
    ) -> bytes:
        """Wait until ``until`` entries arrived, or ``until(all bytes so far)`` is true."""
        async with asyncio.timeout(timeout):
            while True:
                received = self.feedback_bytes()
                done = len(self.feedback) >= until if isinstance(until, int) else until(received)
                if done:
                    return received
                self._fed.clear()
                await self._fed.wait()

    async def unplug(self) -> None:
        """Pull the cable: the link goes (as udev removes it), then the master: reads get EIO."""
        # Link first: left dangling it could reach another process's pty under a reused number.
        if self._master is not None and self.link.is_symlink():
            self.link.unlink(missing_ok=True)
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        self._stop_reading()
        if self._master is not None:
            os.close(self._master)
            self._master = None

    async def replug(self) -> None:
        """Plug in again: a new pty behind the same link path (created atomically)."""
        await self.unplug()
        await self.start()

    async def close(self) -> None:
        """Unplug for good: the pty and the link go away."""
        await self.unplug()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _watch(self, master: int) -> None:
        """Follow the slave side being opened and closed (POLLHUP), reading only while open."""
        poller = select.poll()
        poller.register(master, select.POLLIN)
        loop = asyncio.get_running_loop()
        while True:
            hung_up = any(events & select.POLLHUP for _, events in poller.poll(0))
            if not hung_up and not self._opened.is_set():
                self._opened_at = loop.time()
                self._opened.set()
                loop.add_reader(master, self._on_readable)
            elif hung_up and self._opened.is_set():
                self._on_readable()  # what the gateway wrote just before closing
                self._stop_reading()
            await asyncio.sleep(_POLL_INTERVAL)

    def _on_readable(self) -> None:
        if self._master is None:
            return
        try:
            packet = os.read(self._master, 4097)
        except BlockingIOError:
            return
        except OSError:  # EIO: the gateway closed the port; the watcher resumes on reopen
            self._stop_reading()
            return
        if packet[:1] == bytes([termios.TIOCPKT_DATA]):
            if packet[1:]:
                self.feedback.append((time.monotonic(), packet[1:]))
                self._fed.set()
        elif packet and packet[0] & termios.TIOCPKT_FLUSHREAD:
            self._flushed.set()

    def _stop_reading(self) -> None:
        if self._opened.is_set() and self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
        self._opened.clear()
        self._flushed.clear()


def _escape(data: bytes) -> str:
    return data.decode("latin-1").encode("unicode_escape").decode("ascii")


def _codes(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    """(code, aim) pairs to type; AIM ids come from --aim, else from the generator."""
    given: list[str] = list(args.code or [])
    if args.codes:
        given += [x for x in Path(args.codes).read_text(encoding="utf-8").splitlines() if x.strip()]
    given = [code.replace("<GS>", "\x1d") for code in given]
    source: Iterable[tuple[str, str]]
    if given:
        count = args.count if args.count is not None else len(given)
        source = itertools.islice(itertools.cycle([(code, "") for code in given]), count)
    else:
        source = generate(args.generate or "mixed", count=args.count)
    for code, aim in source:
        yield code, {"auto": aim, "none": ""}.get(args.aim, args.aim)


async def _run(args: argparse.Namespace) -> None:
    terminator = _TERMINATORS[args.terminator]
    async with ScannerSimulator(
        Path(args.link), terminator=terminator, stx_etx=args.stx_etx
    ) as sim:
        print(f"scanner on {sim.slave_path}, link {sim.link}; waiting for the port to open")
        printer = asyncio.create_task(_print_feedback(sim))
        for number, (code, aim) in enumerate(_codes(args), start=1):
            await sim.wait_opened(timeout=None)
            await sim.type_code(code, aim=aim)
            print(f"typed {number}: {_escape((aim + code).encode())}", flush=True)
            await asyncio.sleep(1 / args.rate)
        await asyncio.sleep(args.linger)
        printer.cancel()


async def _print_feedback(sim: ScannerSimulator) -> None:
    seen = 0
    while True:
        await sim.wait_feedback(seen + 1, timeout=None)
        for _, data in sim.feedback[seen:]:
            print(f"feedback: {data.hex(' ')}  {_escape(data)}", flush=True)
        seen = len(sim.feedback)


def _rate(text: str) -> float:
    value = float(text.removesuffix("/s"))
    if value <= 0:
        raise argparse.ArgumentTypeError("rate must be > 0")
    return value


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m simulators.scanner --link /tmp/ttyScanner --generate mixed --rate 2``."""
    parser = argparse.ArgumentParser(
        prog="python -m simulators.scanner", description="A serial barcode scanner on a pty."
    )
    parser.add_argument("--link", required=True, help="symlink to create, pointing at the pty")
    parser.add_argument("--rate", type=_rate, default=1.0, help="scans per second, e.g. 5 or 5/s")
    parser.add_argument("--count", type=int, help="stop after N scans")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--codes", help="file with one code per line, <GS> = 0x1D")
    source.add_argument("--code", action="append", help="a code to type (repeatable); <GS> = 0x1D")
    source.add_argument("--generate", choices=sorted(GENERATORS), help="random valid codes")
    parser.add_argument("--terminator", choices=sorted(_TERMINATORS), default="cr")
    parser.add_argument("--aim", default="auto", help="AIM id for every code, 'none' or 'auto'")
    parser.add_argument("--stx-etx", action="store_true", help="frame codes as STX ... ETX")
    parser.add_argument("--linger", type=float, default=1.0, help="seconds to await feedback")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop (and clean up) as on Ctrl-C
    try:
        asyncio.run(_run(args))
    except KeyboardInterrupt:
        pass
    except (OSError, TimeoutError) as exc:
        print(f"scanner simulator: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
