"""Commands another package adds to ``edge-gateway``: the ``edge_gateway.commands`` entry points.

The demo runs the gateway with the central ingest and simulated devices; it stands above both,
so the gateway's command line must not import it (nor anything of ``central``). It registers
its command under this group instead, as a third-party driver registers under
``edge_gateway.drivers`` (drivers/registry.py): ``name = "package.module:COMMAND"``, a
:class:`CliCommand`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

ENTRY_POINT_GROUP = "edge_gateway.commands"


@dataclass(frozen=True, slots=True)
class CliCommand:
    """One ``edge-gateway`` sub-command: its name, help, arguments and what runs it."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    """Runs the parsed command; returns the exit code (0, 1 or 2, as the built-in ones)."""
    epilog: str = ""


def added_commands() -> list[CliCommand]:
    """Every command registered under the group, by name.

    Imported here: importlib.metadata (with email, zipfile and csv) is ~1 MB the daemon does
    not need, and ``edge-gateway run`` never looks (gateway/cli.py).
    """
    from importlib.metadata import entry_points  # noqa: PLC0415

    commands = [ep.load() for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return sorted((c for c in commands if isinstance(c, CliCommand)), key=lambda c: c.name)
