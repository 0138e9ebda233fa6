"""Fixtures shared by the buffer's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from buffer.store import Buffer


@pytest.fixture
async def buf(tmp_path: Path) -> AsyncIterator[Buffer]:
    """A buffer in ``tmp_path`` (buffer.db) with room to spare (100 MB cap), closed after."""
    b = await Buffer.open(tmp_path / "buffer.db", max_bytes=10**8)
    yield b
    await b.close()
