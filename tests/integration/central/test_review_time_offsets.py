"""Review of the one-JSON-parameter insert (issue 15): a valid event's time zone offset.

The validator takes any RFC 3339 offset (``time-hour`` 00-23), and asyncpg used to send the
instant (it converts an aware datetime to UTC itself). Sent as text in the batch's JSON,
PostgreSQL parses the offset and refuses one past 15:59 ("time zone displacement out of
range", a data error): ``Central._write`` then quarantined a valid event, the gateway never got
``accepted``, and every replay of it was quarantined again: never in the ledger.
"""

from __future__ import annotations

from datetime import UTC, datetime

import aiomqtt
import asyncpg
import pytest

from central.validate import Quarantined, Validator
from tests.support import wait_until

from .conftest import running_central
from .helpers import events, raw, scan_event, topic_of


@pytest.mark.parametrize("offset", ["+16:00", "-16:30", "+23:59", "+15:59", "Z"])
async def test_an_event_with_any_rfc3339_offset_is_stored_with_its_instant(
    broker, central_settings, pg_dsn, offset: str
) -> None:
    body = scan_event(1, time=f"2026-11-30T10:00:00.000001{offset}")
    (event,) = events(body)  # valid: the validator takes it
    settings = central_settings(replay={"enabled": False})
    async with (
        running_central(settings) as central,
        aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
    ):
        await client.publish(topic_of(body), raw(body), qos=1)
        await wait_until(lambda: central.totals["batches"] >= 1, timeout=20)
        assert (central.totals["stored"], central.totals["quarantined"]) == (1, 0)
    conn = await asyncpg.connect(pg_dsn)
    try:
        stored = await conn.fetchval("SELECT time FROM events WHERE id = $1", body["id"])
    finally:
        await conn.close()
    assert stored == event.time.astimezone(UTC)
    assert stored == datetime.fromisoformat(body["time"])


@pytest.mark.parametrize("time", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_a_time_whose_instant_is_outside_python_years_is_refused_by_the_validator(
    time: str,
) -> None:
    """The ledger writes the instant (UTC): converting these would raise OverflowError in the
    writer, not a data error, and the batch would fail every retry. Quarantined, as asyncpg's
    refusal of them quarantined them before."""
    body = scan_event(1, time=time)
    verdict = Validator(prefix="edge", max_payload=65536, keep_bytes=100).check(
        topic_of(body), raw(body)
    )
    assert isinstance(verdict, Quarantined)
    assert verdict.reason == "time is outside years 1-9999 in UTC"
