"""Retention: inputs in archive/ and failed/, and reports in the outbox, removed once older than configured.

Only what this daemon put there is ever removed. An input is known from the ledger: the place it was moved to
(`destination`), inside archive/ or failed/, with the size it had. A report is known by its summary.json: one
whose `sha256` and `source` name a file the ledger holds; its report.csv and rejected files go with it. Nothing is
reached through a symbolic link: folders are opened with O_NOFOLLOW and each name is looked at with lstat, so a
link is never followed and never removed.
"""

import json
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from daemon.config import PathsSettings, RetentionSettings, Settings
from daemon.ledger import Clock, FileInfo, Ledger
from daemon.reporter import names_for

log = structlog.get_logger(__name__)

SWEEP_EVERY = 86400.0  # seconds between sweeps of the running service (the first one is at its start)
SUMMARY_SUFFIX = ".summary.json"
MAX_SUMMARY_BYTES = 1 << 20  # a larger "summary.json" is not one this daemon wrote


@dataclass(frozen=True)
class Removal:
    """A file retention removes: the folder it is in, its path below that folder, and why it is the daemon's."""

    folder: Path
    relative: tuple[str, ...]  # path components below `folder`
    what: str  # "input" (archive/, failed/) or "report" (outbox)
    because: str  # e.g. "orders.csv, finished 2026-01-02T03:04:05+00:00"
    size: int | None = None  # an input must still have the size the ledger recorded

    @property
    def path(self) -> Path:
        """The full path."""
        return self.folder.joinpath(*self.relative)


def cutoff(now: datetime, days: float) -> datetime:
    """The time before which things are old."""
    return now - timedelta(days=days)


def inside(folder: Path, path: Path) -> tuple[str, ...] | None:
    """`path`'s components below `folder` (lexically, both absolute), or None when it is not strictly inside."""
    try:
        parts = Path(os.path.normpath(path)).relative_to(os.path.normpath(folder)).parts
    except ValueError:
        return None
    if not parts or any(p in ("", ".", "..") for p in parts):
        return None
    return parts


def report_siblings(base: str, summary: dict[str, Any]) -> list[str]:
    """The report names that go with the summary `<base>.summary.json`: the ones it names (plain names beginning
    with the base, never a path) and the standard ones."""
    names = names_for(base)
    found = [names.summary, names.report, names.rejected]
    reports = summary.get("reports")
    if isinstance(reports, dict):
        for name in reports.values():
            if (
                isinstance(name, str)
                and name.startswith(base + ".")
                and "/" not in name
                and "\\" not in name
                and "\0" not in name
                and name not in found
            ):
                found.append(name)
    return found


def ours(summary: object, known: dict[str, set[str]]) -> bool:
    """Whether a parsed summary.json was written by this daemon: its sha256 and source name a ledger file."""
    if not isinstance(summary, dict):
        return False
    sha256, source = summary.get("sha256"), summary.get("source")
    return isinstance(sha256, str) and isinstance(source, str) and source in known.get(sha256, set())


def old_inputs(files: list[FileInfo], paths: PathsSettings) -> Iterator[Removal]:
    """Inputs of done files (already chosen as finished before the cutoff) at their ledger destination."""
    for f in files:
        if f.destination is None:
            continue
        for folder in (paths.archive, paths.failed):
            relative = inside(folder, Path(f.destination))
            if relative is not None:
                yield Removal(folder, relative, "input", f"{f.name}, finished {f.finished_at}", f.size)
                break


def old_reports(outbox: Path, before: datetime, known: dict[str, set[str]]) -> list[Removal]:
    """Report sets in the outbox (top level) whose summary.json is ours and was written before `before`."""
    try:
        fd = _open_folder(outbox, ())
    except OSError as exc:
        log.warning("retention_folder_unreadable", folder=str(outbox), error=exc.strerror or str(exc))
        return []
    found: list[Removal] = []
    try:
        entries = set(os.listdir(fd))
        for name in sorted(entries):
            if not name.endswith(SUMMARY_SUFFIX) or name.startswith("."):
                continue
            summary, written = _read_summary(fd, name, before.timestamp())
            if not isinstance(summary, dict) or not ours(summary, known):
                continue
            base = name[: -len(SUMMARY_SUFFIX)]
            when = datetime.fromtimestamp(written, UTC).isoformat(timespec="seconds")
            because = f"report of {summary['source']}, written {when}"
            found.extend(
                Removal(outbox, (sibling,), "report", because)
                for sibling in report_siblings(base, summary)
                if sibling in entries
            )
    finally:
        os.close(fd)
    return found


def _read_summary(folder_fd: int, name: str, before: float) -> tuple[object, float]:
    """The parsed summary and when it was written, if it is a regular file (not a link) last written before
    `before`; else (None, 0)."""
    try:
        st = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode) or st.st_mtime >= before or st.st_size > MAX_SUMMARY_BYTES:
            return None, 0.0
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder_fd)
        with os.fdopen(fd, "rb") as f:
            return json.loads(f.read(MAX_SUMMARY_BYTES)), st.st_mtime
    except (OSError, ValueError):
        return None, 0.0


def plan(ledger: Ledger, paths: PathsSettings, settings: RetentionSettings, now: datetime) -> list[Removal]:
    """Everything retention would remove now (reads only)."""
    removals: list[Removal] = []
    if settings.archive_days is not None:
        before = cutoff(now, settings.archive_days).isoformat(timespec="milliseconds")
        removals.extend(r for r in old_inputs(ledger.delivered_before(before), paths) if _present(r))
    if settings.outbox_days is not None:
        removals.extend(old_reports(paths.outbox, cutoff(now, settings.outbox_days), ledger.known_sources()))
    return removals


