"""The command line's words: every command, option and help text (the commands themselves are in daemon.cli)."""

import argparse
from pathlib import Path

from daemon import __version__
from daemon.logs import LEVELS

SANDBOX_TOKEN = "sandbox-token"  # noqa: S105 - the emulator's own token, not a secret


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

    ledger = sub.add_parser(
        "ledger",
        help="work on the ledger itself: `ledger copy` moves it to another database",
        description="Commands on the ledger as a whole.",
    )
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True, metavar="LEDGER_COMMAND")
    copy = ledger_sub.add_parser(
        "copy",
        help="copy a whole ledger into a new, empty one (e.g. SQLite to PostgreSQL), idempotency included",
        description="Copy every table of the ledger --from (files, rows, batches, the last data uploaded per code, "
        "notifications) into the empty ledger --to, ids included, in one transaction: a file or code uploaded "
        "before is still recognised after the move. Both are first brought to the current schema (the target is "
        "created if need be). Refused (exit code 2) when the target holds a ledger already, is the source, or a "
        "service is running on either. Stop the service first; point paths.ledger at the target afterwards.",
    )
    copy.add_argument(
        "--from", dest="source", required=True, metavar="LEDGER", help="the ledger to copy: a SQLite file or URL"
    )
    copy.add_argument(
        "--to", dest="target", required=True, metavar="LEDGER", help="the new ledger: a postgresql:// URL or a file"
    )
    copy.add_argument(
        "--from-password-file", type=Path, metavar="FILE", help="the password of a postgresql:// --from, if any"
    )
    copy.add_argument(
        "--to-password-file", type=Path, metavar="FILE", help="the password of a postgresql:// --to, if any"
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
