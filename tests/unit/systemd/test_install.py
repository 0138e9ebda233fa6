"""systemd/install.sh as a process: offline from a wheelhouse, `edge-gateway` on the PATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root")
@pytest.mark.skipif(shutil.which("python3") is None, reason="no python3 on the PATH")
def test_install_from_a_wheelhouse_puts_edge_gateway_on_the_path(tmp_path: Path) -> None:
    """Wheels built beforehand, no index reachable: install.sh installs, links, checks the config."""
    wheelhouse = tmp_path / "wheelhouse"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheelhouse),
         "-c", "systemd/constraints.txt", "."],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if built.returncode != 0:
        pytest.skip(f"cannot build the wheelhouse here: {built.stderr[-300:]}")
    env = {
        **os.environ,
        "PREFIX": str(tmp_path / "opt"),
        "ETC": str(tmp_path / "etc"),
        "UNIT_DIR": str(tmp_path / "units"),
        "BIN_DIR": str(tmp_path / "bin"),
        "SERVICE_USER": "root",
        "WHEELHOUSE": str(wheelhouse),
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",  # nothing there: offline
        "PIP_CONFIG_FILE": os.devnull,
    }
    result = subprocess.run(
        ["bash", "systemd/install.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    command = tmp_path / "bin" / "edge-gateway"
    assert command.is_symlink()
    assert command.resolve() == (tmp_path / "opt" / "venv" / "bin" / "edge-gateway").resolve()
    version = subprocess.run(
        [str(command), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert version.returncode == 0 and version.stdout.startswith("edge-gateway ")
    assert f"{tmp_path / 'etc' / 'gateway.toml'}: ok" in result.stdout
    assert (tmp_path / "units" / "edge-gateway.service").exists()
