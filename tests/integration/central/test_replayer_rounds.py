"""central/replayer.py's rounds on a real PostgreSQL, one at a time, with the clock in hand.

A round is called directly (no leader loop, no broker): what it publishes is recorded. A gap's
age is given by seeding the replayer's history with an old look; a device's time out of parity
by moving ``devices.out_since`` back. Written for the survivors of a mutation run
(docs/testing.md): the request's fields, its bounds, the spacing between requests and the
re-confirmation's choice of events were not pinned by the end-to-end tests.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from central.config import CentralSettings
from central.ledger import Checkpoint, write_batch
from central.replayer import RECONFIRM_MAX, Replayer
from central.rules import SkuRule
from gateway.commands import MAX_CONFIRMS

from .helpers import events, scan_event

SOURCE = "/s1/gw1/dock"
ROOT = "edge/s1/gw1"


class Published:
    """The replayer's publish function: records, answers ``ok``."""

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok
        self.sent: list[tuple[str, Any]] = []

    async def __call__(self, topic: str, body: bytes) -> bool:
        self.sent.append((topic, json.loads(body)))
        return self.ok

    def on(self, suffix: str) -> list[Any]:
        return [body for topic, body in self.sent if topic.endswith(suffix)]


def replayer(publish: Published, **replay: Any) -> Replayer:
    settings = CentralSettings.model_validate(
        {
            "central": {"instance": "inst-1"},
            "replay": {"replay_after": 5, "min_gap": 10, **replay},
        }
    )
    return Replayer(settings, publish)


async def hold(conn, *seqs: int, **kwargs: Any) -> None:
    await write_batch(conn, events(*(scan_event(s, **kwargs) for s in seqs)), SkuRule())


async def checkpoint(conn, root: str = ROOT, draining: bool = False, **devices: dict) -> None:
    body: dict[str, Any] = {"devices": devices}
    if draining:
        body["draining"] = True
    await write_batch(conn, [Checkpoint(root, body)], SkuRule())


async def out_for(conn, seconds: float) -> None:
    await conn.execute(
        "UPDATE devices SET out_since = clock_timestamp() - make_interval(secs => $1)"
        " WHERE out_since IS NOT NULL",
        seconds,
    )


def seen_long_ago(r: Replayer, source: str = SOURCE, ago: float = 100.0) -> None:
    """As if everything had been missing at a look ``ago`` seconds back."""
    r._seen[source] = [(time.monotonic() - ago, [(1, 2**62)])]


async def test_a_stale_gap_is_asked_for_once_with_every_field(conn) -> None:
    """Held 1-2 and 6, the gateway stored up to 9 and sent up to 8: one request for 3-5 and one
    for 7-8 would be two; they are close, so one request 3-8, recorded in ``replays``."""
    await hold(conn, 1, 2, 6)
    await checkpoint(conn, dock={"last_seq": 9, "last_sent_seq": 8})
    publish = Published()
    r = replayer(publish)
    await r.round(conn)  # marks the device out of parity; too young to ask
    assert publish.sent == []
    out_since = await conn.fetchval("SELECT out_since FROM devices WHERE source = $1", SOURCE)
    assert out_since is not None
    await out_for(conn, 60)
    seen_long_ago(r)
    await r.round(conn)
    (request,) = publish.on("/cmd/replay")
    assert publish.sent[0][0] == f"{ROOT}/cmd/replay"
    assert set(request) == {"request_id", "device", "from_seq", "to_seq"}
    assert re.fullmatch(r"inst-1-[0-9a-f]{16}", request["request_id"])
    assert (request["device"], request["from_seq"], request["to_seq"]) == ("dock", 3, 8)
    row = await conn.fetchrow("SELECT source, from_seq, to_seq FROM replays")
    assert tuple(row) == (SOURCE, 3, 8)
    assert await conn.fetchval("SELECT request_id FROM replays") == request["request_id"]
    assert (r.requests, r.metrics.replays._value.get()) == (1, 1)
    # out_since is kept while the device stays out, not restarted
    assert await conn.fetchval("SELECT out_since FROM devices") < out_since
    # asked again only after min_gap
    await r.round(conn)
    assert len(publish.on("/cmd/replay")) == 1
    r._next[SOURCE] = time.monotonic() - 0.001
    await r.round(conn)
    assert len(publish.on("/cmd/replay")) == 2
    assert (r.requests, r.metrics.replays._value.get()) == (2, 2)


