"""The command line: parses arguments, turns exceptions into messages and exit codes, and nothing else."""

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import structlog
from pydantic import SecretStr

from daemon import __version__
from daemon.api import ApiError, ErrorKind, ScantrustClient, classify
from daemon.config import ConfigError, Settings, find_config_file, load_settings, sandbox_settings
from daemon.logs import configure_logging
from daemon.sandbox import Emulator, EmulatorConfig, serve_forever
from daemon.schema import LedgerVersionError
from daemon.service import FolderError, Service, TokenRefusedError, prepare_folders
from daemon.status import overview, render_overview
from daemon.validate import render_validation, validate_file

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_TOKEN = 3
SANDBOX_TOKEN = "sandbox-token"  # noqa: S105 - the emulator's own token, not a secret


class UsageError(Exception):
    """Bad usage or configuration: exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="scm-daemon",
        description="Upload supply-chain data dropped into a folder to the Scantrust SCM API, with reports.",
    )
    parser.add_argument("--version", action="version", version=f"scm-daemon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help="config file (default: $SCM_CONFIG, ./config.toml, /etc/scm-daemon/config.toml)",
        )
        return p

    run = with_config(sub.add_parser("run", help="watch the inbox, upload, report, until SIGTERM/SIGINT"))
    run.add_argument("--once", action="store_true", help="process the files now in the inbox, wait until final, exit")
    run.add_argument("--sandbox", action="store_true", help="run against the built-in API emulator (no token needed)")

    validate = with_config(sub.add_parser("validate", help="parse and plan a file without uploading anything"))
    validate.add_argument("file", type=Path, help="a CSV or Excel file")
    validate.add_argument("--json", action="store_true", help="print JSON instead of text")

    status = with_config(sub.add_parser("status", help="what the ledger holds: files, rows and batches by state"))
    status.add_argument("--json", action="store_true", help="print JSON instead of text")

    with_config(sub.add_parser("check", help="check configuration, folders, ledger, and the token against the API"))

    sandbox = sub.add_parser("sandbox", help="serve the built-in API emulator on 127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8765, help="port to listen on (default: 8765; 0 = any free)")
    sandbox.add_argument(
        "--rate-limit", type=float, default=10.0, help="SCM updates per second before 429 (default 10)"
    )
    sandbox.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer (default 0)")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(find_config_file(args.config))


def _install_signals(service: Service) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        if service.stop_event.is_set():
            os._exit(EXIT_UNEXPECTED)  # a second signal: the operator wants out now; the ledger stays consistent
        service.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_run(args: argparse.Namespace) -> int:
    """The service."""
    emulator: Emulator | None = None
    if args.sandbox:
        emulator = Emulator(EmulatorConfig(token=SANDBOX_TOKEN))
        base_url = emulator.start()
        # Only an explicit -c is read, and the ledger gets its own name: emulated uploads must never mark
        # rows as uploaded in a production ledger, where a real run would then skip them.
        config = Path(args.config) if args.config else None
        settings = sandbox_settings(config, base_url=base_url, token=SANDBOX_TOKEN)
        ledger = settings.paths.ledger
        paths = settings.paths.model_copy(update={"ledger": ledger.with_name(f"{ledger.stem}.sandbox{ledger.suffix}")})
        settings = settings.model_copy(update={"paths": paths})
        log.info("sandbox_started", base_url=base_url, ledger=str(paths.ledger))
    else:
        settings = _settings(args)
        settings.api.require_token()
    try:
        prepare_folders(settings, create_inbox=args.sandbox)
        service = Service(settings)
        _install_signals(service)
        log.info(
            "service_started",
            inbox=str(settings.paths.inbox),
            outbox=str(settings.paths.outbox),
            ledger=str(settings.paths.ledger),
            base_url=settings.api.base_url,
            once=args.once,
        )
        service.run(once=args.once)
    finally:
        if emulator is not None:
            emulator.stop()
    log.info("service_stopped")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Parse and plan one file."""
    settings = _settings(args)
    report = validate_file(args.file, settings)
    print(json.dumps(report, indent=2) if args.json else render_validation(report))
    return EXIT_OK if report["ok"] else EXIT_UNEXPECTED  # 1 when unreadable or when any row would be rejected


def cmd_status(args: argparse.Namespace) -> int:
    """What the ledger holds."""
    settings = _settings(args)
    if not settings.paths.ledger.exists():
        raise UsageError(f"no ledger at {settings.paths.ledger} yet; start `scm-daemon run` or fix paths.ledger")
    data = overview(settings.paths.ledger)
    print(json.dumps(data, indent=2) if args.json else render_overview(data))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """Configuration, folders, ledger, token."""
    settings = _settings(args)
    print(f"config: {settings.source or 'none found, defaults and environment'}")
    prepare_folders(settings)
    print(f"folders: inbox {settings.paths.inbox}, outbox {settings.paths.outbox}, archive {settings.paths.archive}")
    from daemon.ledger import Ledger  # noqa: PLC0415 - only this command opens the ledger this way

    Ledger(settings.paths.ledger).close()
    print(f"ledger: {settings.paths.ledger}")
    client = ScantrustClient(
        settings.api.base_url,
        SecretStr(settings.api.require_token()),
        connect_timeout=settings.api.connect_timeout,
        read_timeout=settings.api.read_timeout,
    )
    try:
        me = client.me()
    finally:
        client.close()
    print(f"token: accepted by {settings.api.base_url} (user {me.get('email') or me.get('id') or 'unknown'})")
    return EXIT_OK


def cmd_sandbox(args: argparse.Namespace) -> int:
    """Serve the emulator until interrupted."""
    config = EmulatorConfig(token=SANDBOX_TOKEN, rate_limit=args.rate_limit or None, latency=args.latency)
    serve_forever(args.port, config)
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "validate": cmd_validate,
    "status": cmd_status,
    "check": cmd_check,
    "sandbox": cmd_sandbox,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; every exception becomes a message on stderr and an exit code here, and only here."""
    args = build_parser().parse_args(argv)
    if args.command in ("run", "sandbox"):
        configure_logging()  # a service: its log on stdout, for journald
    else:
        configure_logging(level="warning", stream=sys.stderr)  # stdout carries the command's answer
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, UsageError, FolderError, LedgerVersionError) as exc:
        print(f"scm-daemon: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TokenRefusedError as exc:
        print(
            f"scm-daemon: the API refused the token ({exc}); rows stay pending. Renew the token and restart.",
            file=sys.stderr,
        )
        return EXIT_TOKEN
    except ApiError as exc:
        if classify(exc) is ErrorKind.TOKEN_REFUSED:
            print(f"scm-daemon: the API refused the token ({exc}); renew it and try again", file=sys.stderr)
            return EXIT_TOKEN
        print(f"scm-daemon: the API could not be reached or answered badly: {exc}", file=sys.stderr)
        return EXIT_UNEXPECTED
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception:
        log.exception("unexpected_error")
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
