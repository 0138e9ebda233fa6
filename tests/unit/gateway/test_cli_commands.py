"""Commands added to ``edge-gateway`` by other packages (gateway/cli_commands.py): the demo."""

from __future__ import annotations

import pytest

from gateway.cli import main
from gateway.cli_commands import added_commands
from tests.support import ROOT, run_python


def test_the_demo_is_added_through_its_entry_point() -> None:
    """The installed distribution registers ``demo``; its arguments come with it."""
    demo = {c.name: c for c in added_commands()}["demo"]
    assert demo.run.__module__ == "demo.command"


def test_help_lists_the_added_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--outage-every" in out and "keys while it runs" in out


def test_no_gateway_module_imports_central_or_the_demo() -> None:
    """The demo stands above the gateway and the central ingest: importing every module of
    ``gateway`` (the command line included) loads neither package."""
    result = run_python(
        "import importlib, pkgutil, sys, gateway; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages("
        "gateway.__path__, 'gateway.') if m.name != 'gateway.__main__']; "
        "above = sorted(m for m in sys.modules if m.split('.')[0] in ('central', 'demo')); "
        "assert not above, above"
    )
    assert result.returncode == 0, result.stderr


def test_a_built_in_command_does_not_look_the_added_ones_up() -> None:
    """``check-config`` (as ``run``) parses without reading the entry points: the daemon's
    start does not pay for importlib.metadata, nor import the demo's module."""
    example = ROOT / "config" / "gateway.example.toml"
    result = run_python(
        "import sys; from gateway.cli import main; "
        f"code = main(['check-config', '--config', {str(example)!r}]); "
        "assert 'demo.command' not in sys.modules; sys.exit(code)"
    )
    assert result.returncode == 0, result.stdout + result.stderr