async def test_a_device_back_in_parity_is_cleared(conn) -> None:
    """out_since goes back to NULL and the gauges to 0 once the gap is filled."""
    await hold(conn, 1, 3)
    await checkpoint(conn, dock={"last_seq": 3, "last_sent_seq": 3})
    r = replayer(Published())
    await r.round(conn)
    assert await conn.fetchval("SELECT out_since IS NOT NULL FROM devices") is True
    assert r.metrics.out_of_parity._value.get() == 1
    assert r.metrics.missing._value.get() == 1
    assert SOURCE in r._seen
    await hold(conn, 2)
    await r.round(conn)
    assert await conn.fetchval("SELECT out_since IS NULL FROM devices") is True
    assert r.metrics.out_of_parity._value.get() == 0
    assert r.metrics.missing._value.get() == 0
    assert SOURCE not in r._seen  # its next gap starts young


async def test_gauges_count_missing_and_lag_over_devices(conn) -> None:
    """Missing seqs and checkpoint lag (stored on gateways, not yet held) are sums over
    devices; a device ahead of its checkpoint adds no negative lag."""
    await hold(conn, 1, 4)
    await hold(conn, 1, 2, 3, 4, 5, device="ahead")
    await checkpoint(
        conn,
        dock={"last_seq": 6, "last_sent_seq": 6},
        ahead={"last_seq": 3, "last_sent_seq": 3},
    )
    r = replayer(Published())
    await r.round(conn)
    assert r.metrics.missing._value.get() == 4  # 2, 3, 5, 6
    assert r.metrics.lag._value.get() == 6 - 2  # dock: 6 stored, 2 held; ahead: 0, not -2
    assert r.metrics.out_of_parity._value.get() == 1


async def test_what_is_asked_for_stops_at_what_the_gateway_sent_or_we_hold(conn) -> None:
    """Seqs the gateway stored but has not sent yet are on their way: not asked for."""
    await hold(conn, 1, 200)
    await checkpoint(conn, dock={"last_seq": 400, "last_sent_seq": 100})
    publish = Published()
    r = replayer(publish)
    await r.round(conn)
    await out_for(conn, 60)
    seen_long_ago(r)
    await r.round(conn)
    # missing 2-199 and 201-400; up to max(100 sent, 200 held)
    assert [(b["from_seq"], b["to_seq"]) for b in publish.on("/cmd/replay")] == [(2, 199)]


async def test_far_apart_gaps_are_separate_requests_up_to_max_ranges(conn) -> None:
    """Gaps more than 64 seqs apart are separate requests; at most ``max_ranges`` a round."""
    seqs = [1, *range(100, 171), *range(200, 271), *range(300, 371), 400]  # 71 held between
    await hold(conn, *seqs)
    await checkpoint(conn, dock={"last_seq": 400, "last_sent_seq": 400})
    publish = Published()
    r = replayer(publish, max_ranges=3)
    await r.round(conn)
    await out_for(conn, 60)
    seen_long_ago(r)
    await r.round(conn)
    asked = [(b["from_seq"], b["to_seq"]) for b in publish.on("/cmd/replay")]
    assert asked == [(2, 99), (171, 199), (271, 299)]
    assert await conn.fetchval("SELECT count(*) FROM replays") == 3


