"""The repo stands alone: nothing in it reads or cites files beside the checkout (issue 14)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tracked() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [ROOT / name for name in out.split("\0") if name]


SIBLING = "../" + "shared"
"""The folder beside our own checkout that a user's clone does not have; spelled in two parts
so that this file does not hold it either (``git grep`` on the repo finds nothing)."""


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout"
)
def test_no_tracked_file_points_outside_the_repo() -> None:
    """No reference to the shared folder beside the checkout in code, tests or docs."""
    offenders = []
    for path in _tracked():
        if not path.is_file() or path.suffix == ".bin" or path == Path(__file__).resolve():
            continue
        text = path.read_text(errors="replace")
        if SIBLING in text or "DESIGN.md" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


PARENTS = re.compile(r"__file__\)(?:\.resolve\(\))?\.parents\[(\d+)\]")


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout"
)
def test_no_python_file_climbs_out_of_the_repo() -> None:
    """`Path(__file__).parents[N]` never reaches above the checkout.

    That is how the LLRP tests read their vectors from beside the checkout before
    (`parents[5] / "shared"`), which the text check above does not see.
    """
    offenders = []
    for path in _tracked():
        if path.suffix != ".py" or not path.is_file():
            continue
        depth = len(path.relative_to(ROOT).parts) - 1  # parents[depth] is the checkout
        offenders.extend(
            f"{path.relative_to(ROOT)}: {match[0]}"
            for match in PARENTS.finditer(path.read_text(errors="replace"))
            if int(match[1]) > depth
        )
    assert offenders == []


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout"
)
def test_a_clone_with_nothing_beside_it_runs_the_vector_tests(tmp_path: Path) -> None:
    """`git clone` into an empty directory: the RFID tests that read captures pass there."""
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    clone = lonely / "x"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    assert sorted(p.name for p in lonely.iterdir()) == ["x"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/unit/drivers/rfid_llrp/test_framing.py",
            "tests/unit/drivers/rfid_llrp/test_messages.py",
            "tests/unit/drivers/rfid_llrp/test_vectors.py",
        ],
        cwd=clone,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