def _present(removal: Removal) -> bool:
    """Whether a removal's file is there as a regular file of the recorded size, reached without a link."""
    found = _lstat(removal)
    if found is None:
        return False
    os.close(found[0])
    return True


def _lstat(removal: Removal) -> tuple[int, os.stat_result] | None:
    """The open folder holding the file and the file's lstat, if it is a regular file of the right size."""
    try:
        fd = _open_folder(removal.folder, removal.relative[:-1])
    except OSError:
        return None
    try:
        st = os.stat(removal.relative[-1], dir_fd=fd, follow_symlinks=False)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(st.st_mode) or (removal.size is not None and st.st_size != removal.size):
        os.close(fd)
        return None
    return fd, st


def remove(removals: list[Removal], stop: threading.Event | None = None) -> tuple[int, int]:
    """Remove each file, looked at again first, until `stop` is set; returns (removed, bytes). A failure is logged
    and skipped."""
    removed = freed = 0
    for r in removals:
        if stop is not None and stop.is_set():
            break
        found = _lstat(r)
        if found is None:
            continue
        fd, st = found
        try:
            os.unlink(r.relative[-1], dir_fd=fd)
        except OSError as exc:
            log.warning("retention_not_removed", path=str(r.path), error=exc.strerror or str(exc))
            continue
        finally:
            os.close(fd)
        removed += 1
        freed += st.st_size
        log.info("retention_removed", path=str(r.path), what=r.what, because=r.because)
    return removed, freed


def _open_folder(root: Path, below: tuple[str, ...]) -> int:
    """A descriptor of `root`/below..., each component below `root` opened without following a link."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for part in below:
        try:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError:
            os.close(fd)
            raise
        os.close(fd)
        fd = nxt
    return fd


def sweep(
    ledger: Ledger,
    paths: PathsSettings,
    settings: RetentionSettings,
    now: datetime,
    stop: threading.Event | None = None,
) -> tuple[int, int]:
    """Plan and remove (until `stop` is set); returns (files removed, bytes freed)."""
    removed, freed = remove(plan(ledger, paths, settings, now), stop)
    log.info("retention_swept", removed=removed, bytes_freed=freed)
    return removed, freed


def prune(ledger: Ledger, settings: Settings, older_than: float | None, *, dry_run: bool) -> list[str]:
    """`scm-daemon prune`: the ledger's rows of files finished more than `older_than` days ago, and the files
    [retention] says are old; with `dry_run`, what would go. Returns the lines to print."""
    lines: list[str] = []
    now = ledger.clock()
    if older_than is not None:
        before = cutoff(now, older_than).isoformat(timespec="milliseconds")
        if dry_run:
            found = ledger.prunable(before)
            lines += [f"ledger: would drop {rows} row(s) of {name}" for _, name, rows in found]
            total = sum(rows for *_, rows in found)
            lines.append(f"ledger: would drop {total} row(s) of {len(found)} file(s) finished before {before}")
            old = ledger.prune_notifications(before, dry_run=True)
            lines.append(f"ledger: would drop {old} notification(s) sent or given up before {before}")
        else:
            old = ledger.prune_notifications(before)
            lines.append(f"dropped {old} notification(s) sent or given up before {before}")
            files, rows = ledger.prune(before)
            lines.append(
                f"dropped {rows} row(s) of {files} file(s) finished before {before}; their file records, counts "
                "and the last data uploaded per code stay, so duplicates and repeats are still recognised"
            )
    if settings.retention.enabled:
        removals = plan(ledger, settings.paths, settings.retention, now)
        if dry_run:
            lines += [f"{r.what}: would remove {r.path} ({r.because})" for r in removals]
            lines.append(f"files: would remove {len(removals)} file(s)")
        else:
            removed, freed = remove(removals)
            lines.append(f"files: removed {removed} file(s), {freed:,} bytes")
    if dry_run:
        lines.append("dry run: nothing was removed")
    return lines


class RetentionSweeper:
    """The running service's retention: a sweep at start and then once a day, in a thread of its own so that a
    large archive never holds up the loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        ledger: Ledger,
        clock: Clock,
        monotonic: Callable[[], float],
        every: float = SWEEP_EVERY,
    ) -> None:
        self.ledger = ledger
        self.paths = settings.paths
        self.settings = settings.retention
        self.clock = clock
        self.monotonic = monotonic
        self.every = every
        self._next = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def tick(self) -> bool:
        """Start a sweep when one is due and none is running; True when one was started."""
        if not self.settings.enabled or self._stop.is_set() or self.monotonic() < self._next:
            return False
        if self._thread is not None and self._thread.is_alive():
            return False
        self._next = self.monotonic() + self.every
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()
        return True

    def join(self, timeout: float | None = None) -> None:
        """Wait for a sweep in progress."""
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        """The service stops: a sweep in progress ends after the file at hand (the next one starts over)."""
        self._stop.set()
        self.join()

    def _run(self) -> None:
        try:
            sweep(self.ledger, self.paths, self.settings, self.clock(), self._stop)
        except Exception as exc:  # tried again at the next sweep; the loop goes on regardless
            error = f"{type(exc).__name__}: {exc}"
            log.error("retention_failed", error=error, retry_in=self.every)
