"""The command line: parses arguments, turns exceptions into messages and exit codes, and nothing else."""

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import FrameType

import structlog
from pydantic import SecretStr

from daemon import __version__, retention
from daemon.alerts import send_test
from daemon.api import ApiError, ErrorKind, ScantrustClient, classify
from daemon.config import CREDENTIAL_NAME, ConfigError, Settings, find_config_file, load_settings, sandbox_settings
from daemon.config.routes import route_overview
from daemon.folders import FolderError, ledger_lock, prepare_folders, refuse_network_ledger
from daemon.ledger import Ledger
from daemon.logs import LEVELS, configure_logging
from daemon.notify import Notifier
from daemon.progress import snapshot as progress_snapshot
from daemon.sandbox import Emulator, EmulatorConfig, serve_forever
from daemon.schema import LedgerVersionError
from daemon.service import ApiUnreachableError, ConfigurationPausedError, Service, TokenRefusedError
from daemon.states import FileState
from daemon.status import render_overview
from daemon.terminal import file_bars, rows_bar
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

    def with_log_level(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--log-level",
            choices=LEVELS,
            help="debug also logs every API answer (scrubbed): what to copy into a report of an API mismatch",
        )

    def with_sandbox(p: argparse.ArgumentParser) -> None:
        p.add_argument("--sandbox", action="store_true", help="the ledger of `run --sandbox` (ledger.sandbox.sqlite3)")

    run = with_config(sub.add_parser("run", help="watch the inbox, upload, report, until SIGTERM/SIGINT"))
    run.add_argument("--once", action="store_true", help="process the files now in the inbox, wait until final, exit")
    run.add_argument("--sandbox", action="store_true", help="run against the built-in API emulator (no token needed)")
    with_log_level(run)

    validate = with_config(
        sub.add_parser(
            "validate",
            help="parse and plan a file without uploading anything",
            description="Read and plan a file as the service would, uploading nothing. Exit code 0: every row "
            "could be sent; 1: the file cannot be read, or some rows would be rejected (listed with row and cell).",
        )
    )
    validate.add_argument("file", type=Path, help="a CSV or Excel file")
    validate.add_argument(
        "--route", metavar="FOLDER", help='read it as if dropped into inbox/FOLDER (a [routes."FOLDER"] key)'
    )
    validate.add_argument("--json", action="store_true", help="print JSON instead of text")
    with_log_level(validate)

    status = with_config(sub.add_parser("status", help="what the ledger holds: files, rows and batches by state"))
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    with_sandbox(status)

    check = with_config(
        sub.add_parser("check", help="check configuration, folders, ledger, and the token against the API")
    )
    check.add_argument(
        "--sandbox", action="store_true", help="check the configuration of `run --sandbox` against the emulator"
    )
    with_log_level(check)

    retry = with_config(sub.add_parser("retry", help="put the failed rows of files back in the upload queue"))
    retry.add_argument("files", nargs="*", metavar="NAME_OR_SHA", help="file name as dropped, or its SHA-256 (prefix)")
    retry.add_argument("--all", action="store_true", help="every file that has failed rows")
    with_sandbox(retry)

    prune = with_config(
        sub.add_parser(
            "prune",
            help="drop finished rows past retention, keeping what idempotency needs; apply [retention] to files",
            description="Drop the ledger rows of files finished more than --older-than DAYS ago (file records, "
            "counts and the last data per code stay), and remove old inputs from archive/ and failed/ and old "
            "reports from the outbox as [retention] archive_days and outbox_days say. Only files this daemon "
            "wrote are removed, never through a symbolic link.",
        )
    )
    prune.add_argument(
        "--older-than", type=float, metavar="DAYS", help="drop ledger rows of files finished more than DAYS ago"
    )
    prune.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    with_sandbox(prune)

    with_config(
        sub.add_parser(
            "notify-test",
            help="send a test notification through every [notify] channel now",
            description="Send a test notification through each channel set in [notify] (webhook, e-mail, command) "
            "and say how each went. Exit code 0: all delivered; 1: some were not; 2: no channel is configured.",
        )
    )

    sandbox = sub.add_parser(
        "sandbox",
        help="serve the built-in API emulator on 127.0.0.1",
        description="Serve the built-in Scantrust API emulator on 127.0.0.1. It accepts the token "
        f'{SANDBOX_TOKEN!r} (e.g. SCM_API__TOKEN={SANDBOX_TOKEN} with api.base_url = "http://127.0.0.1:PORT"), keeps '
        "its data in memory until it stops, and answers like the API: 100 items per sync call, async tasks, 429 "
        "beyond the rate limit.",
    )
    sandbox.add_argument("--port", type=int, default=8765, help="port to listen on (default: 8765; 0 = any free)")
    sandbox.add_argument(
        "--rate-limit", type=float, default=10.0, help="SCM updates per second before 429 (default 10)"
    )
    sandbox.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer (default 0)")
    return parser


