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


@pytest.mark.skipif(shutil.which("python3") is None, reason="no python3 on the PATH")
@pytest.mark.parametrize("offline", [False, True])
def test_install_on_a_box_without_python3_venv(tmp_path: Path, offline: bool) -> None:
    """Debian's python3 without venv/ensurepip: install.sh installs python3-venv with apt-get.

    From a wheelhouse (no internet) it cannot: it says what to install and stops, before
    touching anything. The box is played by shims on the PATH: a python3 whose venv is missing
    (as Debian's is until python3-venv is installed) and an apt-get that records its call.
    """
    real = shutil.which("python3")
    shims = tmp_path / "shims"
    shims.mkdir()
    apt_log = tmp_path / "apt-get.log"
    (shims / "python3").write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        '  *"import ensurepip, venv"*) exit 1 ;;\n'
        '  *"-m venv"*) echo "ensurepip is not available" >&2; exit 1 ;;\n'
        "esac\n"
        f'exec {real} "$@"\n'
    )
    # apt-get "fails" once asked to install: the script stops there, nothing else is run.
    (shims / "apt-get").write_text(
        f'#!/bin/sh\necho "$@" >> {apt_log}\ncase "$1" in update) exit 0 ;; esac\nexit 42\n'
    )
    for shim in shims.iterdir():
        shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shims}:{os.environ['PATH']}",
        "PREFIX": str(tmp_path / "opt"),
        "ETC": str(tmp_path / "etc"),
        "UNIT_DIR": str(tmp_path / "units"),
        "BIN_DIR": str(tmp_path / "bin"),
        "SERVICE_USER": "root",
    }
    if offline:
        env["WHEELHOUSE"] = str(tmp_path / "wheelhouse")
    result = subprocess.run(
        ["bash", "systemd/install.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    calls = apt_log.read_text().splitlines() if apt_log.exists() else []
    if offline:
        assert result.returncode == 1, result.stderr
        assert "python3-venv is missing" in result.stderr
        assert calls == []
    else:
        assert result.returncode == 42, result.stdout + result.stderr
        assert any(c.split()[:1] == ["install"] and "python3-venv" in c.split() for c in calls)
    assert not (tmp_path / "opt").exists()  # stopped before the venv
