"""``[confirm] rule``: the built-in names, a factory by dotted path, and a clear ValueError
(check-config turns it into exit 2 with the line) for each way a name can be wrong."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from central.rules import AcceptAll, SkuRule, load_rule


class RejectAll:
    async def verdicts(self, conn: Any, events: Sequence[Any]) -> list[str | None]:
        return ["no"] * len(events)


def make_reject_all() -> RejectAll:
    return RejectAll()


def make_nothing_useful() -> object:
    return object()


def test_built_in_rules_by_name() -> None:
    assert isinstance(load_rule("accept-all"), AcceptAll)
    assert isinstance(load_rule("sku"), SkuRule)


def test_a_factory_by_dotted_path() -> None:
    assert isinstance(load_rule(f"{__name__}:make_reject_all"), RejectAll)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("SKU", "unknown rule 'SKU' (accept-all, sku, or package.module:factory)"),
        ("central.rules:", "unknown rule 'central.rules:'"),
        (":make_reject_all", "unknown rule ':make_reject_all'"),
        (
            "no_such_module_here:factory",
            "cannot load rule 'no_such_module_here:factory': No module",
        ),
        (f"{__name__}:no_such_factory", f"cannot load rule '{__name__}:no_such_factory': module"),
        (f"{__name__}:make_nothing_useful", "has no verdicts() method"),
    ],
)
def test_wrong_names_are_config_errors(name: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        load_rule(name)
    assert message in str(caught.value)
