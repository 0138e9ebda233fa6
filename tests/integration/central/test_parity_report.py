"""``parity_report``'s site and gateway filters, in process (``test_parity_cli.py`` runs the
command as a child process, which mutation testing cannot see into)."""

from __future__ import annotations

from datetime import UTC, datetime

from central.ledger import Checkpoint, write_batch
from central.parity import parity_report
from central.rules import AcceptAll

from .helpers import events, scan_event


async def test_filters_pick_devices_by_site_and_gateway(conn) -> None:
    """Three gateways on two sites; each filter keeps exactly the devices it names, whether a
    device is known from its checkpoint, from the ledger, or both."""
    items = [
        Checkpoint(f"edge/{site}/{gw}", {"devices": {"dock": {"last_seq": 1}}})
        for site, gw in (("s1", "gw1"), ("s1", "gw2"), ("s2", "gw1"))
    ]
    batch = events(scan_event(1, site="s1", gateway="gw1"), scan_event(1, site="s2", device="gate"))
    await write_batch(conn, [*items, *batch], AcceptAll())

    async def sources(**filters: str) -> list[str]:
        return [row.source for row in await parity_report(conn, **filters)]

    everything = ["/s1/gw1/dock", "/s1/gw2/dock", "/s2/gw1/dock", "/s2/gw1/gate"]
    assert await sources() == everything
    assert await sources(site="s1") == ["/s1/gw1/dock", "/s1/gw2/dock"]
    assert await sources(gateway="gw1") == ["/s1/gw1/dock", "/s2/gw1/dock", "/s2/gw1/gate"]
    assert await sources(site="s2", gateway="gw1") == ["/s2/gw1/dock", "/s2/gw1/gate"]
    assert await sources(site="s3") == []


async def test_each_device_from_either_side_with_its_replays(conn) -> None:
    """A device known from its checkpoint alone, one known from the ledger alone (its root and
    name come from the ledger), open replay requests counted, recent and old, and the seqs a
    replay answer says were dropped closing their gap."""
    await write_batch(
        conn,
        [
            Checkpoint("edge/s1/gw1", {"devices": {"dock": {"last_seq": 4}}}),
            *events(scan_event(1, site="s2", gateway="gw9", device="gate")),
        ],
        AcceptAll(),
    )
    await conn.executemany(
        "INSERT INTO replays (request_id, source, from_seq, to_seq, requested, answered, result)"
        " VALUES ($1, $2, 1, 4, clock_timestamp() - make_interval(secs => $3), $4, $5::jsonb)",
        [
            ("open-1", "/s1/gw1/dock", 5.0, None, None),
            ("open-2", "/s1/gw1/dock", 60.0, None, None),
            ("forgotten", "/s1/gw1/dock", 3600.0, None, None),  # asked an hour ago: given up
            ("answered", "/s1/gw1/dock", 5.0, datetime.now(UTC), '{"dropped": [[2, 3]]}'),
            ("answered-ok", "/s2/gw9/gate", 5.0, datetime.now(UTC), '{"status": "ok"}'),
        ],
    )
    dock, gate = await parity_report(conn)
    assert (dock.source, dock.root, dock.device) == ("/s1/gw1/dock", "edge/s1/gw1", "dock")
    assert dock.replays_outstanding == 2
    assert dock.dropped == [(2, 3)]
    assert dock.missing == [(1, 1), (4, 4)]
    assert not dock.in_parity
    assert (gate.source, gate.root, gate.device) == ("/s2/gw9/gate", "edge/s2/gw9", "gate")
    assert (gate.replays_outstanding, gate.dropped, gate.missing) == (0, [], [])
    assert gate.in_parity
    assert not gate.draining  # no checkpoint says so
    assert gate.out_for_s == 0.0  # never out of parity
