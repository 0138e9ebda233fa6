"""The central ingest on real parts: Mosquitto -> edge-central -> PostgreSQL, confirms back."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request

import aiomqtt
import asyncpg

from simulators.broker import free_port
from tests.support import ROOT, wait_until

from .conftest import running_central
from .helpers import raw, scan_event, topic_of


async def _count(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def _tail_listening(dsn: str) -> None:
    """Until `tail` has run its first query, which it sends after LISTEN (a fixed sleep lost
    the first events when the box was loaded: the child took longer to start)."""
    async with asyncio.timeout(30):
        while not await _count(
            dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND query LIKE '%coalesce(max(received)%'",
        ):
            await asyncio.sleep(0.05)


async def test_events_land_once_and_are_confirmed_after_commit(broker, central_settings, pg_dsn):
    """Each (source, id) once in the ledger, however often sent; each gets an accepted confirm."""
    settings = central_settings(replay={"enabled": False})
    bodies = [scan_event(n) for n in range(1, 201)]
    confirms: list[dict] = []
    async with (
        running_central(settings) as central,
        aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
    ):
        await client.subscribe("edge/s1/gw1/confirm", qos=1)

        async def listen() -> None:
            async for message in client.messages:
                body = json.loads(message.payload)
                confirms.extend(body if isinstance(body, list) else [body])

        listener = asyncio.create_task(listen())
        for body in [*bodies, *bodies[:50]]:
            await client.publish(topic_of(body), raw(body), qos=1)
        await wait_until(lambda: len({c["id"] for c in confirms}) >= 200, timeout=20)
        listener.cancel()
        assert central.totals["stored"] == 200
    assert await _count(pg_dsn, "SELECT count(*) FROM events") == 200
    assert {c["id"] for c in confirms} == {b["id"] for b in bodies}
    assert {c["status"] for c in confirms} == {"accepted"}
    assert await _count(pg_dsn, "SELECT count(*) FROM seq_ranges") == 1


async def test_hostile_input_is_quarantined_and_the_consumer_stays_up(
    broker, central_settings, pg_dsn
):
    """Invalid JSON, wrong specversion, schema violations, oversized and misrouted events."""
    settings = central_settings(replay={"enabled": False}, ingest={"max_payload": 2048})
    good = scan_event(1)
    hostile = [
        ("edge/s1/gw1/events/dock", b"\xff{not json"),
        ("edge/s1/gw1/events/dock", raw(scan_event(2, specversion="0.3"))),
        ("edge/s1/gw1/events/dock", raw(scan_event(3, data={"no_code": 1}))),
        ("edge/s1/gw1/events/dock", raw(scan_event(4, code="x" * 4000))),
        ("edge/s1/gw1/events/dock", raw(scan_event(5, gateway="gw-other"))),
        ("edge/s1/gw1/events/dock", raw(scan_event(6, device="other"))),
        ("edge/s1/gw1/events/dock", b"[1, 2, 3]"),
        ("edge/s1/gw1/events/dock", b"{" * 5000),
        ("edge/s1/gw1/checkpoint", b"not json"),
    ]
    async with (
        running_central(settings) as central,
        aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
    ):
        for topic, payload in hostile:
            await client.publish(topic, payload, qos=1)
        await client.publish(topic_of(good), raw(good), qos=1)
        await wait_until(lambda: central.totals["stored"] == 1, timeout=20)
        await wait_until(lambda: central.totals["quarantined"] == len(hostile), timeout=20)
    conn = await asyncpg.connect(pg_dsn)
    try:
        reasons = [
            r["reason"] for r in await conn.fetch("SELECT reason FROM quarantine ORDER BY n")
        ]
        assert await conn.fetchval("SELECT id FROM events") == good["id"]
        assert await conn.fetchval("SELECT max(length(raw)) FROM quarantine") <= 4096
    finally:
        await conn.close()
    assert len(reasons) == len(hostile)
    assert any("does not match topic" in r for r in reasons)
    assert any("specversion" in r for r in reasons)
    assert any("B >" in r for r in reasons)


async def test_hostile_checkpoints_and_results_do_not_stop_the_leader(
    broker, central_settings, pg_dsn
):
    """Checkpoints with junk figures and junk replay answers: rounds go on, events still land."""
    settings = central_settings()
    junk = [
        (
            "edge/s1/gw1/checkpoint",
            b'{"devices": {"dock": {"last_seq": "many", "dropped_ranges": 5}}}',
        ),
        ("edge/s1/gw2/checkpoint", b'{"devices": [1, 2]}'),
        (
            "edge/s1/gw3/checkpoint",
            b'{"devices": {"d": {"last_seq": 3, "unconfirmed": 1, "lowest_unconfirmed_seq": "x"}}}',
        ),
        ("edge/s1/gw1/cmd/result", b'{"request_id": {"a": 1}, "ok": "yes"}'),
    ]
    async with (
        running_central(settings) as central,
        aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
    ):
        for topic, payload in junk:
            await client.publish(topic, payload, qos=1)
        await asyncio.sleep(1.0)  # several leader rounds over the junk
        good = scan_event(1)
        await client.publish(topic_of(good), raw(good), qos=1)
        await wait_until(lambda: central.totals["stored"] == 1, timeout=10)
        assert central.replayer is not None
        assert central.replayer.leader


async def test_metrics_and_tail_follow_commits(broker, central_settings, pg_dsn, tmp_path):
    """`/metrics` counts what committed; `edge-central tail` prints events after LISTEN/NOTIFY."""
    port = free_port()
    settings = central_settings(metrics={"listen": f"127.0.0.1:{port}"})
    config = tmp_path / "central-a.toml"
    bodies = [scan_event(n) for n in range(1, 4)]
    async with (
        running_central(settings) as central,
        aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
    ):
        tail = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "central", "tail", "--config", str(config),
            stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        )  # fmt: skip
        try:
            await _tail_listening(settings.database.dsn)
            for body in bodies:
                await client.publish(topic_of(body), raw(body), qos=1)
            await wait_until(lambda: central.totals["stored"] == 3, timeout=10)
            assert tail.stdout is not None
            lines = []
            async with asyncio.timeout(10):
                while len(lines) < 3:
                    lines.append((await tail.stdout.readline()).decode())
        finally:
            tail.terminate()
            await tail.wait()
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        )
    assert [line.split()[1] for line in lines] == ["1", "2", "3"]
    assert all(b["id"] in "".join(lines) for b in bodies)
    metrics = text.decode()
    assert 'edge_central_events_total{outcome="stored"} 3.0' in metrics
    assert "edge_central_batch_commit_seconds_count" in metrics
