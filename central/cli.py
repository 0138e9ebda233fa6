"""``edge-central run | check-config | parity | tail --config central.toml``.

Exit codes as the gateway's: 0 success, 2 bad usage or invalid config, 1 runtime failure (for
``parity``: a device out of parity longer than ``[parity] threshold``). No traceback for a
user's mistake.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from central.config import CentralSettings
    from central.parity_config import ParityConfig

# Imports below are made where they are needed: `parity` runs from cron and monitoring checks,
# and pydantic, gmqtt, prometheus_client and the schemas cost it over 100 ms of process time
# (bench/central_parity.py). tests/integration/central/test_parity_cli.py keeps it that way.

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-central", description="central ingest")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("run", "receive events into the ledger"),
        ("check-config", "validate the config file"),
        ("parity", "per-device parity against the gateways' checkpoints"),
        ("tail", "print events as they commit"),
    ):
        command = commands.add_parser(name, help=text)
        command.add_argument("--config", type=Path, required=True)
        if name == "parity":
            command.add_argument("--json", action="store_true")
            command.add_argument("--site", default=None)
            command.add_argument("--gateway", default=None)
    return parser


def _load(path: Path) -> CentralSettings | None:
    from central.config import load_central_settings  # noqa: PLC0415
    from gateway.settings import ConfigError  # noqa: PLC0415

    try:
        return load_central_settings(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0911 - one exit per outcome
    """The command line; `central.console` wraps it for the console script and `-m central`."""
    args = _parser().parse_args(argv)
    if args.command == "parity":
        return _parity_main(args.config, args.json, args.site, args.gateway)
    settings = _load(args.config)
    if settings is None:
        return EXIT_USAGE
    if args.command == "check-config":
        from central.rules import load_rule  # noqa: PLC0415
        from central.service import link_section  # noqa: PLC0415
        from gateway.config_lines import LineLocator, format_problem  # noqa: PLC0415

        try:
            load_rule(settings.confirm.rule)
        except ValueError as exc:
            # Found only by importing the rule, after validation: located like its problems.
            loc = ("confirm", "rule")
            line = LineLocator(Path(args.config).read_text(encoding="utf-8")).line_of(loc)
            print(format_problem(str(args.config), line, loc, str(exc)), file=sys.stderr)
            return EXIT_USAGE
        try:
            link_section(settings)
        except ValueError as exc:  # pydantic's ValidationError is one
            print(f"{args.config}: mqtt: {str(exc)[:500]}", file=sys.stderr)
            return EXIT_USAGE
        print(f"{args.config}: ok (instance {settings.central.instance})")
        return EXIT_OK
    try:
        if args.command == "run":
            return asyncio.run(_run(settings))
        return asyncio.run(_tail(settings))
    except KeyboardInterrupt:
        return EXIT_OK
    except OSError as exc:
        print(f"edge-central: {exc}", file=sys.stderr)
        return EXIT_FAIL


async def _run(settings: CentralSettings) -> int:
    from central.service import Central  # noqa: PLC0415
    from gateway.logging import configure_logging  # noqa: PLC0415

    configure_logging(settings.logging.level, settings.logging.format)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        central = Central(settings)
    except ValueError as exc:
        print(f"edge-central: {exc}", file=sys.stderr)
        return EXIT_USAGE
    await central.run(stop)
    return EXIT_OK


async def _connect(dsn: str, password: str | None):  # type: ignore[no-untyped-def]  # noqa: ANN202
    import asyncpg  # noqa: PLC0415

    return await asyncpg.connect(dsn, password=password)


def _parity_config(path: Path) -> ParityConfig | None:
    """The parity keys from the lean reader; the full loader only when it cannot vouch."""
    from central.parity_config import ParityConfig, read_parity_config  # noqa: PLC0415

    config = read_parity_config(path)
    if config is not None:
        return config
    settings = _load(path)  # reports the problem as every command does, or accepts odd forms
    if settings is None:
        return None
    return ParityConfig(
        dsn=settings.database.dsn,
        password_file=settings.database.password_file,
        threshold=settings.parity.threshold,
    )


def _parity_main(path: Path, as_json: bool, site: str | None, gateway: str | None) -> int:
    import asyncpg  # noqa: PLC0415

    config = _parity_config(path)
    if config is None:
        return EXIT_USAGE
    try:
        return asyncio.run(_parity(config, as_json, site, gateway))
    except KeyboardInterrupt:
        return EXIT_OK
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # A monitoring check reads one line, not a traceback: no ledger, no database, bad login.
        print(f"edge-central: {exc}", file=sys.stderr)
        return EXIT_FAIL


async def _parity(
    config: ParityConfig, as_json: bool, site: str | None, gateway: str | None
) -> int:
    from central.parity import parity_report  # noqa: PLC0415

    conn = await _connect(config.dsn, config.database_password())
    try:
        report = await parity_report(conn, site=site, gateway=gateway)
    finally:
        await conn.close()
    threshold = config.threshold
    late = [r for r in report if not r.in_parity and r.out_for_s > threshold]
    if as_json:
        body = {
            "in_parity": not any(not r.in_parity for r in report),
            "threshold_s": threshold,
            "late": [r.source for r in late],
            "devices": [r.as_json() for r in report],
        }
        print(json.dumps(body))
    else:
        print(f"{'source':<40} {'stored':>8} {'sent':>8} {'held':>8} missing / dup / conflicts")
        for r in report:
            state = "ok" if r.in_parity else f"OUT {r.out_for_s:.0f}s"
            print(
                f"{r.source:<40} {r.gateway_last_seq:>8} {r.gateway_last_sent_seq:>8}"
                f" {r.held:>8} {r.missing_count} {r.missing[:5]} / {r.duplicates}"
                f" / {r.conflicts} replays:{r.replays_outstanding} {state}"
            )
    return EXIT_FAIL if late else EXIT_OK


async def _tail(settings: CentralSettings) -> int:
    from central.schema import NOTIFY_CHANNEL  # noqa: PLC0415

    conn = await _connect(settings.database.dsn, settings.database_password())
    woke = asyncio.Event()
    await conn.add_listener(NOTIFY_CHANNEL, lambda *_: woke.set())
    last = await conn.fetchval("SELECT coalesce(max(received), now()) FROM events")
    # On stderr, so stdout stays one event a line: says when what commits from now on shows.
    print("edge-central tail: listening; events appear as they commit", file=sys.stderr, flush=True)
    try:
        while True:
            await woke.wait()
            woke.clear()
            rows = await conn.fetch(
                "SELECT received, source, seq, id, type, status, data::text FROM events"
                " WHERE received > $1 ORDER BY received LIMIT 10000",
                last,
            )
            for row in rows:
                print(
                    row["source"],
                    row["seq"],
                    row["id"],
                    row["type"],
                    row["status"],
                    row["data"],
                    flush=True,
                )
                last = row["received"]
    finally:
        await conn.close()


if __name__ == "__main__":
    sys.exit(main())
