"""The recorded LLRP captures live in the repo, and the simulator ships the same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]
VECTORS = ROOT / "tests" / "vectors" / "llrp"


@pytest.mark.parametrize(
    "name",
    ["caps_impinj_get_reader_capabilities_response.bin", "get_reader_config_response_impinj.bin"],
)
def test_simulator_copy_is_the_capture(name: str) -> None:
    """simulators/data/llrp/ holds byte-for-byte copies of tests/vectors/llrp/ (its README)."""
    assert (ROOT / "simulators" / "data" / "llrp" / name).read_bytes() == (
        VECTORS / name
    ).read_bytes()


def test_every_capture_is_described() -> None:
    """Each capture is named in the README that says where it comes from."""
    readme = (VECTORS / "README.md").read_text()
    captures = sorted(p.name for p in VECTORS.glob("*.bin"))
    assert len(captures) == 3
    for name in captures:
        assert name in readme