async def test_no_request_while_draining_young_or_unsent(conn) -> None:
    """A gateway draining its backlog, a device out for less than replay_after, a gap not yet
    replay_after old: nothing asked. A publish that fails is recorded but not counted."""
    await hold(conn, 1, 5)
    await checkpoint(conn, draining=True, dock={"last_seq": 5, "last_sent_seq": 5})
    publish = Published(ok=False)
    r = replayer(publish)
    await r.round(conn)
    await out_for(conn, 60)
    seen_long_ago(r)
    await r.round(conn)
    assert publish.sent == []
    await checkpoint(conn, dock={"last_seq": 5, "last_sent_seq": 5})
    await out_for(conn, 3)  # out for 3 s, replay_after is 5
    await r.round(conn)
    assert publish.sent == []
    await out_for(conn, 60)
    r._seen[SOURCE] = [(time.monotonic() - 4, [(1, 2**62)])]  # the gap was seen 4 s ago
    await r.round(conn)
    assert publish.sent == []
    seen_long_ago(r)
    await r.round(conn)
    assert [(b["from_seq"], b["to_seq"]) for b in publish.on("/cmd/replay")] == [(2, 4)]
    assert r.requests == 0
    assert r.metrics.replays._value.get() == 0
    assert await conn.fetchval("SELECT count(*) FROM replays") == 1


async def test_reconfirm_sends_the_ledgers_verdicts_from_the_lowest_unconfirmed(conn) -> None:
    """The checkpoint says 2 events of the device are unconfirmed from seq 3: the verdicts of
    seq 3 on, in seq order, with a rejected one's reason, go to ``{root}/confirm``; once per
    min_gap."""
    await conn.execute("INSERT INTO known_skus VALUES ('ok')")
    await hold(conn, 1, 2, 3, code="ok")
    await write_batch(
        conn,
        events(scan_event(5, code="bad", event_id="e5"), scan_event(4, code="ok", event_id="e4")),
        SkuRule(),
    )
    await checkpoint(
        conn,
        dock={"last_seq": 5, "last_sent_seq": 5, "unconfirmed": 2, "lowest_unconfirmed_seq": 4},
    )
    publish = Published()
    r = replayer(publish)
    await r.round(conn)
    topic, verdicts = publish.sent[0]
    assert topic == f"{ROOT}/confirm"
    assert verdicts == [
        {"id": "e4", "status": "accepted"},
        {"id": "e5", "status": "rejected", "reason": "unknown SKU 'bad'"},
    ]
    assert r.reconfirmed == 2
    await r.round(conn)
    assert len(publish.sent) == 1  # min_gap
    r._next_confirm[SOURCE] = time.monotonic() - 0.001
    await r.round(conn)
    assert len(publish.sent) == 2
    assert r.reconfirmed == 4


async def test_reconfirm_skips_what_it_cannot_use(conn) -> None:
    """No unconfirmed events, a junk or zero lowest seq, nothing held from there, confirms off,
    a failed publish: nothing sent (or nothing counted)."""
    await hold(conn, 1, 2)
    publish = Published()
    r = replayer(publish)
    for figures in (
        {"unconfirmed": 0, "lowest_unconfirmed_seq": 1},
        {"unconfirmed": 1, "lowest_unconfirmed_seq": "x"},
        {"unconfirmed": 1, "lowest_unconfirmed_seq": 0},
        {"unconfirmed": 1, "lowest_unconfirmed_seq": -3},
        {"unconfirmed": 1, "lowest_unconfirmed_seq": 2**63},
        {"unconfirmed": 1, "lowest_unconfirmed_seq": [1]},
        {"unconfirmed": 1},
        {"unconfirmed": 1, "lowest_unconfirmed_seq": 3},
    ):
        await checkpoint(conn, dock={"last_seq": 2, "last_sent_seq": 2, **figures})
        r._next_confirm.clear()
        await r.round(conn)
        assert publish.sent == [], figures
    await checkpoint(
        conn,
        dock={"last_seq": 2, "last_sent_seq": 2, "unconfirmed": 1, "lowest_unconfirmed_seq": 2},
    )
    off = Replayer(
        CentralSettings.model_validate(
            {"central": {"instance": "i"}, "confirm": {"enabled": False}}
        ),
        publish,
    )
    await off.round(conn)
    assert publish.sent == []
    failing = Published(ok=False)
    r = replayer(failing)
    await r.round(conn)
    assert len(failing.sent) == 1
    assert r.reconfirmed == 0
    await r.round(conn)
    assert len(failing.sent) == 1  # min_gap counts from the attempt


