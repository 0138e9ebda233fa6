"""The generic top-level names import from this project, not from whatever else is installed."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["buffer", "central", "demo", "drivers", "gateway", "simulators"])
def test_package_is_ours(name: str) -> None:
    """Each top-level package resolves to this checkout (contract section 2)."""
    module = importlib.import_module(name)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().parent == ROOT / name
