"""The command line: parses arguments, turns exceptions into messages and exit codes, and nothing else."""

import argparse
import gc
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from daemon.cli_parser import SANDBOX_TOKEN, build_parser
from daemon.config import ConfigError, Settings, find_config_file, load_settings, sandbox_settings
from daemon.ledger import Ledger
from daemon.ledger.dialect import (
    LedgerTarget,
    LedgerTargetError,
    LedgerUnavailable,
    is_url,
    ledger_exists,
    ledger_target,
    url_shown,
)
from daemon.ledger.migrate import LedgerVersionError
from daemon.logs import configure_logging
from daemon.progress import snapshot as progress_snapshot
from daemon.states import FileState
from daemon.status import render_overview

# Each command imports the heavy modules it needs (the service, the API client, the emulator, the readers) when
# it runs: `status` on a big ledger must answer within a second, and most of its time went to imports it never used.
if TYPE_CHECKING:
    from daemon.service import Service

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_TOKEN = 3


class UsageError(Exception):
    """Bad usage or configuration: exit code 2."""


def with_sandbox_ledger(settings: Settings) -> Settings:
    """The same settings with the sandbox's own ledger file, `<ledger>.sandbox.sqlite3` beside the real one."""
    ledger = settings.paths.ledger_file
    if ledger is None:  # a PostgreSQL ledger: the sandbox's is a file beside the configuration
        ledger = (settings.source.parent if settings.source else Path.cwd()) / "ledger.sqlite3"
    paths = settings.paths.model_copy(update={"ledger": ledger.with_name(f"{ledger.stem}.sandbox{ledger.suffix}")})
    return settings.model_copy(update={"paths": paths})


def _settings(args: argparse.Namespace) -> Settings:
    if getattr(args, "sandbox", False) and args.command != "run":
        # status, retry and prune --sandbox: the ledger `run --sandbox` keeps, read as that command reads it.
        return with_sandbox_ledger(load_settings(Path(args.config) if args.config else None))
    return load_settings(find_config_file(args.config))


def _install_signals(service: "Service") -> None:
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


def _settings_again(reload_settings: Callable[[], Settings], settings: Settings) -> Settings:
    """The configuration read again for a restarted service; the last good one when the file is broken now."""
    try:
        return reload_settings()
    except (ConfigError, OSError, ValueError) as exc:
        log.error("config_reload_failed", error=str(exc), note="the previous configuration stays in force")
        return settings


def cmd_run(args: argparse.Namespace) -> int:
    """The service."""
    from daemon.folders import ledger_lock, prepare_folders
    from daemon.lease import LeaseLostError
    from daemon.notify import Notifier
    from daemon.sandbox import Emulator, EmulatorConfig
    from daemon.service import Service
    from daemon.terminal import file_bars

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
        with ledger_lock(settings.paths.ledger_target()):
            while True:
                service = Service.from_settings(
                    settings,
                    once=args.once,
                    notifier=notifier,
                    reload_settings=reload_settings,
                    token_renewable=args.sandbox or not os.environ.get("SCM_API__TOKEN"),  # env: a restart
                )
                _install_signals(service)
                # What exists now (the imported libraries, the configuration: ~100,000 objects) lives as long as the
                # process. Frozen, the collector's full passes skip it: each such pass stopped every thread for
                # 40-90 ms, dozens of times while a million-row file was planned, and a request counted as sent by
                # the rolling window then left that much later, so that the API saw 11 in one second (a 429).
                gc.freeze()
                # For the same reason a worker whose turn came gets the interpreter within a millisecond, not the
                # default 5, while the loop's thread reads a big file (bench/stall.py: 1 x 429 at 5 ms, none at 1).
                sys.setswitchinterval(0.001)
                log.info(
                    "service_started",
                    inbox=str(settings.paths.inbox),
                    outbox=str(settings.paths.outbox),
                    ledger=settings.paths.ledger_target().shown,
                    base_url=settings.api.base_url,
                    once=args.once,
                    instance=service.leadership.me.id,
                )
                # A person running --once at a terminal sees a bar per file; cron and systemd get the log lines
                # only.
                bars = file_bars(
                    service.progress.current_files,
                    stream=sys.stderr,
                    log_level=args.log_level or "info",
                    log_to=sys.stdout,
                )
                try:
                    with bars if args.once else nullcontext():
                        service.run(once=args.once)
                    break
                except LeaseLostError:
                    # This instance stalled past its lease and another one leads now: everything of this run is
                    # closed; a fresh service stands by (the ledger, not this process, holds the state).
                    if service.stop_event.is_set() or args.once:
                        raise
                    settings = _settings_again(reload_settings, settings)
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
    from daemon.terminal import rows_bar
    from daemon.validate import render_validation, validate_file

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
    target = _settings(args).paths.ledger_target()
    if not ledger_exists(target):
        raise UsageError(f"no ledger at {target.shown} yet; start `scm-daemon run` or fix paths.ledger")
    ledger = Ledger(target)
    try:
        yield ledger
    finally:
        ledger.close()


def cmd_status(args: argparse.Namespace) -> int:
    """What the ledger holds."""
    target = _settings(args).paths.ledger_target()
    if not ledger_exists(target):
        # Nothing has run yet: a state, not an error.
        if args.json:
            print(json.dumps({"ledger": target.shown, "exists": False}, indent=2))
        else:
            print(f"no ledger yet at {target.shown} (it is created on first run)")
        return EXIT_OK
    with _existing_ledger(args) as ledger:
        live = ledger.live_row_counts()  # one pass over the rows of the files at work, for both
        data = ledger.overview(live=live)
        data["active_files"] = [p.as_dict() for p in progress_snapshot(ledger, time.time(), live)]
        data["notifications"] = ledger.notification_overview()
    print(json.dumps(data, indent=2) if args.json else render_overview(data))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """Configuration, folders, ledger, token; creates nothing (the first `run` does)."""
    from daemon.sandbox import Emulator, EmulatorConfig
    from daemon.setup_check import check_setup

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
        check_setup(settings, sandbox=args.sandbox)
        return EXIT_OK
    finally:
        if emulator is not None:
            emulator.stop()


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
    from daemon import retention

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