async def test_reconfirm_is_bounded(conn) -> None:
    """At most RECONFIRM_MAX verdicts a round, the lowest seqs first, in messages a gateway
    takes (at most MAX_CONFIRMS verdicts each)."""
    total = RECONFIRM_MAX + 5
    await write_batch(conn, events(*(scan_event(s) for s in range(1, total + 1))), SkuRule())
    await conn.execute("UPDATE events SET status = 'accepted', reason = NULL")
    await checkpoint(
        conn,
        dock={
            "last_seq": total,
            "last_sent_seq": total,
            "unconfirmed": total,
            "lowest_unconfirmed_seq": 1,
        },
    )
    publish = Published()
    r = replayer(publish)
    await r.round(conn)
    messages = publish.on("/confirm")
    assert all(len(message) <= MAX_CONFIRMS for message in messages)
    verdicts = [verdict for message in messages for verdict in message]
    assert len(verdicts) == RECONFIRM_MAX
    first = await conn.fetchval("SELECT id FROM events WHERE seq = 1")
    last = await conn.fetchval("SELECT id FROM events WHERE seq = $1", RECONFIRM_MAX)
    assert (verdicts[0]["id"], verdicts[-1]["id"]) == (first, last)
    assert all(v == {"id": v["id"], "status": "accepted"} for v in verdicts)


async def test_reconfirm_reaches_high_seqs(conn) -> None:
    """Any seq below 2**63 is a lowest unconfirmed seq, not only small ones."""
    await hold(conn, 300, 301, 302)
    await checkpoint(
        conn,
        dock={"last_seq": 302, "unconfirmed": 2, "lowest_unconfirmed_seq": 301},
    )
    publish = Published()
    r = replayer(publish)
    await r.round(conn)
    (verdicts,) = publish.on("/confirm")
    ids = [r["id"] for r in await conn.fetch("SELECT id FROM events WHERE seq >= 301 ORDER BY seq")]
    assert [v["id"] for v in verdicts] == ids


async def test_a_gap_across_what_the_gateway_sent_is_asked_for_up_to_it(conn) -> None:
    """A gap that starts at or below the last seq sent and goes on past it is asked for up to
    that seq, not dropped."""
    await hold(conn, 1)
    await checkpoint(conn, dock={"last_seq": 400, "last_sent_seq": 200})
    publish = Published()
    r = replayer(publish)
    await r.round(conn)
    await out_for(conn, 60)
    seen_long_ago(r)
    await r.round(conn)
    assert [(b["from_seq"], b["to_seq"]) for b in publish.on("/cmd/replay")] == [(2, 200)]
    await hold(conn, *range(2, 200))  # now only 200 on is missing: 200 itself was sent
    r._next[SOURCE] = time.monotonic() - 0.001
    await r.round(conn)
    assert [(b["from_seq"], b["to_seq"]) for b in publish.on("/cmd/replay")][1:] == [(200, 200)]


async def test_one_device_held_back_does_not_hold_back_the_next(conn) -> None:
    """Devices are looked at in order; one that is too young, or asked too recently, is
    skipped, and the devices after it in the same round are still asked."""
    first, second = "/s1/gw1/a-dock", "/s1/gw1/b-dock"
    await hold(conn, 1, 3, device="a-dock")
    await hold(conn, 1, 3, device="b-dock")
    await checkpoint(
        conn,
        **{
            "a-dock": {"last_seq": 3, "last_sent_seq": 3},
            "b-dock": {"last_seq": 3, "last_sent_seq": 3},
        },
    )
    publish = Published()
    r = replayer(publish)
    await r.round(conn)  # both out of parity from now
    await conn.execute(
        "UPDATE devices SET out_since = clock_timestamp() - interval '60 seconds'"
        " WHERE source = $1",
        second,
    )
    seen_long_ago(r, first)
    seen_long_ago(r, second)
    await r.round(conn)  # the first is still young
    assert [body["device"] for body in publish.on("/cmd/replay")] == ["b-dock"]

    await out_for(conn, 60)  # both old now; the first was asked a moment ago elsewhere
    r._next[first] = time.monotonic() + 100
    r._next[second] = time.monotonic() - 1
    seen_long_ago(r, first)
    seen_long_ago(r, second)
    await r.round(conn)
    assert [body["device"] for body in publish.on("/cmd/replay")] == ["b-dock", "b-dock"]
