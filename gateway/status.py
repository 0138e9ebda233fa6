"""``edge-gateway status``: what the buffer holds, from the file, daemon running or not."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Sequence

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from buffer.stats import BufferStats, read_recent, read_stats
from gateway.runstate import daemon_state, describe
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


async def show_status(
    settings: Settings,
    *,
    as_json: bool,
    config_errors: Sequence[str] = (),
    accepted: Iterable[str] | None = None,
) -> int:
    """Print the status, whether the daemon runs and is connected, then any config errors.

    Exit code 0 even with no buffer yet (that is a valid state); 2 when the config has errors
    (shown below the status, which came from ``[gateway]`` alone).
    """
    if accepted is None:
        accepted = {d.id for d in settings.devices if d.confirm == "accepted"}
    stats = await read_stats(settings.database_path, awaiting_verdict=set(accepted))
    if stats is None:
        stats = BufferStats()
    daemon = daemon_state(settings.gateway.state_dir)
    if as_json:
        body = {
            "gateway": settings.gateway.id,
            "site": settings.gateway.site,
            "buffer": str(settings.database_path),
            "time": time.time(),
            "daemon": daemon,
            **stats.as_dict(),
            "config_errors": list(config_errors),
        }
        print(json.dumps(body, indent=2))
    else:
        lines = render_text(stats, settings).split("\n")
        print("\n".join([*lines[:1], *describe(daemon), *lines[1:]]))
        if config_errors:
            print(f"\nconfig errors in {settings.source_path} (a running daemon keeps its config):")
            print("\n".join(f"  {line}" for line in config_errors))
    return 2 if config_errors else 0


def _watch_view(
    settings: Settings,
    stats: BufferStats,
    previous: BufferStats | None,
    elapsed: float,
    recent: list[dict[str, object]],
) -> Group:
    """One frame of ``status --watch``: devices with rates, backlog, the newest events."""
    table = Table(title=f"edge-gateway {settings.gateway.id} at {settings.gateway.site}")
    for column in ("device", "state", "events/s", "last_seq", "sent_seq", "pending", "oldest"):
        table.add_column(column, justify="left" if column in ("device", "state") else "right")
    for name in sorted({d.id for d in settings.devices} | set(stats.devices)):
        dev = stats.devices.get(name)
        before = previous.devices.get(name) if previous else None
        rate = (dev.last_seq - before.last_seq) / elapsed if dev and before and elapsed else 0.0
        state = (dev.status if dev else None) or "-"
        table.add_row(
            name,
            Text(state, style="green" if state == "up" else "red"),
            f"{rate:.1f}",
            str(dev.last_seq if dev else 0),
            str(dev.last_sent_seq if dev else 0),
            str(dev.pending if dev else 0),
            _age(dev.oldest_pending_age_s if dev else None),
        )
    summary = Text(
        f"unsent {stats.unsent}   oldest unsent {_age(stats.oldest_unsent_age_s)}"
        f"   payload bytes {stats.payload_bytes}   "
        + "  ".join(f"{k} {v}" for k, v in stats.by_state.items())
    )
    newest = Table.grid(padding=(0, 2))
    for event in recent:
        source = str(event.get("source", "")).rsplit("/", 1)[-1]
        data = json.dumps(event.get("data"), ensure_ascii=False)[:70]
        newest.add_row(source, f"#{event.get('seq')}", str(event.get("_state")), data)
    return Group(table, summary, Text("newest events:"), newest)


async def watch_status(
    settings: Settings, *, interval: float = 1.0, frames: int | None = None
) -> int:
    """``status --watch``: refresh the view every ``interval`` s until Ctrl-C (or ``frames``)."""
    previous: BufferStats | None = None
    last = time.monotonic()
    shown = 0
    with Live(refresh_per_second=4) as live:
        while frames is None or shown < frames:
            stats = await read_stats(settings.database_path) or BufferStats()
            recent = await read_recent(settings.database_path)
            now = time.monotonic()
            live.update(_watch_view(settings, stats, previous, now - last, recent))
            previous, last = stats, now
            shown += 1
            await asyncio.sleep(interval)
    return 0
