"""SIGHUP: which configuration changes a running service can take over, and which wait for a restart."""

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from daemon.config import Settings

# Settings that only steer timing and discovery: changing them mid-run cannot split a file's treatment in two.
# Everything else (folders, ledger, API endpoint, upload mode, columns, ...) is fixed for the life of
# the process, because files already taken were recorded under the old values.
LIVE_SECTIONS = frozenset({"watch", "retry"})
# The token is read again when a refused one is re-checked (every few minutes, and at once on SIGHUP).
LIVE_KEYS = frozenset({("api", "requests_per_second"), ("api", "token"), ("api", "token_file")})


@dataclass(frozen=True)
class Changes:
    """The keys (as `section.key`) that differ between two configurations, split by when they take effect."""

    live: tuple[str, ...]
    need_restart: tuple[str, ...]


def _flat(settings: Settings) -> dict[tuple[str, str], Any]:
    flat: dict[tuple[str, str], Any] = {}
    for section in type(settings).model_fields:
        if section == "source":
            continue
        value = getattr(settings, section)
        if isinstance(value, BaseModel):
            for key in type(value).model_fields:
                flat[section, key] = getattr(value, key)
        else:
            flat[section, ""] = value  # a table without a fixed schema, such as [columns]
    return flat


def changes(old: Settings, new: Settings) -> Changes:
    """What differs between `old` and `new`; values are compared, never shown (one of them is the token)."""
    before, after = _flat(old), _flat(new)
    differing = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    live = tuple(f"{s}.{k}" for s, k in differing if s in LIVE_SECTIONS or (s, k) in LIVE_KEYS)
    rest = tuple(f"{s}.{k}" if k else s for s, k in differing if not (s in LIVE_SECTIONS or (s, k) in LIVE_KEYS))
    return Changes(live, rest)


def adopt(old: Settings, new: Settings) -> Settings:
    """`old` with the live parts of `new`: [watch], [retry], api.requests_per_second and the token."""
    api = old.api.model_copy(
        update={
            "requests_per_second": new.api.requests_per_second,
            "token": new.api.token,
            "token_file": new.api.token_file,
        }
    )
    return old.model_copy(update={"watch": new.watch, "retry": new.retry, "api": api})
