"""Watcher: finds files in the inbox and hands over only those whose size and mtime have settled."""

import os
import stat
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from daemon.names import ignored, skipped_folder

log = structlog.get_logger(__name__)

# An empty file is usually a copy that has not started writing: it waits this long beyond settle_seconds before
# it is taken (and reported as an empty file). `run --once` takes it at once.
EMPTY_GRACE_SECONDS = 60.0
POLL_INTERVAL = 1.0  # seconds between two snapshots of the PollingObserver
RESTART_DELAY = 5.0  # seconds before another attempt to start an observer that failed to start


@dataclass(frozen=True)
class Sighting:
    """How a file looked when first seen with its current size and mtime."""

    size: int
    mtime_ns: int
    since: float  # monotonic time from which it has looked like this


__all__ = ["EMPTY_GRACE_SECONDS", "InboxEvents", "InboxScanner", "Sighting", "ignored", "inbox_name"]


def inbox_name(inbox: Path, path: Path) -> str:
    """A file's name in the ledger and the reports: its path relative to the inbox, in posix form (`LineA/x.csv`)."""
    return path.relative_to(inbox).as_posix()


class InboxScanner:
    """A full scan of the inbox and its subfolders; a file is settled once unchanged for `settle_seconds`.

    Subfolders at any depth are scanned, except hidden ones (the claims' `.processing/`) and those a
    `watch.ignore` pattern matches; symlinks, to files or folders, are never followed (one warning each).
    """

    def __init__(
        self, inbox: Path, *, settle_seconds: float, ignore: Sequence[str], empty_grace: float = EMPTY_GRACE_SECONDS
    ) -> None:
        self.inbox = inbox
        self.settle_seconds = settle_seconds
        self.ignore = list(ignore)
        self.empty_grace = empty_grace
        self._seen: dict[str, Sighting] = {}
        self._warned: set[str] = set()  # FIFOs, sockets, devices, symlinks: one warning each
        self._last_scan = -float("inf")

    @property
    def waiting(self) -> int:
        """Files seen but not settled yet."""
        return len(self._seen)

    def next_check(self) -> float | None:
        """When (monotonic) a file waiting to settle should be looked at again; None when none waits."""
        return min((s.since + self._settle_for(s.size) for s in self._seen.values()), default=None)

    def _settle_for(self, size: int) -> float:
        return self.settle_seconds + (self.empty_grace if size == 0 else 0.0)

    def scan(self, now: float, claimed: Collection[str]) -> list[Path]:
        """Settled files not yet claimed, oldest sighting first; `now` is monotonic time."""
        self._last_scan = now
        present: set[str] = set()
        settled: list[tuple[float, Path]] = []
        try:
            entries = self._files()
        except OSError as exc:
            log.error("inbox_unreadable", inbox=str(self.inbox), error=str(exc))
            return []
        for entry in entries:
            path = str(Path(entry.path))
            if path in claimed:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished between listing and stat
            present.add(path)
            seen = self._seen.get(path)
            if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
                self._seen[path] = Sighting(st.st_size, st.st_mtime_ns, now)
                continue
            # A zero-byte file is usually a copy that has not started writing yet: it waits longer.
            if now - seen.since >= self._settle_for(st.st_size):
                settled.append((seen.since, Path(path)))
        for gone in set(self._seen) - present:
            del self._seen[gone]
        settled.sort()
        return [p for _, p in settled]

    def _files(self) -> list[os.DirEntry[str]]:
        """The regular files of the inbox and of the subfolders the scan reaches; OSError if the inbox is unreadable."""
        files: list[os.DirEntry[str]] = []
        folders = [self.inbox]
        while folders:
            folder = folders.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError as exc:
                if folder == self.inbox:
                    raise
                self._warn(str(folder), "inbox_folder_unreadable", error=str(exc))
                continue
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if skipped_folder(entry.name, self.ignore) is None:
                            folders.append(Path(entry.path))
                    elif ignored(entry.name, self.ignore):
                        continue
                    elif entry.is_file(follow_symlinks=False):
                        files.append(entry)
                    else:
                        # Never opened, never moved (a FIFO would block the loop; a symlink may point anywhere,
                        # a symlinked folder even back into the inbox).
                        self._warn(entry.path, "inbox_entry_ignored", kind=_kind(entry))
                except OSError:
                    continue  # vanished between listing and looking
        return files

    def _warn(self, path: str, event: str, **details: str) -> None:
        """Log a warning about an inbox entry once, not on every scan."""
        if path not in self._warned:
            self._warned.add(path)
            log.warning(event, file=inbox_name(self.inbox, Path(path)), **details)

    def taken(self, path: Path) -> None:
        """Forget a file's sighting once it is claimed (or must be looked at afresh)."""
        self._seen.pop(str(path), None)


def _kind(entry: os.DirEntry[str]) -> str:
    """What a non-regular inbox entry is, for its warning."""
    if entry.is_symlink():
        return "symlink to a folder (not followed)" if entry.is_dir(follow_symlinks=True) else "symlink"
    mode = entry.stat(follow_symlinks=False).st_mode
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file"


