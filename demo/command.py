"""``edge-gateway demo``'s arguments and start-up, added to the gateway's command line.

Registered under the ``edge_gateway.commands`` entry points (pyproject.toml,
gateway/cli_commands.py). What runs is imported only when the demo starts: ``--help`` and the
gateway's other commands load nothing of it but this module.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from gateway.cli import EXIT_OK, EXIT_RUNTIME
from gateway.cli_commands import CliCommand


def add_arguments(demo: argparse.ArgumentParser) -> None:
    """The demo's options (contract section 8)."""
    demo.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after N seconds (None: until q or a signal)",
    )
    demo.add_argument("--rate", type=float, default=2.0, help="scans per second per scanner")
    demo.add_argument("--scanners", type=int, default=3, help="how many simulated scanners")
    demo.add_argument(
        "--outage-every",
        type=float,
        default=0.0,
        metavar="S",
        help="stop the broker every S s (0: never)",
    )
    demo.add_argument("--outage-for", type=float, default=8.0, metavar="S", help="for S s")


def run(args: argparse.Namespace) -> int:
    """Everything simulated, on this machine; the central half is the real one on PostgreSQL."""
    from gateway.early_stop import EarlyStop  # noqa: PLC0415
    from simulators.postgres import PostgresServer, PostgresUnavailableError  # noqa: PLC0415

    # Until the demo's loop takes over signals (right after its broker starts), a signal is
    # noted and the demo stops once it can clean up: by default SIGTERM and SIGHUP would end
    # the process and leave initdb or the database running, its directory in /tmp.
    early_stop = EarlyStop()
    early_stop.install()
    try:
        # initdb takes most of a second: it runs while the demo's modules import (~0.3 s).
        database = PostgresServer(durable=True, prefix="edge-gateway-demo-pg-", background=True)
    except (PostgresUnavailableError, OSError, RuntimeError, LookupError) as exc:
        # LookupError: run as root on a box with the binaries but no "postgres" user.
        print(f"edge-gateway demo: needs PostgreSQL for its ledger: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    try:
        if early_stop.requested:
            return EXIT_OK
        from demo.session import run_demo  # noqa: PLC0415

        return asyncio.run(
            run_demo(
                duration=args.duration,
                rate=args.rate,
                scanners=args.scanners,
                outage_every=args.outage_every,
                outage_for=args.outage_for,
                database=database,
                early_stop=early_stop,
            )
        )
    finally:
        database.cleanup()  # the demo removes it; this is for when the demo never got it


COMMAND = CliCommand(
    name="demo",
    help="simulated scanners, broker and central system",
    add_arguments=add_arguments,
    run=run,
    epilog="keys while it runs: b = stop or start the broker (an outage), q = quit."
    " Ctrl-C, SIGTERM and SIGHUP stop it too, and its private broker with it.",
)
