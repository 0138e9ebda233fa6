"""systemd/edge-central.service: valid for systemd-analyze and runs what edge-central offers."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[3] / "systemd" / "edge-central.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    """`systemd-analyze verify` reports nothing for the unit."""
    copy = tmp_path / "edge-central.service"
    copy.write_text(
        UNIT.read_text().replace("/opt/edge-gateway/venv/bin/", f"{Path(sys.executable).parent}/")
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "edge-central.service" not in result.stderr, result.stderr


def test_unit_validates_then_runs() -> None:
    """check-config before run, with the same config path; restarts whatever the exit."""
    text = UNIT.read_text()
    assert re.search(
        r"^ExecStartPre=\S+/edge-central check-config --config (\S+)$", text, re.MULTILINE
    )
    assert re.search(r"^ExecStart=\S+/edge-central run --config (\S+)$", text, re.MULTILINE)
    assert re.search(r"^Restart=always$", text, re.MULTILINE)
