"""``edge-gateway status``: what the buffer holds, from the file, daemon running or not."""

from __future__ import annotations

import json
import time

from buffer.stats import BufferStats, read_stats
from gateway.settings import Settings


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def render_text(stats: BufferStats, settings: Settings) -> str:
    """A few lines a technician can read at a glance."""
    lines = [
        f"gateway {settings.gateway.id} at {settings.gateway.site}",
        f"buffer {settings.database_path}",
        "events: " + "  ".join(f"{k}={v}" for k, v in stats.by_state.items()),
        (
            f"unsent: {stats.unsent}  oldest unsent: {_age(stats.oldest_unsent_age_s)}"
            f"  payload bytes: {stats.payload_bytes}"
        ),
        f"{'device':<24} {'state':<6} {'last_seq':>9} {'sent_seq':>9} {'pending':>8}  since",
    ]
    configured = {d.id for d in settings.devices}
    for name in sorted(configured | set(stats.devices)):
        d = stats.devices.get(name)
        if d is None:
            lines.append(f"{name:<24} {'-':<6} {0:>9} {0:>9} {0:>8}  -")
            continue
        lines.append(
            f"{name:<24} {d.status or '-':<6} {d.last_seq:>9} {d.last_sent_seq:>9}"
            f" {d.pending:>8}  {d.since or '-'}"
        )
    return "\n".join(lines)


async def show_status(settings: Settings, *, as_json: bool) -> int:
    """Print the status; exit code 0 even with no buffer yet (that is a valid state)."""
    stats = await read_stats(settings.database_path)
    if stats is None:
        stats = BufferStats()
    if as_json:
        body = {
            "gateway": settings.gateway.id,
            "site": settings.gateway.site,
            "buffer": str(settings.database_path),
            "time": time.time(),
            **stats.as_dict(),
        }
        print(json.dumps(body, indent=2))
    else:
        print(render_text(stats, settings))
    return 0
