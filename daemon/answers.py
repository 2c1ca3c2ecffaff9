"""Reading the API's answers: sync upload results and async task statuses, tolerant of the guessed shapes."""

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

import structlog

from daemon.errors import ProtocolError

log = structlog.get_logger(__name__)

SYNC_UPLOAD_PATH = "/api/v2/scm/upload/"
ASYNC_UPLOAD_PATH = "/api/v2/scm/upload/async/"


class TaskState(StrEnum):
    """Where an async task stands, in the client's words (the API's own words are in TaskStatus.raw_state)."""

    PENDING = "pending"  # accepted, waiting for a worker
    RUNNING = "running"  # being applied (the API says in-progress, or running)
    COMPLETE = "complete"  # applied: final
    FAILED = "failed"  # ended without applying (the API says failed, or error): final
    UNKNOWN = "unknown"  # a state the client does not know: treated as not finished


# API.md: the portal says in-progress and failed, the docs running and error.
_TASK_STATES: Mapping[str, TaskState] = {
    "pending": TaskState.PENDING,
    "in-progress": TaskState.RUNNING,
    "running": TaskState.RUNNING,
    "complete": TaskState.COMPLETE,
    "failed": TaskState.FAILED,
    "error": TaskState.FAILED,
    # Words that plainly mean the job ended without applying (none is confirmed by API.md): final, not waited on.
    "cancelled": TaskState.FAILED,
    "canceled": TaskState.FAILED,
    "aborted": TaskState.FAILED,
    "revoked": TaskState.FAILED,
    "expired": TaskState.FAILED,
}


def task_state(raw: str) -> TaskState:
    """The TaskState for the API's word, ignoring case, spaces and `_` for `-`; UNKNOWN for any other word."""
    word = "-".join(raw.strip().lower().replace("_", "-").split())
    return _TASK_STATES.get(word, TaskState.UNKNOWN)


@dataclass(frozen=True)
class TaskStatus:
    """An async task's status as the API reported it; timestamps are the API's strings, unparsed."""

    id: str
    state: TaskState
    raw_state: str
    codes_affected: int | None
    reference: str | None
    created_at: str | None
    started_at: str | None
    completed_at: str | None


@dataclass(frozen=True)
class SyncResult:
    """What a sync upload answered: the codes it changed, with the names of their changed fields."""

    changed: Mapping[str, tuple[str, ...]]
    total_updates: int | None
    codes_affected: int | None


def parse_sync_result(body: object, data_key: str) -> SyncResult:
    """A sync upload's 200 answer; `items` as a dict of code -> fields, or a list of codes or objects."""
    if not isinstance(body, dict):
        what = f"POST {SYNC_UPLOAD_PATH}"
        raise ProtocolError(f"{what} answered 200 with {shape(body)} instead of a JSON object")
    items = body.get("items")
    changed: dict[str, tuple[str, ...]] = {}
    if isinstance(items, dict):
        for code, fields in items.items():
            changed[str(code)] = _field_names(fields)
    elif isinstance(items, list):
        # API.md marks the shape of `items` a guess; a list of codes or of {code, fields} objects is accepted.
        for entry in items:
            if isinstance(entry, str):
                changed[entry] = ()
            elif isinstance(entry, dict):
                code = next((entry[k] for k in (data_key, "code") if isinstance(entry.get(k), str)), None)
                if code is not None:
                    changed[code] = _field_names(entry.get("fields", entry.get("changes")))
                else:
                    log.warning("api_sync_item_unreadable", keys=sorted(map(str, entry)))
    elif items is not None:
        raise ProtocolError(f"POST {SYNC_UPLOAD_PATH} answered 200 with `items` as {shape(items)}")
    return SyncResult(
        changed=MappingProxyType(changed),
        total_updates=_int_or_none(body.get("total_updates")),
        codes_affected=_int_or_none(body.get("codes_affected")),
    )


def parse_task_id(body: object) -> str:
    """The task id from an async upload's 200 answer, as a string."""
    what = f"POST {ASYNC_UPLOAD_PATH}"
    if not isinstance(body, dict):
        raise ProtocolError(f"{what} answered 200 with {shape(body)} instead of a JSON object")
    # API.md: a string [client]; an integer id is accepted too, and `id` if `task_id` is missing.
    task_id = body.get("task_id", body.get("id"))
    if isinstance(task_id, int) and not isinstance(task_id, bool):
        return str(task_id)
    if isinstance(task_id, str) and task_id.strip():
        return task_id.strip()
    raise ProtocolError(f"{what} answered 200 without a usable task_id ({shape(task_id)})")


def parse_task_status(body: object, task_id: str, path: str) -> TaskStatus:
    """A task status answer; an unknown state is read as UNKNOWN (not finished), never an error.

    It is not logged here: the uploader warns once per state name, not on every poll.
    """
    if not isinstance(body, dict):
        raise ProtocolError(f"GET {path} answered 200 with {shape(body)} instead of a JSON object")

    def pick(snake: str, camel: str) -> object:
        # API.md: the key names are guesses from a client's camelCase fields, so both spellings are read.
        return body.get(snake, body.get(camel))

    raw = body.get("state", body.get("status"))
    raw_state = "" if raw is None else str(raw)
    state = task_state(raw_state)
    reported_id = body.get("id")
    return TaskStatus(
        id=str(reported_id) if isinstance(reported_id, str | int) and not isinstance(reported_id, bool) else task_id,
        state=state,
        raw_state=raw_state,
        codes_affected=_int_or_none(pick("codes_affected", "codesAffected")),
        reference=_str_or_none(body.get("reference")),
        created_at=_str_or_none(pick("created_at", "createdAt")),
        started_at=_str_or_none(pick("started_at", "startedAt")),
        completed_at=_str_or_none(pick("completed_at", "completedAt")),
    )


def _str_or_none(value: object) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


def _field_names(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple | dict):
        return tuple(str(name) for name in value)
    return ()


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def shape(value: object) -> str:
    """A value's JSON type, for error messages."""
    return "null" if value is None else f"a JSON {type(value).__name__}"
