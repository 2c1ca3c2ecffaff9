"""The folders: checked before the service starts, created when missing, and names that never overwrite a file."""

import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import structlog

from daemon.config import PathsSettings, ReportsSettings, Settings
from daemon.ledger import FileInfo, Ledger
from daemon.ledger.dialect import LedgerTarget
from daemon.mounts import MOUNTINFO, filesystem_of
from daemon.names import free_path
from daemon.reporter import ReportNames, choose_base, write_reports
from daemon.states import FileState, Outcome

log = structlog.get_logger(__name__)


class FolderError(Exception):
    """A configured folder is missing or unusable."""


def prepare_folders(settings: Settings, *, create_inbox: bool = False, strict: bool = True) -> list[str]:
    """Check the inbox and create outbox, archive, failed and the ledger's folder when missing.

    With `strict` (run --once, check) a missing inbox or an outbox that cannot be made is an error; the service
    instead logs the problem and carries on (a share mounted late, or unmounted for a while, heals by itself:
    the scan and the delivery of reports are retried). The ledger's folder is always required. Returns the
    problems that were tolerated.
    """
    paths = settings.paths
    problems: list[str] = []
    if create_inbox:
        paths.inbox.mkdir(parents=True, exist_ok=True)
    ledger_folder = paths.ledger_file.parent if paths.ledger_file is not None else None  # None: PostgreSQL
    try:
        if ledger_folder is not None:
            ledger_folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FolderError(
            f"ledger folder {ledger_folder} cannot be created ({exc.strerror}); fix paths.ledger"
        ) from exc
    if not paths.inbox.is_dir():
        problems.append(f"inbox {paths.inbox} does not exist; create it or set paths.inbox")
    for what, folder in (("outbox", paths.outbox), ("archive", paths.archive), ("failed", paths.failed)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problems.append(f"{what} folder {folder} cannot be created ({exc.strerror}); fix paths.{what}")
    if strict and problems:
        raise FolderError(problems[0])
    for problem in problems:
        log.error("folder_unavailable", problem=problem, action="retried while the service runs")
    return problems


def remove_leftover_temps(outbox: Path) -> int:
    """Remove the temporary files of reports a crash interrupted (`.<name>.XXXX.tmp`), in the outbox and the
    subfolders routes write into (not following symlinks); returns how many."""
    removed = 0
    folders = [outbox]
    while folders:
        try:
            entries = list(os.scandir(folders.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                folders.append(Path(entry.path))
            elif entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                except OSError as exc:
                    log.warning("temp_report_not_removed", path=entry.path, error=str(exc))
                    continue
                removed += 1
    return removed


def refuse_network_ledger(ledger: Path | str, mountinfo: Path = MOUNTINFO) -> None:
    """Raise FolderError when a SQLite ledger's folder is on a network filesystem (NFS, SMB/CIFS, ...); a
    PostgreSQL ledger (a URL) is the way to keep the ledger off this machine."""
    if not isinstance(ledger, Path):
        return
    mount = filesystem_of(ledger.parent, mountinfo=mountinfo)
    if mount is not None and mount.network:
        raise FolderError(
            f"ledger {ledger} is on a network filesystem ({mount.fstype} {mount.source} at {mount.mount_point}); "
            "SQLite cannot lock a database there reliably and the ledger could be corrupted. Keep it on a local "
            "disk: set paths.ledger (under systemd, /var/lib/scm-daemon/ledger.sqlite3 from StateDirectory=)"
        )


@contextmanager
def ledger_lock(target: LedgerTarget) -> Iterator[None]:
    """Hold an exclusive lock on a SQLite ledger while a service uses it: a second one on the same file is refused.

    The lock is flock(2) on `<ledger>.lock`: the kernel releases it when the process dies, even by kill -9. A
    PostgreSQL ledger is shared by design (two hosts over one inbox): the instances elect one to do the work by the
    ledger's work lease (daemon.lease); the others stand by.
    """
    ledger = target.path
    if ledger is None:
        yield  # instances share a PostgreSQL ledger: its work lease decides which one works (daemon.lease)
        return
    lock_path = ledger.with_name(ledger.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise FolderError(
                f"another scm-daemon (pid {holder}) is already running with the ledger {ledger}; stop it first "
                "(systemctl stop scm-daemon), or give this one its own paths.ledger"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def fix_names(ledger: Ledger, f: FileInfo, paths: PathsSettings) -> FileInfo:
    """Fix in the ledger the report stem and the input's destination of a finished file, before anything is
    written (its record with them is returned).

    So a second pass after a crash rewrites the same reports and finds the input already moved, instead of choosing
    new names. A file from an inbox subfolder keeps its relative path: outbox/LineA/x.report.csv,
    archive/LineA/x.csv (folders made here).
    """
    folder = paths.failed if f.outcome is Outcome.FAILED else paths.archive
    for needed in (paths.outbox, folder):
        # Names are fixed only against the real folder: chosen in an absent one (a share unmounted) they could
        # be names already taken once it is back, and reports would be overwritten.
        if not needed.is_dir():
            raise FileNotFoundError(errno.ENOENT, "the folder is missing or not a folder", str(needed))
    relative = PurePosixPath(f.name)  # its path in the inbox
    subfolder = relative.parent.parts
    for needed in (paths.outbox, folder):
        needed.joinpath(*subfolder).mkdir(parents=True, exist_ok=True)  # inside a folder checked just above
    # Other files' names may be fixed but not used yet (their delivery failed): those are taken too.
    others = [o for o in ledger.files([FileState.REPORTING]) if o.id != f.id]
    if f.report_base is None:
        # A report base is relative to the outbox ("LineA/x"); names are reserved per folder.
        reserved = {
            PurePosixPath(o.report_base).name
            for o in others
            if o.report_base and PurePosixPath(o.report_base).parent == relative.parent
        }
        base = choose_base(paths.outbox.joinpath(*subfolder), relative.stem, reserved)
        ledger.set_file(f.id, report_base=(relative.parent / base).as_posix())
    if f.destination is None:
        destinations = {o.destination for o in others if o.destination}
        ledger.set_file(f.id, destination=str(free_path(folder.joinpath(*subfolder), relative.name, destinations)))
    return ledger.file(f.id)


def write_and_move(
    ledger: Ledger, f: FileInfo, paths: PathsSettings, reports: ReportsSettings | None = None
) -> tuple[ReportNames, Path]:
    """Write the reports of a file whose names are fixed (fix_names) and move its input; reads the ledger only, so
    that a big file's reports can be written off the loop's thread."""
    assert f.destination is not None
    names = write_reports(ledger, f, paths.outbox, ledger.now(), reports)
    source, target = Path(f.path), Path(f.destination)
    if source.exists() and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)
    elif not target.exists():
        log.warning("input_missing", file=f.name, path=str(source), note="the input vanished before it could be moved")
    return names, target
