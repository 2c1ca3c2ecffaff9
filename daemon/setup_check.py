"""`scm-daemon check`: everything a first run needs, verified without creating anything."""

import os
from contextlib import closing
from pathlib import Path

from pydantic import SecretStr

from daemon.api import ScantrustClient
from daemon.config import CREDENTIAL_NAME, Settings
from daemon.config.routes import route_overview
from daemon.folders import FolderError, refuse_network_ledger
from daemon.ledger import Ledger
from daemon.ledger.dialect import ledger_exists


def check_setup(settings: Settings, *, sandbox: bool) -> None:
    """`scm-daemon check`: configuration, folders, ledger, token file modes and the token at the API, printed as
    it goes; creates nothing. Raises what the CLI turns into a message and exit code 2 (or 3, 1 for the API)."""
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
    target = paths.ledger_target()
    if ledger_exists(target):
        with closing(Ledger(target)) as ledger:  # its schema version is checked
            print(f"ledger: {target.shown} (schema version {ledger.schema_version})")
    else:
        if target.path is not None:
            _creatable(target.path.parent)
        print(f"ledger: no ledger yet (it is created on first run) at {target.shown}")
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