def with_sandbox_ledger(settings: Settings) -> Settings:
    """The same settings with the sandbox's own ledger file, `<ledger>.sandbox.sqlite3` beside the real one."""
    ledger = settings.paths.ledger
    paths = settings.paths.model_copy(update={"ledger": ledger.with_name(f"{ledger.stem}.sandbox{ledger.suffix}")})
    return settings.model_copy(update={"paths": paths})


def _settings(args: argparse.Namespace) -> Settings:
    if getattr(args, "sandbox", False) and args.command != "run":
        # status, retry and prune --sandbox: the ledger `run --sandbox` keeps, read as that command reads it.
        return with_sandbox_ledger(load_settings(Path(args.config) if args.config else None))
    return load_settings(find_config_file(args.config))


def _install_signals(service: Service) -> None:
    # Handlers only set flags that the loop reads; it stops (or reloads) at its next turn, within 0.2 s.
    def handler(signum: int, _frame: FrameType | None) -> None:
        if service.stop_event.is_set():
            os._exit(EXIT_UNEXPECTED)  # a second signal: the operator wants out now; the ledger stays consistent
        service.stop()

    def reload(signum: int, _frame: FrameType | None) -> None:
        service.reload_requested = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGHUP, reload)


def cmd_run(args: argparse.Namespace) -> int:
    """The service."""
    emulator: Emulator | None = None
    notifier = Notifier.from_env()
    notifier.status("starting: checking the configuration, folders and ledger", force=True)
    reload_settings: Callable[[], Settings]
    if args.sandbox:
        emulator = Emulator(EmulatorConfig(token=SANDBOX_TOKEN))
        base_url = emulator.start()
        # Only an explicit -c is read, and the ledger gets its own name: emulated uploads must never mark
        # rows as uploaded in a production ledger, where a real run would then skip them.
        config = Path(args.config) if args.config else None

        def reload_settings() -> Settings:
            return with_sandbox_ledger(sandbox_settings(config, base_url=base_url, token=SANDBOX_TOKEN))

        settings = reload_settings()
        paths = settings.paths
        log.info("sandbox_started", base_url=base_url, ledger=str(paths.ledger))
    else:
        settings = _settings(args)
        settings.api.require_token()

        def reload_settings() -> Settings:
            return _settings(args)

    try:
        prepare_folders(settings, create_inbox=args.sandbox, strict=args.once)
        with ledger_lock(settings.paths.ledger):
            service = Service.from_settings(
                settings,
                once=args.once,
                notifier=notifier,
                reload_settings=reload_settings,
                token_renewable=args.sandbox or not os.environ.get("SCM_API__TOKEN"),  # env: a restart
            )
            _install_signals(service)
            log.info(
                "service_started",
                inbox=str(settings.paths.inbox),
                outbox=str(settings.paths.outbox),
                ledger=str(settings.paths.ledger),
                base_url=settings.api.base_url,
                once=args.once,
            )
            # A person running --once at a terminal sees a bar per file; cron and systemd get the log lines only.
            bars = file_bars(
                lambda: service.progress.current,
                stream=sys.stderr,
                log_level=args.log_level or "info",
                log_to=sys.stdout,
            )
            with bars if args.once else nullcontext():
                service.run(once=args.once)
    finally:
        if emulator is not None:
            emulator.stop()
    if args.once and service.undelivered():
        log.error(
            "service_stopped",
            reason=f"reports of {len(service.undelivered())} file(s) could not be delivered",
            error=service.undelivered()[0],
            action="fix the outbox or archive folder and run again: the reports are written then",
        )
        return EXIT_UNEXPECTED
    if args.once and service.uploader.gave_up_rows:
        log.error(
            "service_stopped",
            reason=f"{service.uploader.gave_up_rows} row(s) failed: the API kept failing beyond retry.max_attempts",
            action="see the reports; `scm-daemon retry` or run again once the API is reachable",
        )
        return EXIT_UNEXPECTED
    log.info("service_stopped")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Parse and plan one file."""
    settings = _settings(args)
    if not args.file.is_file():
        state = "is a folder, not a file" if args.file.is_dir() else "does not exist"
        raise UsageError(f"file {args.file} {state}; check the path")
    if args.route is not None and args.route not in settings.routes:
        known = ", ".join(f'"{key}"' for key in settings.routes) or "none configured"
        raise UsageError(f'--route {args.route!r} is not a [routes."FOLDER"] of the configuration (routes: {known})')
    with rows_bar(args.file.name, stream=sys.stderr, log_level=args.log_level or "warning", log_to=sys.stderr) as rows:
        report = validate_file(args.file, settings, route=args.route, on_rows=rows)
    print(json.dumps(report, indent=2) if args.json else render_validation(report))
    return EXIT_OK if report["ok"] else EXIT_UNEXPECTED  # 1 when unreadable or when any row would be rejected


@contextmanager
def _existing_ledger(args: argparse.Namespace) -> Iterator[Ledger]:
    """The configured ledger, which must exist already: these commands never create one."""
    settings = _settings(args)
    if not settings.paths.ledger.exists():
        raise UsageError(f"no ledger at {settings.paths.ledger} yet; start `scm-daemon run` or fix paths.ledger")
    ledger = Ledger(settings.paths.ledger)
    try:
        yield ledger
    finally:
        ledger.close()


def cmd_status(args: argparse.Namespace) -> int:
    """What the ledger holds."""
    ledger_path = _settings(args).paths.ledger
    if not ledger_path.exists():
        # Nothing has run yet: a state, not an error.
        if args.json:
            print(json.dumps({"ledger": str(ledger_path), "exists": False}, indent=2))
        else:
            print(f"no ledger yet at {ledger_path} (it is created on first run)")
        return EXIT_OK
    with _existing_ledger(args) as ledger:
        data = ledger.overview()
        data["active_files"] = [p.as_dict() for p in progress_snapshot(ledger, time.time())]
        data["notifications"] = ledger.notification_overview()
    print(json.dumps(data, indent=2) if args.json else render_overview(data))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """Configuration, folders, ledger, token; creates nothing (the first `run` does)."""
    emulator: Emulator | None = None
    if args.sandbox:
        # As `run --sandbox` would: only an explicit -c, the sandbox ledger, the emulator's token.
        emulator = Emulator(EmulatorConfig(token=SANDBOX_TOKEN))
        base_url = emulator.start()
        config = Path(args.config) if args.config else None
        settings = with_sandbox_ledger(sandbox_settings(config, base_url=base_url, token=SANDBOX_TOKEN))
    else:
        settings = _settings(args)
    try:
        return _check(settings, sandbox=args.sandbox)
    finally:
        if emulator is not None:
            emulator.stop()


def _check(settings: Settings, *, sandbox: bool) -> int:
    paths = settings.paths
    print(f"config: {settings.source or 'none found, defaults and environment'}")
    if not paths.inbox.is_dir() and not sandbox:  # run --sandbox creates its inbox
        raise FolderError(f"inbox {paths.inbox} does not exist; create it or set paths.inbox")
    later = [str(f) for f in (paths.inbox, paths.outbox, paths.archive, paths.failed) if not f.is_dir()]
    print(f"folders: inbox {paths.inbox}, outbox {paths.outbox}, archive {paths.archive}")
    if later:
        print(f"folders: {', '.join(later)} not there yet (created on first run)")
    for line in route_overview(settings):
        print(line)
    refuse_network_ledger(paths.ledger)
    if paths.ledger.exists():
        Ledger(paths.ledger).close()  # its schema version is checked
        print(f"ledger: {paths.ledger}")
    else:
        _creatable(paths.ledger.parent)
        print(f"ledger: no ledger yet (it is created on first run) at {paths.ledger}")
    if not sandbox:
        for warning in _token_file_warnings(settings):
            print(f"WARNING: {warning}")
    client = ScantrustClient(
        settings.api.base_url,
        SecretStr(settings.api.require_token()),
        connect_timeout=settings.api.connect_timeout,
        read_timeout=settings.api.read_timeout,
        request_deadline=settings.api.request_deadline,
    )
    try:
        me = client.me()
    finally:
        client.close()
    print(f"token: accepted by {settings.api.base_url} (user {me.get('email') or me.get('id') or 'unknown'})")
    return EXIT_OK


def _creatable(folder: Path) -> None:
    """FolderError unless `folder` exists or its nearest existing parent lets us create it."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise FolderError(
            f"ledger folder {folder} cannot be created ({existing} is not a folder this user may write); "
            "fix paths.ledger or the folder's permissions"
        )


