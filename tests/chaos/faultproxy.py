"""A small asyncio TCP proxy on loopback that breaks connections the ways real networks do.

The gateway connects to the proxy instead of the broker. A test switches the proxy's mode:

- ``cut``: every open connection is reset (RST on both sides, SO_LINGER 0), as a router reboot.
- ``blackhole``: bytes stop flowing both ways, new connections are accepted and then starve;
  nothing is closed and no RST is sent, as a dropped link or a stateful firewall losing its
  table. Only keepalives and publish timeouts can tell.
- ``drip``: bytes flow, a few at a time (``drip_bytes`` every ``drip_interval``), as a
  saturated cellular uplink.
- ``half_open``: the broker side of every open connection is closed (the broker sees the client
  go), while the client side stays open and whatever it sends is swallowed; new connections
  work. The gateway must notice on its own that nobody is listening.
- ``delay``: bytes from the broker reach the client ``delay`` seconds late, in order (CONNACK,
  PUBACK, SUBACK all late), as a slow broker; the client's bytes go through at once.
- ``delay_requests``: bytes from the client reach the broker ``delay`` seconds late, in order,
  as a slow uplink; the broker's bytes go through at once. A client that closes its socket is
  done long before the broker has read what it wrote last.
- ``pass``: forward normally (the default, and what ``heal`` returns to).

Counters say what happened, so a test can assert that its fault really landed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from typing import Literal, Self

Mode = Literal["pass", "blackhole", "drip", "delay", "delay_requests"]


@dataclass(eq=False)  # hashed by identity: links live in a set
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    half_open: bool = False


class FaultProxy:
    """Forward ``127.0.0.1:port`` to ``target``; inject faults with the methods below."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        drip_bytes: int = 16,
        drip_interval: float = 0.05,
        delay: float = 1.0,
    ) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = 0
        self.mode: Mode = "pass"
        self.drip_bytes = drip_bytes
        self.drip_interval = drip_interval
        self.delay = delay
        self.accepted = 0
        self.resets = 0
        self.half_opened = 0
        self.accept_times: list[float] = []
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        """Listen on a free loopback port (``self.port``)."""
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        self.cut()
        if self._server is not None:
            await self._server.wait_closed()
        tasks = [t for link in list(self._links) for t in link.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- faults ------------------------------------------------------------------------------

    def heal(self) -> None:
        """Back to normal forwarding for existing and new connections."""
        self.mode = "pass"
        self._flowing.set()

    def blackhole(self) -> None:
        """Stop all bytes, keep all sockets open, send no RST."""
        self.mode = "blackhole"
        self._flowing.clear()

    def drip(self) -> None:
        """Forward slowly: ``drip_bytes`` per ``drip_interval`` in each direction."""
        self.mode = "drip"
        self._flowing.set()

    def delay_replies(self, seconds: float | None = None) -> None:
        """Deliver the broker's bytes ``seconds`` (default ``self.delay``) late, in order."""
        if seconds is not None:
            self.delay = seconds
        self.mode = "delay"
        self._flowing.set()

    def delay_requests(self, seconds: float | None = None) -> None:
        """Deliver the client's bytes ``seconds`` (default ``self.delay``) late, in order."""
        if seconds is not None:
            self.delay = seconds
        self.mode = "delay_requests"
        self._flowing.set()

    def cut(self) -> None:
        """Reset every open connection now (RST, not FIN)."""
        for link in list(self._links):
            self.resets += 1
            for writer in (link.client, link.upstream):
                if writer is not None:
                    _reset(writer)
            for task in link.tasks:
                task.cancel()
            self._links.discard(link)

    def half_open(self) -> None:
        """Close the broker side of every open connection; the client side stays, silent."""
        for link in list(self._links):
            if link.upstream is not None and not link.half_open:
                link.half_open = True
                self.half_opened += 1
                link.upstream.close()

    @property
    def open_connections(self) -> int:
        """Client connections currently held."""
        return len(self._links)

    # --- plumbing ----------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.accept_times.append(asyncio.get_running_loop().time())
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, link, to_upstream=True)),
            asyncio.create_task(self._pipe(up_reader, writer, link, to_upstream=False)),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        self._links.discard(link)
        for w in (writer, up_writer):
            w.close()

    def _delayed(self, *, to_upstream: bool) -> bool:
        """Whether this direction's bytes are held back ``delay`` seconds now."""
        if to_upstream:
            return self.mode == "delay_requests"
        return self.mode == "delay"

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        link: _Link,
        *,
        to_upstream: bool,
    ) -> None:
        while True:
            await self._flowing.wait()
            size = self.drip_bytes if self.mode == "drip" else 65536
            try:
                data = await src.read(size)
            except (ConnectionError, OSError):
                data = b""
            if not data:
                if link.half_open:
                    return
                if self._delayed(to_upstream=to_upstream):
                    asyncio.get_running_loop().call_later(self.delay, dst.close)
                else:
                    dst.close()
                return
            while not self._flowing.is_set():  # blackholed mid-read: hold the bytes
                await self._flowing.wait()
            if link.half_open:
                if to_upstream:
                    continue  # swallowed: the broker is not there any more
                return
            if self._delayed(to_upstream=to_upstream):
                # Timers fire in order of their due time, so the bytes keep their order.
                asyncio.get_running_loop().call_later(self.delay, _write_quietly, dst, data)
                continue
            dst.write(data)
            with contextlib.suppress(ConnectionError, OSError):
                await dst.drain()
            if self.mode == "drip":
                await asyncio.sleep(self.drip_interval)


def _write_quietly(writer: asyncio.StreamWriter, data: bytes) -> None:
    if not writer.is_closing():
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.write(data)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST: SO_LINGER on with a zero timeout discards the send queue."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
