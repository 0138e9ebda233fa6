"""The SKU rule on what a validator would not normally hand it: its verdicts stay bounded and
it never raises, since a rule runs inside the batch's transaction and an exception there would
send the whole batch back to the broker."""

from __future__ import annotations

import dataclasses
from typing import Any

from central.rules import SkuRule
from central.validate import Event

from .helpers import events, scan_event


def with_data(event: Event, data: Any) -> Event:
    """The event with ``data`` replaced in the body the rule reads."""
    return dataclasses.replace(event, body={**event.body, "data": data})


async def test_unknown_sku_reason_is_cut_at_200_characters(conn) -> None:
    """A 300-character code is named in the reason, cut to 200 (the confirm carries it)."""
    (event,) = events(scan_event(1))
    long_code = "9" * 300
    (reason,) = await SkuRule().verdicts(conn, [with_data(event, {"code": long_code})])
    assert reason is not None
    assert reason.startswith("unknown SKU '999")
    assert len(reason) == 200


async def test_scan_without_a_usable_code_is_rejected_not_raised(conn) -> None:
    """``data`` not an object, or ``code`` not a string: rejected as an unknown SKU ``None``;
    the query gets only text codes (a number in a ``text[]`` parameter would raise)."""
    await conn.execute("INSERT INTO known_skus VALUES ('111'), ('5')")
    first, second, third, fourth = events(*(scan_event(n) for n in range(1, 5)))
    batch = [
        with_data(first, ["111"]),
        with_data(second, {"code": 5}),
        with_data(third, "111"),
        with_data(fourth, {"code": "111"}),
    ]
    verdicts = await SkuRule().verdicts(conn, batch)
    assert verdicts == ["unknown SKU None", "unknown SKU None", "unknown SKU None", None]