def _token_file_warnings(settings: Settings) -> list[str]:
    """A token file or systemd credential that group or others may read: the token is only as safe as its mode."""
    files = [Path(settings.api.token_file)] if settings.api.token_file else []
    if os.environ.get("CREDENTIALS_DIRECTORY"):
        files.append(Path(os.environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME)
    warnings = []
    for file in files:
        try:
            mode = file.stat().st_mode & 0o777
        except OSError:
            continue
        if mode & 0o044:
            warnings.append(
                f"token file {file} is readable by group or others (mode {mode:03o}); run: chmod 600 {file}"
            )
    return warnings


def cmd_retry(args: argparse.Namespace) -> int:
    """Failed rows back to the queue; a running service (or the next run) uploads them."""
    if bool(args.files) == bool(args.all):
        raise UsageError("name the files to retry (by name or SHA-256), or give --all")
    with _existing_ledger(args) as ledger:
        if args.all:
            files = ledger.files([FileState.DONE])
        else:
            files = []
            for wanted in args.files:
                found = ledger.find_files(wanted)
                if not found:
                    raise UsageError(f"no file {wanted!r} in the ledger; `scm-daemon status` lists recent files")
                files.extend(found)
        total = 0
        for f in files:
            if f.state is not FileState.DONE:
                print(f"{f.name}: still being processed; its failed batches are retried by the service itself")
                continue
            moved = ledger.retry_failed(f.id)
            total += moved
            if moved or not args.all:
                print(f"{f.name}: {moved} failed row(s) back in the queue")
    print(f"{total} row(s) queued again; `scm-daemon run` uploads them and writes new reports")
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    """Drop old rows (file records and the last data uploaded per code stay) and old files ([retention])."""
    if args.older_than is not None and args.older_than < 0:
        raise UsageError("--older-than takes a number of days, 0 or more")
    settings = _settings(args)
    if args.older_than is None and not settings.retention.enabled:
        raise UsageError(
            "nothing to prune: give --older-than DAYS for the ledger, or set retention.archive_days or "
            "retention.outbox_days for the files"
        )
    with _existing_ledger(args) as ledger:
        for line in retention.prune(ledger, settings, args.older_than, dry_run=args.dry_run):
            print(line)
    return EXIT_OK


def cmd_sandbox(args: argparse.Namespace) -> int:
    """Serve the emulator until interrupted."""
    config = EmulatorConfig(token=SANDBOX_TOKEN, rate_limit=args.rate_limit or None, latency=args.latency)
    serve_forever(args.port, config)
    return EXIT_OK


def cmd_notify_test(args: argparse.Namespace) -> int:
    """Send a test notification through each configured channel and say how each went."""
    results = send_test(_settings(args).notify)
    if not results:
        raise ConfigError("no [notify] channel is configured: set notify.webhook_url, email_to or command")
    for channel, error in results:
        print(f"{channel}: delivered" if error is None else f"{channel}: not delivered: {error}")
    return EXIT_OK if all(error is None for _, error in results) else EXIT_UNEXPECTED


COMMANDS = {
    "run": cmd_run,
    "validate": cmd_validate,
    "status": cmd_status,
    "check": cmd_check,
    "retry": cmd_retry,
    "prune": cmd_prune,
    "sandbox": cmd_sandbox,
    "notify-test": cmd_notify_test,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; every exception becomes a message on stderr and an exit code here, and only here."""
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", None)
    if args.command in ("run", "sandbox"):
        configure_logging(level=level or "info")  # a service: its log on stdout, for journald
    else:
        configure_logging(level=level or "warning", stream=sys.stderr)  # stdout carries the command's answer
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, UsageError, FolderError, LedgerVersionError) as exc:
        print(f"scm-daemon: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TokenRefusedError as exc:
        print(f"scm-daemon: {exc}; rows stay pending. Renew the token and run again.", file=sys.stderr)
        return EXIT_TOKEN
    except ApiUnreachableError as exc:
        print(
            f"scm-daemon: not started: {exc}. No file was taken from the inbox; check the network and "
            "api.base_url (`scm-daemon check` tells which), then run again.",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED
    except ConfigurationPausedError as exc:
        print(f"scm-daemon: {exc}; rows stay pending. Fix the configuration and run again.", file=sys.stderr)
        return EXIT_USAGE
    except ApiError as exc:
        if classify(exc) is ErrorKind.TOKEN_REFUSED:
            print(f"scm-daemon: {exc}; renew the token and try again", file=sys.stderr)
            return EXIT_TOKEN
        print(f"scm-daemon: the API could not be reached or answered badly: {exc}", file=sys.stderr)
        return EXIT_UNEXPECTED
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # `scm-daemon status | head`: the reader went away. Point stdout at /dev/null so that the flush at exit
        # cannot fail again (the recipe in Python's signal module documentation).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception:
        log.exception("unexpected_error")
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
