"""The demo's central half: the real ``edge-central`` ingest on a private PostgreSQL.

What a visitor sees at ``accepted`` must be what a site gets: the event committed in the
PostgreSQL ledger before the good-read, by the same code ``edge-central run`` runs
(:class:`central.service.Central`, from a ``central.toml`` the demo writes and loads with the
same loader). The database is a private cluster (``initdb`` into a temporary directory, a free
loopback port, as the ``postgres`` user when the demo runs as root), started with the demo and
removed with it, like its private Mosquitto. The WMS's item master is the ``known_skus`` table
read by the shipped ``sku`` rule: the demo "knows" all but about one code in twenty before it
is scanned, so the ``accepted`` scanner also gets bad-read beeps.

The view reads the ledger the way an operator would: :func:`central.parity.parity_report` (what
``edge-central parity`` prints) and the ``ledger`` view.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from central.config import load_central_settings
from central.parity import DeviceParity, parity_report
from central.service import Central
from simulators.postgres import PostgresServer

UNKNOWN_SKU_SHARE = 20
"""The item master lacks about one scanned code in this many (a bad-read, ``rejected``)."""

CENTRAL = """\
[central]
instance = "central-demo"

[mqtt]
host = "127.0.0.1"
port = {port}
reconnect_min = 0.2
reconnect_max = 2

[database]
dsn = "{dsn}"

[confirm]
rule = "sku"

[replay]
replay_after = 2
interval = 0.5
min_gap = 3

[logging]
level = "error"
format = "console"
"""
"""Defaults but for the broker, the private database, the item-master rule and faster gap
healing (a visitor should see a gap close within seconds of an outage, not minutes)."""

_RECENT = """
SELECT source, seq, type, historical, data::text AS data, status, reason
FROM ledger ORDER BY received DESC LIMIT $1
"""
_REJECTED = "SELECT count(*) FROM events WHERE status = 'rejected'"


def unknown_to_the_wms(code: str) -> bool:
    """Stable per code: the same code is rejected every time it is scanned."""
    return zlib.crc32(code.encode()) % UNKNOWN_SKU_SHARE == 0


@dataclass
class LedgerView:
    """One look at the ledger, for one frame of the view."""

    devices: dict[str, DeviceParity] = field(default_factory=dict)
    rejected: int = 0
    recent: list[dict[str, Any]] = field(default_factory=list)

    @property
    def held(self) -> int:
        """Events in the ledger."""
        return sum(d.held for d in self.devices.values())

    @property
    def duplicates(self) -> int:
        """Redeliveries the ledger absorbed (same id again)."""
        return sum(d.duplicates for d in self.devices.values())

    @property
    def in_parity(self) -> int:
        """Devices whose ledger holds everything their gateway's checkpoint says it stored."""
        return sum(1 for d in self.devices.values() if d.in_parity)


class DemoCentral:
    """Start PostgreSQL and the ingest, feed the item master, read the ledger; stop it all."""

    def __init__(self, root: Path, broker_port: int, server: PostgresServer) -> None:
        self.root, self.broker_port = root, broker_port
        self.server: PostgresServer | None = server
        self.central: Central | None = None
        self.pool: asyncpg.Pool | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[None] | None = None

    async def start_database(self) -> None:
        """Finish ``initdb`` (begun in the background) and start, in a thread.

        The simulators start meanwhile.

        A thread cannot be cancelled: when the demo is stopped during it, :meth:`stop` waits
        for it to end before it removes the server, instead of racing it.
        """
        assert self.server is not None
        self._starting = asyncio.ensure_future(asyncio.to_thread(self.server.start))
        await asyncio.shield(self._starting)

    async def start(self, timeout: float = 30.0) -> None:
        """Run the ingest from its own config file; return once it is subscribed."""
        assert self.server is not None, "start_database first"
        config = self.root / "central.toml"
        config.write_text(CENTRAL.format(port=self.broker_port, dsn=self.server.dsn))
        self.central = Central(load_central_settings(config))
        self._task = asyncio.create_task(self.central.run(self._stop))
        async with asyncio.timeout(timeout):
            while not self.central.connected.is_set():
                if self._task.done():
                    self._task.result()  # its failure, not a timeout
                await asyncio.sleep(0.02)
        # Migrated by now (Central migrates before it connects): the view and the item master.
        self.pool = await asyncpg.create_pool(self.server.dsn, min_size=1, max_size=2)

    async def know(self, code: str) -> None:
        """The WMS learns an item before it is scanned (unless it is one it never learns)."""
        if self.pool is None or unknown_to_the_wms(code):
            return
        await self.pool.execute(
            "INSERT INTO known_skus (sku) VALUES ($1) ON CONFLICT DO NOTHING", code
        )

    async def look(self, recent: int = 6) -> LedgerView:
        """Parity per device, rejected events, the latest rows; empty if the ledger is away."""
        view = LedgerView()
        if self.pool is None:
            return view
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            async with self.pool.acquire() as conn:
                view.devices = {r.source: r for r in await parity_report(conn)}
                view.rejected = await conn.fetchval(_REJECTED)
                for row in await conn.fetch(_RECENT, recent):
                    event = dict(row)
                    event["data"] = json.loads(row["data"]) if row["data"] else {}
                    view.recent.append(event)
        return view

    async def stop(self) -> None:
        """Stop the ingest, then remove the database (its directory included)."""
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pool.close(), 5)
            self.pool = None
        if self._task is not None:
            self._stop.set()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await self._task
            if not self._task.done():
                self._task.cancel()
            self._task = None
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
        if self.server is not None:
            await asyncio.to_thread(self.server.cleanup)
            self.server = None