class _Wake(FileSystemEventHandler):
    """Sets the loop's wake event for a file (or folder) created, written or moved into the scanned inbox."""

    def __init__(self, inbox: str, wake: threading.Event, ignore: Sequence[str]) -> None:
        self.inbox = inbox
        self.wake = wake
        self.ignore = list(ignore)

    def on_any_event(self, event: FileSystemEvent) -> None:
        # Runs in watchdog's thread: no I/O and no ledger here; the scan that follows does the work.
        if isinstance(event, FileMovedEvent | DirMovedEvent):
            path = os.fsdecode(event.dest_path)
        elif isinstance(event, FileCreatedEvent | FileModifiedEvent | DirCreatedEvent):
            path = os.fsdecode(event.src_path)
        else:
            return
        relative = os.path.relpath(path, self.inbox)
        if relative in (os.curdir, os.pardir) or relative.startswith(os.pardir + os.sep):
            return
        *folders, name = relative.split(os.sep)
        # A claim's rename into .processing/ must not wake the loop: the patterns apply to every part.
        if any(skipped_folder(f, self.ignore) for f in folders):
            return
        if event.is_directory and skipped_folder(name, self.ignore) is None:
            self.wake.set()  # a folder moved in may bring files: the scan finds them
        elif not event.is_directory and not ignored(name, self.ignore):
            self.wake.set()


class InboxEvents:
    """Supervised watchdog observer whose events only wake the loop early; the periodic scan stays the truth.

    inotify (`Observer`) sees only changes made through this host's kernel; on SMB/NFS shares written by other
    hosts `polling = true` selects the `PollingObserver`. Either can die (the inbox deleted or remounted, a share
    that went away), so `check()` restarts it, and says so in the log.
    """

    def __init__(
        self,
        inbox: Path,
        wake: threading.Event,
        *,
        polling: bool,
        ignore: Sequence[str],
        poll_interval: float = POLL_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inbox = inbox
        self.wake = wake
        self.polling = polling
        self.poll_interval = poll_interval
        self.clock = clock
        self._handler = _Wake(str(inbox), wake, ignore)
        self._observer: BaseObserver | None = None
        self._identity: tuple[int, int] | None = None  # the inbox's (device, inode) when the observer started
        self._retry_at = -float("inf")
        self._started_once = False
        self.restarts = 0  # how often a dead observer was replaced

    @property
    def kind(self) -> str:
        """Which observer is used, for the log."""
        return "polling" if self.polling else "inotify"

    def set_ignore(self, ignore: Sequence[str]) -> None:
        """Use new ignore patterns (after a configuration reload)."""
        self._handler.ignore = list(ignore)

    def alive(self) -> bool:
        """Whether the observer and its emitter are running on the inbox that is there now."""
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        emitters = list(observer.emitters)
        if not emitters or not all(e.is_alive() for e in emitters):
            return False
        return self._identity == self._inbox_identity()

    def start(self) -> bool:
        """Start observing; returns whether it worked (if not, the periodic scan carries on alone)."""
        self._identity = self._inbox_identity()
        observer: BaseObserver | None = None
        try:
            # watchdog 7 opens the inotify instance when the observer is made: that can fail too (EMFILE).
            observer = PollingObserver(timeout=self.poll_interval) if self.polling else Observer()
            observer.schedule(
                self._handler,
                str(self.inbox),
                recursive=True,  # subfolders are routes; symlinks are not followed (watchdog's default)
                event_filter=[FileCreatedEvent, FileModifiedEvent, FileMovedEvent, DirCreatedEvent, DirMovedEvent],
            )
            observer.start()
        except OSError as exc:
            # E.g. the inotify instance or watch limit, or the share not mounted yet.
            if observer is not None:
                observer.stop()  # closes the inotify instance it opened
            log.warning("watcher_unavailable", inbox=str(self.inbox), kind=self.kind, error=str(exc))
            self._observer = None
            self._retry_at = self.clock() + RESTART_DELAY
            return False
        self._observer = observer
        return True

    def check(self) -> None:
        """Restart the observer if it died; cheap enough to call on every turn of the loop."""
        if self.alive() or self.clock() < self._retry_at:
            return
        if self._observer is not None:
            log.warning("watcher_died", inbox=str(self.inbox), kind=self.kind)
        self.stop()
        if self.start():
            self.wake.set()  # whatever arrived while it was down is found by the scan this triggers
            if self._started_once:
                self.restarts += 1
                log.warning("watcher_restarted", inbox=str(self.inbox), kind=self.kind, restarts=self.restarts)
            else:
                log.info("watcher_started", inbox=str(self.inbox), kind=self.kind)
            self._started_once = True

    def stop(self) -> None:
        """Stop the observer and wait for its threads."""
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout=5)

    def _inbox_identity(self) -> tuple[int, int] | None:
        try:
            st = self.inbox.stat()
        except OSError:
            return None
        return st.st_dev, st.st_ino
