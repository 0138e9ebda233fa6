"""``edge-gateway``: run | check-config | status | replay, and demo (contract section 8).

``demo`` is added by the demo package (gateway/cli_commands.py), which stands above this one.

Exit codes: 0 success, 2 bad usage or invalid config, 1 runtime failure. A user's mistake gets a
message, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.cli_commands import CliCommand, added_commands

if TYPE_CHECKING:
    from gateway.settings import Settings

# Each command imports what it needs when it runs (PLC0415 below): `run` must be able to keep
# optional libraries out of the daemon before anything imports structlog (see _lean_daemon).

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def _lean_daemon() -> None:
    """Keep rich and pydantic's plugin loader out of the daemon's memory (issues 8 and 16).

    rich (~4 MB of issue 8's 60 MB idle budget) is installed for ``status --watch`` and the
    demo; structlog imports it on sight, only to pretty-print tracebacks on a TTY, which the
    daemon (JSON logs under systemd) never does. A ``None`` in ``sys.modules`` makes
    ``import rich`` raise ImportError, so structlog takes its plain fallback.

    pydantic looks for plugins (observability hooks such as logfire) when it builds its first
    validator, and the module that does so imports importlib.metadata, which brings email,
    zipfile and csv along (~1 MB with biip's own lookups, see drivers/barcode_common/lean_biip.py;
    issue 16's 45 MB budget). The daemon runs no pydantic plugin: its loader is replaced by one
    that finds none, the same answer as ``PYDANTIC_DISABLE_PLUGINS=1``. Other commands keep
    pydantic's own.

    ``setdefault``: where a module is already loaded (tests calling ``main`` in-process),
    nothing changes.
    """
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    sys.modules.setdefault(_PYDANTIC_PLUGIN_LOADER, _no_pydantic_plugins())


_PYDANTIC_PLUGIN_LOADER = "pydantic.plugin._loader"


def _no_pydantic_plugins() -> ModuleType:
    """A stand-in for pydantic's plugin loader whose ``get_plugins`` finds no plugin."""
    loader = ModuleType(_PYDANTIC_PLUGIN_LOADER)
    vars(loader)["get_plugins"] = tuple
    return loader


BUILT_IN = {
    "run": "run the daemon",
    "check-config": "validate a config file",
    "status": "buffer depth, backlog age, device states",
    "replay": "re-publish a device's seq range from the buffer",
}
"""The gateway's own commands and their help; others come from the ``edge_gateway.commands``
entry points."""


def _parser(added: Sequence[CliCommand] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-gateway", description="Warehouse edge gateway: devices -> buffer -> MQTT."
    )
    parser.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run, check, status, replay = (sub.add_parser(name, help=h) for name, h in BUILT_IN.items())
    for p in (run, check, status, replay):
        p.add_argument("--config", required=True, type=Path, metavar="PATH")
    shown = status.add_mutually_exclusive_group()
    shown.add_argument("--json", action="store_true", help="machine-readable output")
    shown.add_argument("--watch", action="store_true", help="live view, refreshed each second")
    replay.add_argument("--device", required=True, metavar="D")
    replay.add_argument("--from-seq", required=True, type=int, metavar="N")
    replay.add_argument("--to-seq", type=int, default=None, metavar="M")
    replay.add_argument(
        "--password-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="read the broker password from PATH instead of the config's source",
    )
    for command in added:
        extra = sub.add_parser(command.name, help=command.help, epilog=command.epilog or None)
        command.add_arguments(extra)
    return parser


def _load(path: Path) -> Settings | None:
    from gateway.settings import ConfigError, load_settings  # noqa: PLC0415

    try:
        return load_settings(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return None


def cmd_check_config(path: Path) -> int:
    """Validate; print every error as PATH:LINE: key.path: message.

    Run from a shell, a ``password_file`` or TLS file that is a systemd credential is checked at
    the source its unit's ``LoadCredential=`` names (gateway/credentials.py), and the output says
    so. With the unit installed, every file the daemon opens is also checked against the unit's
    user (gateway/service_access.py): one it cannot read is an error, as the daemon would fail.
    """
    from gateway.config_lines import format_key_path  # noqa: PLC0415
    from gateway.service_access import check_service_access, daemon_files  # noqa: PLC0415
    from gateway.settings import secret_source  # noqa: PLC0415

    settings = _load(path)
    if settings is None:
        return EXIT_USAGE
    service = check_service_access(settings, str(path))
    for line in service.warnings:
        print(line, file=sys.stderr)
    if service.errors:
        for line in service.errors:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    print(f"{path}: ok ({len(settings.devices)} devices)")
    if not settings.devices:
        print(f"{path}: warning: no [[devices]]: the gateway will read nothing", file=sys.stderr)
    for key, file, _kind in daemon_files(settings):
        _, note = secret_source(file)
        if note:
            print(f"{format_key_path(key)}: {note}: checked")
    for line in service.notes:
        print(line)
    return EXIT_OK


async def _run_until_signalled(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before the heavy imports: a SIGTERM during start-up is then a clean stop, not a kill.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    from gateway.daemon import Gateway  # noqa: PLC0415 - keeps check-config light

    gateway = Gateway(settings)
    loop.add_signal_handler(signal.SIGHUP, gateway.request_reload)
    await gateway.run(stop)


def cmd_run(path: Path) -> int:
    """The daemon."""
    _lean_daemon()
    import structlog  # noqa: PLC0415

    from buffer.schema import BufferOpenError  # noqa: PLC0415
    from gateway.logging import configure_logging  # noqa: PLC0415
    from gateway.statelock import AlreadyRunningError  # noqa: PLC0415

    settings = _load(path)
    if settings is None:
        return EXIT_USAGE
    configure_logging(settings.logging.level, settings.logging.format)
    log = structlog.get_logger("gateway")
    try:
        asyncio.run(_run_until_signalled(settings))
    except AlreadyRunningError as exc:
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except BufferOpenError as exc:
        log.error("buffer_unusable", error=str(exc))
        return EXIT_RUNTIME
    except Exception as exc:
        log.exception("gateway_failed", error=str(exc))
        return EXIT_RUNTIME
    return EXIT_OK


def cmd_status(path: Path, *, as_json: bool, watch: bool = False) -> int:
    """Buffer and device state, read from the buffer file whether or not the daemon runs."""
    from gateway.settings import ConfigError, load_settings, status_settings  # noqa: PLC0415
    from gateway.status import show_status, watch_status  # noqa: PLC0415

    errors: list[str] = []
    accepted: frozenset[str] | None = None
    try:  # no password needed: status never talks to the broker
        settings = load_settings(path, secrets=False)
    except ConfigError as exc:
        errors = exc.errors
        fallback = status_settings(path)
        if fallback is None:  # not even [gateway]: nowhere to look
            for line in errors:
                print(line, file=sys.stderr)
            return EXIT_USAGE
        settings, accepted = fallback
    try:
        if watch:
            with contextlib.suppress(KeyboardInterrupt):
                return asyncio.run(watch_status(settings))
            return EXIT_OK
        return asyncio.run(
            show_status(settings, as_json=as_json, config_errors=errors, accepted=accepted)
        )
    except Exception as exc:  # a locked or unreadable file is a runtime failure, not a crash
        print(f"edge-gateway status: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


def _load_for_replay(path: Path, password_file: Path | None) -> Settings | None:
    """The config, with the password from ``password_file`` when given (not the config's)."""
    from gateway.settings import ConfigError, load_settings  # noqa: PLC0415

    if password_file is None:
        return _load(path)
    try:
        settings = load_settings(path, secrets=False)
        mqtt = settings.mqtt.with_password_file(password_file)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return None
    except ValueError as exc:
        print(f"edge-gateway replay: --password-file: {exc}", file=sys.stderr)
        return None
    return settings.model_copy(update={"mqtt": mqtt})


def cmd_replay(
    path: Path, device: str, from_seq: int, to_seq: int | None, password_file: Path | None = None
) -> int:
    """Re-publish a range straight from the buffer file, whether or not the daemon runs.

    It reads the file read-only and publishes over its own short MQTT connection (client id
    ``<daemon's>-replay-<pid>``): no second writer on the buffer, no dependency on the daemon
    being up, and a broker outage is an immediate, visible failure (exit 1).
    """
    from gateway.replay import replay_from_file  # noqa: PLC0415 - keeps check-config light

    settings = _load_for_replay(path, password_file)
    if settings is None:
        return EXIT_USAGE
    if from_seq < 1 or (to_seq is not None and to_seq < from_seq):
        print(f"edge-gateway replay: bad range {from_seq}..{to_seq}", file=sys.stderr)
        return EXIT_USAGE
    try:
        outcome = asyncio.run(
            replay_from_file(settings, device=device, from_seq=from_seq, to_seq=to_seq)
        )
    except Exception as exc:  # unreachable broker, unreadable file: runtime, not a crash
        print(f"edge-gateway replay: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    if outcome.error:
        print(f"edge-gateway replay: {outcome.error}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"{device}: re-published {outcome.count} events (seq {outcome.from_seq}..{outcome.to_seq})"
        + (f"; {outcome.unsent} not yet delivered, the daemon sends them" if outcome.unsent else "")
    )
    if outcome.count < outcome.attempted:
        refused = outcome.attempted - outcome.count
        print(
            f"edge-gateway replay: the broker refused {refused} of {outcome.attempted} events"
            " (too large for it, or not authorized: see its log)",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point.

    The added commands (the demo: gateway/cli_commands.py) are looked up only when the first
    argument is not a built-in one, so ``run`` starts without importlib.metadata.
    """
    words = sys.argv[1:] if argv is None else list(argv)
    added = [] if words[:1] and words[0] in BUILT_IN else added_commands()
    args = _parser(added).parse_args(words)
    if args.command == "check-config":
        return cmd_check_config(args.config)
    if args.command == "run":
        return cmd_run(args.config)
    if args.command == "status":
        return cmd_status(args.config, as_json=args.json, watch=args.watch)
    if args.command == "replay":
        return cmd_replay(args.config, args.device, args.from_seq, args.to_seq, args.password_file)
    return next(c for c in added if c.name == args.command).run(args)


if __name__ == "__main__":
    sys.exit(main())
