"""Fixtures the gateway's and central's integration tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from simulators.scanner import ScannerSimulator


@pytest.fixture
async def scanner(tmp_path: Path) -> AsyncIterator[ScannerSimulator]:
    """A simulated serial scanner on a real pty (``sim.link`` is the port a config names)."""
    async with ScannerSimulator(tmp_path / "scanner0") as sim:
        yield sim