def _copy_end(value: str, password_file: Path | None, option: str) -> LedgerTarget:
    """A `ledger copy` --from or --to: a postgresql:// URL (its password from a file, never in the URL) or a file."""
    if is_url(value):
        try:
            url = make_url(value)
        except ArgumentError:
            raise UsageError(f"{option} is not a valid database URL: {url_shown(value)}") from None
        if url.password is not None:
            raise UsageError(f"{option} must not contain the password: put it in a file, give {option}-password-file")
        if not url.database:
            raise UsageError(f"{option} names no database (postgresql://USER@HOST:PORT/DATABASE)")
        return ledger_target(value, password_file)
    if password_file is not None:
        raise UsageError(f"{option}-password-file is for a postgresql:// {option}, not a file")
    return ledger_target(Path(value).expanduser().resolve())


def cmd_ledger_copy(args: argparse.Namespace) -> int:
    """Copy a whole ledger into a new, empty one, with neither in use by a service."""
    from daemon.folders import ledger_lock
    from daemon.ledger.copy import CopyRefused, copy_ledger, same_ledger

    source = _copy_end(args.source, args.from_password_file, "--from")
    target = _copy_end(args.target, args.to_password_file, "--to")
    if same_ledger(source, target):
        raise CopyRefused(f"the source and the target are the same ledger ({source.shown}); name another --to")
    if not ledger_exists(source):
        raise UsageError(f"no ledger at {source.shown} to copy; check --from")
    if target.path is not None and not target.path.parent.is_dir():
        raise UsageError(f"the folder of --to {target.path.parent} does not exist; create it first")
    print(f"copying {source.shown} to {target.shown}")
    with ExitStack() as held:  # a SQLite ledger's lock; on PostgreSQL, copy_ledger refuses a ledger under a lease
        for end in (source, target):
            held.enter_context(ledger_lock(end))
        result = copy_ledger(source, target, on_table=lambda name, rows: print(f"  {name}: {rows:,} rows"))
    if result.source_migrated_from is not None:
        print(f"the source was migrated from schema {result.source_migrated_from} first, as `run` would have")
    print(
        f"copied {result.total:,} rows in {result.seconds:.1f} s ({result.rows_per_second:,.0f} rows/s); "
        f"point paths.ledger at {target.shown} and start the service"
    )
    return EXIT_OK


def cmd_ledger(args: argparse.Namespace) -> int:
    """`ledger COMMAND`: commands on the ledger as a whole."""
    return LEDGER_COMMANDS[args.ledger_command](args)


LEDGER_COMMANDS = {"copy": cmd_ledger_copy}


def cmd_sandbox(args: argparse.Namespace) -> int:
    """Serve the emulator until interrupted."""
    from daemon.sandbox import EmulatorConfig, serve_forever

    config = EmulatorConfig(token=SANDBOX_TOKEN, rate_limit=args.rate_limit or None, latency=args.latency)
    serve_forever(args.port, config)
    return EXIT_OK


def cmd_notify_test(args: argparse.Namespace) -> int:
    """Send a test notification through each configured channel and say how each went."""
    from daemon.alerts import send_test

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
    "ledger": cmd_ledger,
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
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # `scm-daemon status | head`: the reader went away. Point stdout at /dev/null so that the flush at exit
        # cannot fail again (the recipe in Python's signal module documentation).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        return _failed(exc)


def _failed(exc: Exception) -> int:
    """The message and exit code of a command's exception (the modules that define the kinds are imported here,
    on the way out, so that a command that never meets them never loads them)."""
    from daemon.api import ApiError, ErrorKind, classify
    from daemon.folders import FolderError
    from daemon.lease import LeaseLostError
    from daemon.service import ApiUnreachableError, ConfigurationPausedError, LeaseHeldError, TokenRefusedError

    if isinstance(exc, LeaseHeldError | LeaseLostError):
        print(f"scm-daemon: {exc}; run --once again when it is done, or let the service do the work", file=sys.stderr)
        return EXIT_UNEXPECTED
    if isinstance(exc, ConfigError | UsageError | FolderError | LedgerVersionError | LedgerTargetError):
        print(f"scm-daemon: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, LedgerUnavailable):
        print(f"scm-daemon: {exc}; is the database server running?", file=sys.stderr)
        return EXIT_UNEXPECTED
    if isinstance(exc, TokenRefusedError):
        print(f"scm-daemon: {exc}; rows stay pending. Renew the token and run again.", file=sys.stderr)
        return EXIT_TOKEN
    if isinstance(exc, ApiUnreachableError):
        print(
            f"scm-daemon: not started: {exc}. No file was taken from the inbox; check the network and "
            "api.base_url (`scm-daemon check` tells which), then run again.",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED
    if isinstance(exc, ConfigurationPausedError):
        print(f"scm-daemon: {exc}; rows stay pending. Fix the configuration and run again.", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, ApiError):
        if classify(exc) is ErrorKind.TOKEN_REFUSED:
            print(f"scm-daemon: {exc}; renew the token and try again", file=sys.stderr)
            return EXIT_TOKEN
        print(f"scm-daemon: the API could not be reached or answered badly: {exc}", file=sys.stderr)
        return EXIT_UNEXPECTED
    log.exception("unexpected_error")
    return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
