"""Which filesystem a path lives on (from /proc/self/mountinfo), to keep the ledger off network shares."""

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")

# SQLite's locking relies on POSIX advisory locks that these filesystems implement badly or not at all; a ledger on
# one of them can be corrupted, or two daemons on two hosts can both believe they own it.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "fuse.rclone",
        "9p",
    }
)

_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo: where a filesystem is mounted, its type and its source."""

    mount_point: str
    fstype: str
    source: str

    @property
    def network(self) -> bool:
        """Whether this is a network filesystem."""
        return self.fstype in NETWORK_FILESYSTEMS


def unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (space is \\040, tab \\011, newline \\012, backslash \\134)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Every mount listed in a mountinfo text; malformed lines are skipped."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split(" ")
        # id parent major:minor root mount_point options [optional fields...] - fstype source super_options
        try:
            separator = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < separator + 3:
            continue
        mounts.append(Mount(unescape(fields[4]), fields[separator + 1], unescape(fields[separator + 2])))
    return mounts


def _within(path: str, mount_point: str) -> bool:
    if mount_point == "/":
        return path.startswith("/")
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount an absolute, resolved path lives on: the longest matching mount point (the last one if stacked)."""
    best: Mount | None = None
    for mount in mounts:
        if _within(path, mount.mount_point) and (best is None or len(mount.mount_point) >= len(best.mount_point)):
            best = mount
    return best


def filesystem_of(path: Path, *, mountinfo: Path = MOUNTINFO) -> Mount | None:
    """The mount of `path` (or of its nearest existing parent), or None when mountinfo cannot be read."""
    try:
        text = mountinfo.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return None  # not Linux, or /proc not mounted: nothing to check against
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return mount_of(os.path.realpath(existing), parse_mountinfo(text))
