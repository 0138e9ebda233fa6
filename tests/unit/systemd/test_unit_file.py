"""The systemd unit: valid for systemd-analyze, hardened, and consistent with the CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[3] / "systemd" / "edge-gateway.service"

needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (./dev test installs it)",
)


def unit_for_this_venv(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv, so verify can check the executable."""
    text = UNIT.read_text().replace(
        "/opt/edge-gateway/venv/bin/", f"{Path(sys.executable).parent}/"
    )
    copy = tmp_path / "edge-gateway.service"
    copy.write_text(text)
    return copy


@needs_systemd
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    """`systemd-analyze verify` reports nothing for the unit."""
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit_for_this_venv(tmp_path))],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "edge-gateway.service" not in result.stderr, result.stderr


@needs_systemd
def test_security_exposure_is_at_most_3(tmp_path: Path) -> None:
    """`systemd-analyze security` rates the unit's exposure at 3.0 or better (lower is safer)."""
    text = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit_for_this_venv(tmp_path))],
        capture_output=True, text=True, timeout=60, check=False,
    ).stdout  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", text)
    assert match, text[-500:]
    exposure = float(match.group(1))
    print(json.dumps({"systemd_security_exposure": exposure}))
    assert exposure <= 3.0


def test_unit_runs_what_the_cli_offers() -> None:
    """ExecStartPre validates, ExecStart runs, ExecReload sends SIGHUP; Type=notify with a watchdog."""
    text = UNIT.read_text()
    assert re.search(r"^Type=notify$", text, re.MULTILINE)
    assert re.search(
        r"^ExecStartPre=\S+edge-gateway check-config --config \S+$", text, re.MULTILINE
    )
    assert re.search(r"^ExecStart=\S+edge-gateway run --config \S+$", text, re.MULTILINE)
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert re.search(r"^WatchdogSec=\d+$", text, re.MULTILINE)
    assert "StateDirectory=edge-gateway" in text
    assert "LoadCredential=mqtt-password:" in text
    assert "LoadCredential=mqtt-client-key:/etc/edge-gateway/mqtt-client.key" in text
    assert "SupplementaryGroups=dialout input" in text
