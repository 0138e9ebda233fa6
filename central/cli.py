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

from central.config import CentralSettings, load_central_settings
from gateway.settings import ConfigError

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
    try:
        return load_central_settings(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0911 - one exit per outcome
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    settings = _load(args.config)
    if settings is None:
        return EXIT_USAGE
    if args.command == "check-config":
        from central.rules import load_rule  # noqa: PLC0415
        from central.service import link_section  # noqa: PLC0415

        try:
            load_rule(settings.confirm.rule)
        except ValueError as exc:
            print(f"{args.config}: confirm.rule: {exc}", file=sys.stderr)
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
        if args.command == "parity":
            return asyncio.run(_parity(settings, args.json, args.site, args.gateway))
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


async def _connect(settings: CentralSettings):  # type: ignore[no-untyped-def]  # noqa: ANN202
    import asyncpg  # noqa: PLC0415

    return await asyncpg.connect(settings.database.dsn, password=settings.database_password())


async def _parity(
    settings: CentralSettings, as_json: bool, site: str | None, gateway: str | None
) -> int:
    from central.parity import parity_report  # noqa: PLC0415

    conn = await _connect(settings)
    try:
        report = await parity_report(conn, site=site, gateway=gateway)
    finally:
        await conn.close()
    threshold = settings.parity.threshold
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

    conn = await _connect(settings)
    woke = asyncio.Event()
    await conn.add_listener(NOTIFY_CHANNEL, lambda *_: woke.set())
    last = await conn.fetchval("SELECT coalesce(max(received), now()) FROM events")
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
