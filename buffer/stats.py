"""What the buffer holds, for ``status``, checkpoints and metrics.

Shared by the running daemon and by ``edge-gateway status`` in another process, which opens the
file read-only: WAL lets it read while the daemon writes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from buffer.schema import STATE_NAMES


@dataclass(slots=True)
class DeviceStats:
    """One device's counters as the buffer sees them."""

    device: str
    last_seq: int = 0
    last_sent_seq: int = 0
    pending: int = 0
    oldest_pending_age_s: float | None = None
    status: str | None = None
    detail: str | None = None
    since: str | None = None


@dataclass(slots=True)
class BufferStats:
    """The buffer at one instant."""

    by_state: dict[str, int] = field(default_factory=dict)
    oldest_unsent_age_s: float | None = None
    payload_bytes: int = 0
    devices: dict[str, DeviceStats] = field(default_factory=dict)

    @property
    def unsent(self) -> int:
        """Events not yet acknowledged by the broker (pending or in flight)."""
        return self.by_state.get("pending", 0) + self.by_state.get("in_flight", 0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, for ``status --json`` and the checkpoint."""
        out = asdict(self)
        out["unsent"] = self.unsent
        return out


async def collect_stats(conn: aiosqlite.Connection, now: float | None = None) -> BufferStats:
    """Read every figure in one pass of small queries."""
    now = time.time() if now is None else now
    stats = BufferStats(by_state=dict.fromkeys(STATE_NAMES.values(), 0))
    async with conn.execute(
        "SELECT state, count(*), coalesce(sum(length(payload)), 0) FROM events GROUP BY state"
    ) as cur:
        async for state, count, size in cur:
            stats.by_state[STATE_NAMES.get(int(state), str(state))] = int(count)
            stats.payload_bytes += int(size)
    async with conn.execute(
        "SELECT device, last_seq, last_sent_seq, status, detail, since FROM devices"
    ) as cur:
        async for device, last_seq, last_sent, status, detail, since in cur:
            stats.devices[device] = DeviceStats(
                device, int(last_seq), int(last_sent), 0, None, status, detail, since
            )
    async with conn.execute(
        "SELECT device, count(*), min(created) FROM events WHERE state < 2 GROUP BY device"
    ) as cur:
        async for device, count, oldest in cur:
            dev = stats.devices.setdefault(device, DeviceStats(device))
            dev.pending = int(count)
            dev.oldest_pending_age_s = round(now - float(oldest), 3)
    ages = [
        d.oldest_pending_age_s for d in stats.devices.values() if d.oldest_pending_age_s is not None
    ]
    stats.oldest_unsent_age_s = max(ages) if ages else None
    return stats


async def read_stats(path: Path) -> BufferStats | None:
    """Stats from a buffer file owned by another process; None when it does not exist yet."""
    if not path.exists():  # noqa: ASYNC240 - one stat() call
        return None
    async with aiosqlite.connect(f"file:{path}?mode=ro", uri=True) as conn:
        await conn.execute("PRAGMA busy_timeout=5000")
        return await collect_stats(conn)


async def read_recent(path: Path, limit: int = 5) -> list[dict[str, Any]]:
    """The newest events in the buffer (any state), newest first, for live views."""
    if not path.exists():  # noqa: ASYNC240 - one stat() call
        return []
    async with aiosqlite.connect(f"file:{path}?mode=ro", uri=True) as conn:
        await conn.execute("PRAGMA busy_timeout=5000")
        async with conn.execute(
            "SELECT state, payload FROM events ORDER BY rowid DESC LIMIT ?", (limit,)
        ) as cur:
            rows = await cur.fetchall()
    out = []
    for state, payload in rows:
        event = json.loads(payload)
        event["_state"] = STATE_NAMES.get(int(state), str(state))
        out.append(event)
    return out
