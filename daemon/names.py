"""File names: which inbox paths the daemon leaves alone, and the names it makes (never overwriting a file, always
within the file system's name limit)."""

import fnmatch
import os
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

NAME_MAX = 255  # bytes in one path component on Linux file systems (ext4, xfs, btrfs, tmpfs; SMB shares alike)


def ignored(name: str, patterns: Sequence[str]) -> bool:
    """Whether a file or folder name matches one of the `watch.ignore` patterns."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def skipped_folder(name: str, patterns: Sequence[str]) -> str | None:
    """Why an inbox subfolder is never scanned, or None: hidden folders (the claims' `.processing/`, a share's
    `.snapshot/`) always, and any folder that `watch.ignore` matches (the patterns apply to every path part)."""
    if name.startswith("."):
        return "hidden folders are never scanned"
    pattern = next((p for p in patterns if fnmatch.fnmatchcase(name, p)), None)
    return None if pattern is None else f"it matches the watch.ignore pattern {pattern!r}"


def fit_name(prefix: str, name: str, suffix: str, *, limit: int = NAME_MAX) -> str:
    """prefix + name + suffix, the name's stem shortened (its extension kept) so that the whole fits `limit` bytes."""
    full = f"{prefix}{name}{suffix}"
    if len(os.fsencode(full)) <= limit:
        return full
    stem, ext = os.path.splitext(name)
    if len(os.fsencode(ext)) > limit // 4:  # not a real extension: shorten the whole name
        stem, ext = name, ""
    room = limit - len(os.fsencode(f"{prefix}{ext}{suffix}"))
    short = os.fsencode(stem)[: max(room, 1)].decode("utf-8", errors="ignore") or "x"
    return f"{prefix}{short}{ext}{suffix}"


def first_free(taken: Callable[[str], bool], stem: str) -> str:
    """The first of `stem`, `stem-2`, `stem-3`... that `taken` says is free: the one "-N" rule for every name."""
    n = 1
    while True:
        candidate = stem if n == 1 else f"{stem}-{n}"
        if not taken(candidate):
            return candidate
        n += 1


def free_path(folder: Path, name: str, reserved: Collection[str] = ()) -> Path:
    """`folder/name`, or `folder/stem-2.ext`, `-3`...: the first that neither exists nor is in `reserved` (paths
    fixed for files not moved yet), so nothing is overwritten."""
    stem, ext = os.path.splitext(fit_name("", name, "", limit=NAME_MAX - 8))  # room for "-NNNNNNN"
    chosen = first_free(lambda s: str(folder / f"{s}{ext}") in reserved or os.path.lexists(folder / f"{s}{ext}"), stem)
    return folder / f"{chosen}{ext}"
