"""Watcher: finds files in the inbox and hands over only those whose size and mtime have settled."""

import fnmatch
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Sighting:
    """How a file looked when first seen with its current size and mtime."""

    size: int
    mtime_ns: int
    since: float  # monotonic time from which it has looked like this


def ignored(name: str, patterns: Sequence[str]) -> bool:
    """Whether a file name matches one of the `watch.ignore` patterns."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


class InboxScanner:
    """A full scan of the inbox's top level; a file is settled once unchanged for `settle_seconds`."""

    def __init__(self, inbox: Path, *, settle_seconds: float, ignore: Sequence[str]) -> None:
        self.inbox = inbox
        self.settle_seconds = settle_seconds
        self.ignore = list(ignore)
        self._seen: dict[str, Sighting] = {}

    @property
    def waiting(self) -> int:
        """Files seen but not settled yet."""
        return len(self._seen)

    def scan(self, now: float, claimed: Collection[str]) -> list[Path]:
        """Settled files not yet claimed, oldest sighting first; `now` is monotonic time."""
        present: set[str] = set()
        settled: list[tuple[float, Path]] = []
        try:
            entries = list(os.scandir(self.inbox))
        except OSError as exc:
            log.error("inbox_unreadable", inbox=str(self.inbox), error=str(exc))
            return []
        for entry in entries:
            path = str(Path(entry.path))
            if path in claimed or ignored(entry.name, self.ignore):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished between listing and stat
            present.add(path)
            seen = self._seen.get(path)
            if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
                self._seen[path] = Sighting(st.st_size, st.st_mtime_ns, now)
                continue
            # A zero-byte file is usually a copy that has not started writing yet: it waits.
            if st.st_size > 0 and now - seen.since >= self.settle_seconds:
                settled.append((seen.since, Path(path)))
        for gone in set(self._seen) - present:
            del self._seen[gone]
        settled.sort()
        return [p for _, p in settled]

    def taken(self, path: Path) -> None:
        """Forget a file's sighting once it is claimed (or must be looked at afresh)."""
        self._seen.pop(str(path), None)
