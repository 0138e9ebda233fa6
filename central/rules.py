"""Rejection rules: which committed events are ``accepted`` and which ``rejected``, and why.

A rule runs inside the batch's transaction, so it may read the same database (the WMS's item
master, here the ``known_skus`` table) and its verdicts commit with the events they judge.
Configured by name (``accept-all``, ``sku``) or a dotted path ``package.module:factory``; the
factory is called with no arguments and returns an object with ``verdicts``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol

from central.validate import Event

SCAN = "warehouse.barcode.scanned.v1"


class Rule(Protocol):
    """Returns, per event, why it is rejected, or None to accept it.

    ``conn`` is the writer's own connection, inside the batch's transaction: read with it, and
    leave no session state behind (no ``SET`` outside ``SET LOCAL``, no ``LISTEN``, no
    session-level advisory lock). The pool hands the connection back without a reset (a round
    trip per batch saved), so such state would carry over to every later batch.
    """

    async def verdicts(self, conn: Any, events: Sequence[Event]) -> list[str | None]:  # noqa: ANN401
        """One entry per event, in order."""
        ...


class AcceptAll:
    """Every valid event is accepted."""

    async def verdicts(self, conn: Any, events: Sequence[Event]) -> list[str | None]:  # noqa: ANN401, ARG002
        """None for each."""
        return [None] * len(events)


class SkuRule:
    """Barcode scans must carry a code from ``known_skus``; other events are accepted."""

    async def verdicts(self, conn: Any, events: Sequence[Event]) -> list[str | None]:  # noqa: ANN401
        """One query per batch for all its codes."""
        codes = [_code(e) for e in events if e.type == SCAN]
        known: set[str] = set()
        if codes:
            rows = await conn.fetch(
                "SELECT sku FROM known_skus WHERE sku = ANY($1::text[])",
                [c for c in codes if c is not None],
            )
            known = {r["sku"] for r in rows}
        out: list[str | None] = []
        for event in events:
            code = _code(event) if event.type == SCAN else None
            if event.type == SCAN and code not in known:
                out.append(f"unknown SKU {code!r}"[:200])
            else:
                out.append(None)
        return out


def _code(event: Event) -> str | None:
    data = event.body.get("data")
    code = data.get("code") if isinstance(data, dict) else None
    return code if isinstance(code, str) else None


def load_rule(name: str) -> Rule:
    """The rule named in ``[confirm] rule``; ValueError if it cannot be loaded."""
    if name == "accept-all":
        return AcceptAll()
    if name == "sku":
        return SkuRule()
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ValueError(f"unknown rule {name!r} (accept-all, sku, or package.module:factory)")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
        rule = factory()
    except Exception as exc:
        raise ValueError(f"cannot load rule {name!r}: {exc}") from exc
    if not callable(getattr(rule, "verdicts", None)):
        # A config error, reported as such (check-config: exit 2), not a TypeError traceback.
        raise ValueError(f"rule {name!r} has no verdicts() method")  # noqa: TRY004
    return rule  # type: ignore[no-any-return]
