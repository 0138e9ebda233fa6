"""``parity_report``'s site and gateway filters, in process (``test_parity_cli.py`` runs the
command as a child process, which mutation testing cannot see into)."""

from __future__ import annotations

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
