"""Fuzz suite: hypothesis property tests on every parser that takes bytes from outside."""

from __future__ import annotations

from hypothesis import seed

from tests.fuzz.budget import SEED


def pytest_collection_modifyitems(items: list) -> None:
    """Pin hypothesis to ``EDGE_FUZZ_SEED`` when it is set, to replay a nightly failure."""
    if SEED is None:
        return
    for item in items:
        function = getattr(item, "function", None)
        if function is not None and hasattr(function, "hypothesis"):
            seed(int(SEED))(function)
