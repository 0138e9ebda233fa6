"""A simulated LLRP reader on TCP: enough of an Impinj reader for the driver and for sllurp.

It answers capabilities (the recorded Impinj response, re-stamped), reader config, ROSpec
add/enable/start/stop/delete, keepalives and GPO writes (recorded for tests), honours GPI start
and stop triggers, and streams RO_ACCESS_REPORTs for a scripted ``Population``. Faults on demand:
drop the connection, go silent (no answers, keepalives or reports), refuse connections, fail a
request, send raw bytes, flood KEEPALIVEs without reading.

Run alone: ``python -m simulators.llrp_cli --port 5084 --tags 40 --rate 20``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Self

from simulators import llrp_wire as w
from simulators.llrp_population import Population

VECTORS = Path(__file__).resolve().parent / "data" / "llrp"
_CAPS_FILE = "caps_impinj_get_reader_capabilities_response.bin"
_CONFIG_FILE = "get_reader_config_response_impinj.bin"


class LlrpReaderSimulator:
    """One reader, one client at a time, like the real thing."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        antennas: int = 4,
        gpis: int = 4,
        gpos: int = 4,
        tick_s: float = 0.01,
        seed: int = 1,
        clock_offset_s: float = 0.0,
        vectors: Path = VECTORS,
    ) -> None:
        self.host, self._port = host, port
        self.population = Population(seed)
        self.tick_s = tick_s
        self.clock_offset_us = int(clock_offset_s * 1e6)
        caps = (vectors / _CAPS_FILE).read_bytes()
        self._caps = w.patch_antenna_count(caps, antennas, gpis, gpos)
        self._config = (vectors / _CONFIG_FILE).read_bytes()
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = 0
        self.rospec: w.SimRoSpec | None = None
        self.active = False
        self.silent = False
        self.refuse = False
        self.keepalive_ms: int | None = None
        self.fail_next: dict[int, tuple[int, str]] = {}
        self.gpi: dict[int, bool] = {}
        # records, for tests
        self.connections = 0
        self.received: list[int] = []
        self.rospecs_added = 0
        self.gpo_writes: list[tuple[float, int, bool]] = []
        self.first_read_sent: dict[str, float] = {}
        self.reads_sent = 0
        self.keepalive_acks = 0
        self.keepalives_flooded = 0
        self.changed = asyncio.Event()

    @property
    def port(self) -> int:
        """The listening port (chosen by the OS when constructed with 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connected(self) -> bool:
        """A client is connected."""
        return self._writer is not None

    def now(self) -> float:
        """The simulator's clock (the event loop's), for scripting the population."""
        return asyncio.get_running_loop().time()

    async def start(self) -> None:
        """Listen and run the inventory loop."""
        self._server = await asyncio.start_server(self._client, self.host, self._port)
        self._spawn(self._inventory_loop())

    async def close(self) -> None:
        """Stop listening, drop the client, stop every task."""
        if self._server is not None:
            self._server.close()
        self.drop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- faults and stimuli -------------------------------------------------------------------

    def drop(self) -> None:
        """Cut the client off (RST), as a reader reboot or a pulled cable would."""
        writer, self._writer = self._writer, None
        self.active = False
        if writer is not None:
            writer.transport.abort()

    def flood_keepalives(self) -> None:
        """A broken peer: stop reading the client, send it KEEPALIVEs as fast as it takes them."""
        writer = self._writer
        if writer is not None:
            sock = writer.get_extra_info("socket")
            # A small receive window: the client's answers pile up on its side sooner.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            transport = writer.transport
            assert isinstance(transport, asyncio.ReadTransport)  # a TCP socket's: both ways
            transport.pause_reading()
            self._spawn(self._flood(writer))

    async def _flood(self, writer: asyncio.StreamWriter) -> None:
        batch = b"".join(w.frame(w.KEEPALIVE, self._next_id()) for _ in range(1000))
        with contextlib.suppress(ConnectionError, OSError):
            while self._writer is writer and not writer.is_closing():
                writer.write(batch)
                await writer.drain()
                self.keepalives_flooded += 1000

    def send_raw(self, data: bytes) -> None:
        """Write arbitrary bytes to the client (malformed frames)."""
        if self._writer is not None:
            self._writer.write(data)

    def set_gpi(self, port: int, state: bool) -> None:
        """A photo-eye changes: fires GPI triggers and reports a GPIEvent."""
        self.gpi[port] = state
        self._send(w.reader_event(self._next_id(), w.gpi_event(port, state)))
        spec = self.rospec
        if spec is None or not spec.enabled:
            return
        if spec.start == "gpi" and spec.start_gpi == (port, state) and not self.active:
            self._start_inventory()
        elif spec.stop == "gpi" and spec.stop_gpi == (port, state) and self.active:
            self._stop_inventory()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until ``predicate()`` is true (re-checked on every state change)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self.changed.wait()

    # --- protocol -----------------------------------------------------------------------------

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, data: bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)

    def _notify(self) -> None:
        self.changed.set()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse or self._writer is not None:
            status = w.CONN_CLIENT_EXISTS if self._writer is not None else 1
            writer.write(w.reader_event(self._next_id(), w.connection_event(status)))
            writer.close()
            return
        self._writer = writer
        self.connections += 1
        self._notify()
        self._send(w.reader_event(self._next_id(), w.connection_event()))
        keepalive = asyncio.create_task(self._keepalive_loop(writer))
        try:
            while True:
                header = await reader.readexactly(10)
                msg_type, length, msg_id = struct.unpack("!HII", header)
                body = await reader.readexactly(length - 10)
                self._handle(msg_type & 0x3FF, msg_id, body)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            keepalive.cancel()
            if self._writer is writer:
                self._writer = None
                self.active = False
            writer.close()
            self._notify()

    def _handle(self, msg_type: int, msg_id: int, body: bytes) -> None:  # noqa: C901, PLR0911, PLR0912
        self.received.append(msg_type)
        self._notify()
        if self.silent:
            return  # a hung reader answers nothing, setup requests included
        if msg_type in self.fail_next:
            code, text = self.fail_next.pop(msg_type)
            self._send(w.response(w.RESPONSE_OF.get(msg_type, w.ERROR_MESSAGE), msg_id, code, text))
            return
        reply = w.RESPONSE_OF.get(msg_type)
        code, text = w.M_SUCCESS, ""
        if msg_type == w.GET_READER_CAPABILITIES:
            self._send(w.with_msg_id(self._caps, msg_id))
            return
        if msg_type == w.GET_READER_CONFIG:
            self._send(w.with_msg_id(self._config, msg_id))
            return
        if msg_type == w.SET_READER_CONFIG:
            now = self.now()
            self.gpo_writes += [(now, port, state) for port, state in w.parse_gpo_writes(body)]
            self.keepalive_ms = w.parse_keepalive_ms(body) or self.keepalive_ms
        elif msg_type == w.ADD_ROSPEC:
            try:
                spec = w.parse_rospec(body)
            except (ValueError, struct.error) as exc:
                code, text = w.M_FIELD_ERROR, str(exc)
            else:
                if self.rospec is not None and self.rospec.rospec_id == spec.rospec_id:
                    code, text = w.M_FIELD_ERROR, f"ROSpec {spec.rospec_id} already exists"
                else:
                    self.rospec, self.active = spec, False
                    self.rospecs_added += 1
        elif msg_type == w.DELETE_ROSPEC:
            self.rospec, self.active = None, False
        elif msg_type == w.ENABLE_ROSPEC and self.rospec is not None:
            self.rospec.enabled = True
            if self.rospec.start == "immediate":
                self._start_inventory()
        elif msg_type == w.START_ROSPEC and self.rospec is not None and self.rospec.enabled:
            self._start_inventory()
        elif msg_type in (w.STOP_ROSPEC, w.DISABLE_ROSPEC):
            self._stop_inventory()
        elif msg_type == w.KEEPALIVE_ACK:
            self.keepalive_acks += 1
            return
        elif msg_type == w.ENABLE_EVENTS_AND_REPORTS:
            return
        elif msg_type == w.TYPE_CUSTOM:
            self._send(w.custom_frame(22, msg_id, w.llrp_status()))  # IMPINJ_ENABLE_EXTENSIONS
            return
        elif reply is None:
            code, text = w.M_UNSUPPORTED_MESSAGE, f"message type {msg_type} not supported"
        self._send(w.response(reply or w.ERROR_MESSAGE, msg_id, code, text))
        if msg_type == w.CLOSE_CONNECTION:
            self.drop()

    def _start_inventory(self) -> None:
        assert self.rospec is not None
        self.active = True
        self._send(w.reader_event(self._next_id(), w.rospec_event(0, self.rospec.rospec_id)))
        if self.rospec.stop == "duration" or (self.rospec.stop == "gpi" and self.rospec.stop_ms):
            asyncio.get_running_loop().call_later(self.rospec.stop_ms / 1000, self._stop_inventory)
        self._notify()

    def _stop_inventory(self) -> None:
        if self.active and self.rospec is not None:
            self._send(w.reader_event(self._next_id(), w.rospec_event(1, self.rospec.rospec_id)))
        self.active = False
        self._notify()

    async def _keepalive_loop(self, writer: asyncio.StreamWriter) -> None:
        while True:
            await asyncio.sleep((self.keepalive_ms or 1000) / 1000)
            if self.keepalive_ms and not self.silent and self._writer is writer:
                self._send(w.frame(w.KEEPALIVE, self._next_id()))

    async def _inventory_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            dt, last = now - last, now
            spec = self.rospec
            if not self.active or spec is None or self.silent or self._writer is None:
                continue
            reads = self.population.reads(now, dt, set(spec.antennas))
            self.population.expire(now)
            if reads:
                self._report(reads, spec, now)

    def _report(self, reads: list[tuple[str, int, int]], spec: w.SimRoSpec, now: float) -> None:
        stamp = w.now_us() + self.clock_offset_us
        entries = [
            w.tag_report_data(epc, antenna, rssi, stamp, stamp, 1, spec.rospec_id)
            for epc, antenna, rssi in reads
        ]
        per = spec.report_n or len(entries)
        for start in range(0, len(entries), per):
            self._send(w.ro_access_report(self._next_id(), entries[start : start + per]))
        for epc, _, _ in reads:
            self.first_read_sent.setdefault(epc, now)
        self.reads_sent += len(reads)
