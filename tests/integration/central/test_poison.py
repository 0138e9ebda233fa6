"""Input PostgreSQL itself refuses is quarantined, and the ingest goes on.

Each of these passed validation and then failed every retry of its batch, so nothing was
acknowledged again and one gateway's bad event stopped the group: a NUL character (in data, in
the id, as a key), a JSON ``NaN``, a lone surrogate (in data, in the id), a checkpoint with a NUL.
"""

from __future__ import annotations

import json

import aiomqtt
import asyncpg

from tests.support import wait_until

from .conftest import running_central
from .helpers import raw, scan_event, topic_of

NUL = "\u0000"


async def test_what_postgresql_refuses_is_quarantined_and_the_rest_commits(
    broker, central_settings, pg_dsn
):
    settings = central_settings(replay={"enabled": False})
    good = [scan_event(n) for n in (1, 9)]
    poison = [
        (topic_of(good[0]), raw(scan_event(2, code=f"0123{NUL}4567"))),
        (topic_of(good[0]), raw(scan_event(3, event_id=f"id-with-{NUL}"))),
        # A type the gateway ships no schema for: only CloudEvents rules apply to its data.
        (topic_of(good[0]), raw(scan_event(4, type="x.custom.v1", data={NUL: 1}))),
        (topic_of(good[0]), raw(scan_event(5, type="x.custom.v1", data={"x": float("nan")}))),
        (topic_of(good[0]), raw(scan_event(6, code="lone \ud800 surrogate"))),
        (topic_of(good[0]), raw(scan_event(7, event_id="id-\udc00"))),  # outside data, too
        ("edge/s1/gw1/checkpoint", json.dumps({"devices": {f"d{NUL}": {}}}).encode()),
    ]
    async with (
        running_central(settings) as central,
        aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
    ):
        # One batch with all of them (published while the writer waits for the first commit),
        # then later events: both must commit.
        await client.publish(topic_of(good[0]), raw(good[0]), qos=1)
        for topic, payload in poison:
            await client.publish(topic, payload, qos=1)
        await client.publish(topic_of(good[1]), raw(good[1]), qos=1)
        await wait_until(lambda: central.totals["quarantined"] == len(poison), timeout=20)
        await wait_until(lambda: central.totals["stored"] == 2, timeout=20)
        later = scan_event(10)
        await client.publish(topic_of(later), raw(later), qos=1)
        await wait_until(lambda: central.totals["stored"] == 3, timeout=20)
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert sorted(await conn.fetchval("SELECT array_agg(seq) FROM events")) == [1, 9, 10]
        reasons = [r["reason"] for r in await conn.fetch("SELECT reason FROM quarantine")]
    finally:
        await conn.close()
    assert len(reasons) == len(poison)
    assert [r for r in reasons if not r.startswith("refused by PostgreSQL:")] == []
