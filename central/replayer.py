"""Gap replay and re-confirmation, by one instance of the group at a time.

Leadership is a session-level PostgreSQL advisory lock held on a dedicated connection: when the
leader dies, PostgreSQL ends its session and frees the lock, and the next instance that tries
(every ``[replay] interval``) takes over. Each round the leader:

- marks devices out of parity (``devices.out_since``, which ``edge-central parity`` reads);
- asks for gaps older than ``replay_after`` on ``{root}/cmd/replay``, unless the gateway says a
  drain is under way, at most once per ``min_gap`` per device, and records each request. The
  age is each gap's own, not the device's: under a steady flow split between instances, or a
  backlog in the broker, a device can be out of parity for minutes while every one of its gaps
  is a fresh one still on its way (bench/central_fleet.py: 229 needless requests in 60 s when
  the age was the device's, each making a gateway publish again what was already queued);
- confirms again the ledger's verdicts for events the checkpoint shows still unconfirmed (a
  confirm lost when an instance died between commit and publish).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog

from central.config import CentralSettings
from central.ledger import confirm_payloads, confirm_verdict
from central.metrics import CentralMetrics
from central.parity import DeviceParity, Span, intersect, parity_report

log = structlog.get_logger("central.replay")

PublishFn = Callable[[str, bytes], Awaitable[bool]]
RECONFIRM_MAX = 1000
COALESCE_HELD = 64
"""Gaps this close are asked for as one range: a few held events come again (deduplicated)
instead of one request per missing seq when a dead group member took every other event."""


def coalesce(spans: list[tuple[int, int]], held: int = COALESCE_HELD) -> list[tuple[int, int]]:
    """Join ranges separated by at most ``held`` seqs."""
    out: list[tuple[int, int]] = []
    for first, last in spans:
        if out and first - out[-1][1] - 1 <= held:
            out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out


class Replayer:
    """The leader's loop; ``leader`` says whether this instance holds the lock now."""

    def __init__(
        self, settings: CentralSettings, publish: PublishFn, metrics: CentralMetrics | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics or CentralMetrics()
        self._publish = publish
        self.leader = False
        self.requests = 0
        self.reconfirmed = 0
        self._next: dict[str, float] = {}
        self._next_confirm: dict[str, float] = {}
        self._seen: dict[str, list[tuple[float, list[Span]]]] = {}
        """Per device, the missing ranges seen at recent rounds (oldest first)."""

    def stale(self, source: str, missing: list[Span], now: float) -> list[Span]:
        """What of ``missing`` was already missing ``replay_after`` ago: the gaps to ask for.

        Keeps the newest look that is at least that old, and the ones since; a seq missing then
        and now was missing all along (a seq that arrived and left again cannot happen: the
        ledger never forgets one).
        """
        history = self._seen.setdefault(source, [])
        history.append((now, missing))
        cutoff = now - self.settings.replay.replay_after
        while len(history) > 1 and history[1][0] <= cutoff:
            history.pop(0)
        seen_at, then = history[0]
        return intersect(missing, then) if seen_at <= cutoff else []

    async def run(self) -> None:
        """Forever: hold the lock when free, and work while holding it."""
        replay = self.settings.replay
        while True:
            try:
                conn = await asyncpg.connect(
                    self.settings.database.dsn, password=self.settings.database_password()
                )
                try:
                    while True:
                        if not self.leader:
                            self.leader = bool(
                                await conn.fetchval(
                                    "SELECT pg_try_advisory_lock($1)", replay.lock_key
                                )
                            )
                            if self.leader:
                                log.info("replay_leader", instance=self.settings.central.instance)
                            self.metrics.leader.set(int(self.leader))
                        if self.leader:
                            await self._guarded_round(conn)
                        await asyncio.sleep(replay.interval)
                finally:
                    self.leader = False
                    self.metrics.leader.set(0)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("replay_db_unavailable", error=str(exc)[:200])
                await asyncio.sleep(replay.interval)

    async def _guarded_round(self, conn: Any) -> None:  # noqa: ANN401
        """Run one round inside its own error boundary.

        A bad checkpoint or a bug costs a round, not the instance; a lost database connection
        is for ``run`` to handle.
        """
        try:
            await self.round(conn)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
            raise
        except Exception:
            log.exception("replay_round_failed")

    async def round(self, conn: Any) -> None:  # noqa: ANN401 - an asyncpg connection
        """One look at every device."""
        report = await parity_report(conn)
        out = [r for r in report if not r.in_parity and r.root]
        self.metrics.out_of_parity.set(len(out))
        self.metrics.missing.set(sum(r.missing_count for r in report))
        self.metrics.lag.set(sum(max(0, r.gateway_last_seq - r.held) for r in report))
        await conn.execute(
            "UPDATE devices SET out_since = NULL WHERE out_since IS NOT NULL"
            " AND NOT (source = ANY($1::text[]))",
            [r.source for r in out],
        )
        await conn.executemany(
            "INSERT INTO devices (source, root, device, out_since)"
            " VALUES ($1, $2, $3, clock_timestamp()) ON CONFLICT (source) DO UPDATE"
            " SET out_since = coalesce(devices.out_since, clock_timestamp())",
            [(r.source, r.root, r.device) for r in out],
        )
        now = time.monotonic()
        for source in self._seen.keys() - {r.source for r in out}:
            del self._seen[source]  # back in parity: its next gaps start young
        for row in out:
            stale = self.stale(row.source, row.missing, now)
            if row.draining or row.out_for_s < self.settings.replay.replay_after:
                continue
            if now < self._next.get(row.source, 0.0):
                continue
            await self._ask(conn, row, stale, now)
        for row in report:
            if row.root and (row.gateway_unconfirmed or 0) > 0:
                await self._reconfirm(conn, row, now)

    async def _ask(self, conn: Any, row: DeviceParity, stale: list[Span], now: float) -> None:  # noqa: ANN401
        upto = max(row.gateway_last_sent_seq, row.highest_held)
        spans = [s for s in stale if s[0] <= upto]
        spans = coalesce([(first, min(last, upto)) for first, last in spans])
        if not spans:
            return
        self._next[row.source] = now + self.settings.replay.min_gap
        for first, last in spans[: self.settings.replay.max_ranges]:
            request_id = f"{self.settings.central.instance}-{uuid.uuid4().hex[:16]}"
            body: dict[str, Any] = {"request_id": request_id, "device": row.device}
            body |= {"from_seq": first, "to_seq": last}
            await conn.execute(
                "INSERT INTO replays (request_id, source, from_seq, to_seq)"
                " VALUES ($1, $2, $3, $4)",
                request_id,
                row.source,
                first,
                last,
            )
            sent = await self._publish(f"{row.root}/cmd/replay", json.dumps(body).encode())
            self.requests += int(sent)
            self.metrics.replays.inc(int(sent))
            log.info("replay_requested", source=row.source, from_seq=first, to_seq=last, sent=sent)

    async def _reconfirm(self, conn: Any, row: DeviceParity, now: float) -> None:  # noqa: ANN401
        if not self.settings.confirm.enabled or now < self._next_confirm.get(row.source, 0.0):
            return
        self._next_confirm[row.source] = now + self.settings.replay.min_gap
        lowest = await conn.fetchval(
            "SELECT body->'devices'->$2->'lowest_unconfirmed_seq' FROM checkpoints WHERE root = $1",
            row.root,
            row.device,
        )
        try:
            lowest = int(json.loads(lowest)) if lowest else 0
        except (TypeError, ValueError):
            return
        if not 0 < lowest < 2**63:
            return
        rows = await conn.fetch(
            "SELECT id, status, reason FROM events WHERE source = $1 AND seq >= $2"
            " ORDER BY seq LIMIT $3",
            row.source,
            int(lowest),
            RECONFIRM_MAX,
        )
        if not rows:
            return
        verdicts = [confirm_verdict(r["id"], r["status"], r["reason"] or None) for r in rows]
        # In messages a gateway takes: up to RECONFIRM_MAX in one list was refused whole.
        for payload, count in confirm_payloads(verdicts):
            if not await self._publish(f"{row.root}/confirm", payload):
                break
            self.reconfirmed += count
