"""The emulator's async uploads: body validation, and tasks that go pending -> in-progress -> complete | failed."""

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType

from daemon.sandbox.config import TaskVocabulary
from daemon.sandbox.store import ScmStore, ValidationFailed, json_object

MAX_CONSTRAINT_KEYS = 5
MAX_CONSTRAINT_VALUES = 1000  # in all, over every key


class TaskState(StrEnum):
    """A task's state, in the portal's words."""

    PENDING = "pending"  # waiting for a worker
    IN_PROGRESS = "in-progress"  # being applied
    COMPLETE = "complete"  # applied (final)
    FAILED = "failed"  # nothing applied (final)


# The docs' words for the same states (API.md): `running` and `error`.
DOCS_WORDS: Mapping[TaskState, str] = {TaskState.IN_PROGRESS: "running", TaskState.FAILED: "error"}


@dataclass(frozen=True)
class AsyncRequest:
    """A validated async upload: constraint key -> values, the data to set, and the free-text reference."""

    constraints: Mapping[str, tuple[str, ...]]
    scm_data: Mapping[str, str]
    reference: str


@dataclass(frozen=True)
class TaskSnapshot:
    """A task as it stands; `state` is in the portal's words whatever vocabulary the API speaks."""

    id: str
    reference: str
    state: TaskState
    constraints: Mapping[str, tuple[str, ...]]
    scm_data: Mapping[str, str]
    codes_affected: int | None  # None until the task is final; 0 for a failed task
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None


def parse_async_body(raw: bytes) -> AsyncRequest:
    """Parse and validate an async upload body as the API's serializer would; raise ValidationFailed (400)."""
    body = json_object(raw)
    errors: dict[str, object] = {}
    constraints = _constraints(body.get("constraints"), errors)
    scm_data = _scm_data(body.get("scm_data"), errors)
    # The reference is free text the portal shows; a job without one is accepted.
    reference = body.get("reference", "")
    if not isinstance(reference, str):
        errors["reference"] = ["Not a valid string."]
    if errors or constraints is None or scm_data is None:
        raise ValidationFailed(errors)
    return AsyncRequest(MappingProxyType(constraints), MappingProxyType(scm_data), str(reference))


def _constraints(value: object, errors: dict[str, object]) -> dict[str, tuple[str, ...]] | None:
    if value is None:
        errors["constraints"] = ["This field is required."]
        return None
    if not isinstance(value, dict):
        errors["constraints"] = [f'Expected a dictionary of items but got type "{type(value).__name__}".']
        return None
    if not 1 <= len(value) <= MAX_CONSTRAINT_KEYS:
        errors["constraints"] = [f"Ensure there are between 1 and {MAX_CONSTRAINT_KEYS} constraints."]
        return None
    per_key: dict[str, object] = {}
    out: dict[str, tuple[str, ...]] = {}
    for key, values in value.items():
        if not key:
            per_key[key] = ["A constraint needs a field name."]
        elif not isinstance(values, list):
            per_key[key] = [f'Expected a list of items but got type "{type(values).__name__}".']
        elif not values:
            per_key[key] = ["This list may not be empty."]
        else:
            # DRF's ListField reports its children's errors keyed by index.
            bad = {str(n): [_value_error(v)] for n, v in enumerate(values) if not (isinstance(v, str) and v)}
            if bad:
                per_key[key] = bad
            else:
                out[key] = tuple(values)
    if per_key:
        errors["constraints"] = per_key
        return None
    if sum(map(len, out.values())) > MAX_CONSTRAINT_VALUES:
        errors["constraints"] = [f"Ensure there are no more than {MAX_CONSTRAINT_VALUES} values in all."]
        return None
    return out


def _value_error(value: object) -> str:
    if value is None:
        return "This field may not be null."
    return "This field may not be blank." if value == "" else "Not a valid string."


def _scm_data(value: object, errors: dict[str, object]) -> dict[str, str] | None:
    if value is None:
        errors["scm_data"] = ["This field is required."]
        return None
    if not isinstance(value, dict):
        errors["scm_data"] = [f'Expected a dictionary of items but got type "{type(value).__name__}".']
        return None
    if not value:
        errors["scm_data"] = ["This field may not be empty."]
        return None
    bad = {name: ["Not a valid string."] for name, v in value.items() if not isinstance(v, str)}
    if bad:
        errors["scm_data"] = bad
        return None
    return dict(value)


class _Task:
    """A task's fixed plan (decided when it is created) and its final outcome once reached."""

    def __init__(
        self,
        snapshot: TaskSnapshot,
        *,
        born: float,
        pending: float,
        running: float,
        fails: bool,
        forever: bool,
        known_codes: frozenset[str] | None,
        campaign_fields: frozenset[str] | None,
    ) -> None:
        self.first = snapshot
        self.starts = math.inf if forever else born + pending  # clock times
        self.ends = math.inf if forever else born + pending + running
        # Wall times, as the API shows them; a task that never starts never gets them.
        self.started_at = None if forever else snapshot.created_at + timedelta(seconds=pending)
        self.completed_at = None if self.started_at is None else self.started_at + timedelta(seconds=running)
        self.fails = fails
        self.known_codes = known_codes
        self.campaign_fields = campaign_fields
        self.final: TaskSnapshot | None = None


class TaskStore:
    """Every task created; a task's data is applied to the ScmStore when its time to complete has come.

    Time advances lazily: every request and every inspection first finishes the tasks that are due, in the
    order they became due, so the outcome is the same as with a timer but needs no thread.
    """

    def __init__(
        self,
        scm: ScmStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._scm = scm
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._tasks: dict[str, _Task] = {}
        self._open: list[_Task] = []
        self.completed = 0
        self.failed = 0

    def create(
        self,
        request: AsyncRequest,
        *,
        task_id: str,
        pending: float,
        running: float,
        fails: bool,
        forever: bool = False,
        known_codes: frozenset[str] | None,
        campaign_fields: frozenset[str] | None,
    ) -> TaskSnapshot:
        """Record a new pending task whose course (durations, failure, or staying pending for ever) is fixed now."""
        snapshot = TaskSnapshot(
            id=task_id,
            reference=request.reference,
            state=TaskState.PENDING,
            constraints=request.constraints,
            scm_data=request.scm_data,
            codes_affected=None,
            created_at=self._wall(),
            started_at=None,
            completed_at=None,
        )
        task = _Task(
            snapshot,
            born=self._clock(),
            pending=pending,
            running=running,
            fails=fails,
            forever=forever,
            known_codes=known_codes,
            campaign_fields=campaign_fields,
        )
        with self._lock:
            self._tasks[task_id] = task
            self._open.append(task)
        return snapshot

    def advance(self) -> None:
        """Finish every task whose time has come: apply its data (complete) or nothing (failed)."""
        now = self._clock()
        with self._lock:
            due = sorted((t for t in self._open if t.ends <= now), key=lambda t: t.ends)
            if not due:
                return
            self._open = [t for t in self._open if t.ends > now]
            for task in due:
                first = task.first
                affected = 0
                if not task.fails:
                    affected = self._scm.apply_async(
                        first.constraints,
                        first.scm_data,
                        known_codes=task.known_codes,
                        campaign_fields=task.campaign_fields,
                    )
                state = TaskState.FAILED if task.fails else TaskState.COMPLETE
                self.failed += task.fails
                self.completed += not task.fails
                task.final = self._at(task, state, affected)

    def get(self, task_id: str) -> TaskSnapshot | None:
        """The task as it stands now, or None if there is no such task."""
        self.advance()
        with self._lock:
            task = self._tasks.get(task_id)
            return None if task is None else self._now(task)

    def all(self) -> tuple[TaskSnapshot, ...]:
        """Every task as it stands now, in the order they were created."""
        self.advance()
        with self._lock:
            return tuple(self._now(task) for task in self._tasks.values())

    def _now(self, task: _Task) -> TaskSnapshot:
        if task.final is not None:
            return task.final
        if self._clock() >= task.starts:
            return self._at(task, TaskState.IN_PROGRESS, None)
        return task.first

    @staticmethod
    def _at(task: _Task, state: TaskState, affected: int | None) -> TaskSnapshot:
        final = state in (TaskState.COMPLETE, TaskState.FAILED)
        return TaskSnapshot(
            id=task.first.id,
            reference=task.first.reference,
            state=state,
            constraints=task.first.constraints,
            scm_data=task.first.scm_data,
            codes_affected=affected,
            created_at=task.first.created_at,
            started_at=task.started_at,
            completed_at=task.completed_at if final else None,
        )


def task_body(task: TaskSnapshot, *, vocabulary: TaskVocabulary, unknown_state: str | None) -> dict[str, object]:
    """The JSON the API answers for a task (API.md: the key names are the client's, in snake_case)."""
    final = task.state in (TaskState.COMPLETE, TaskState.FAILED)
    if not final and unknown_state is not None:
        state = unknown_state
    elif vocabulary == "docs":
        state = DOCS_WORDS.get(task.state, str(task.state))
    else:
        state = str(task.state)
    return {
        "id": task.id,
        "reference": task.reference,
        "state": state,
        "codes_affected": task.codes_affected,
        "created_at": _iso(task.created_at),
        "started_at": _iso(task.started_at),
        "completed_at": _iso(task.completed_at),
    }


def respell_task_body(body: dict[str, object], *, state_key: str, style: str) -> dict[str, object]:
    """The task JSON with the state under `state_key` and the keys in snake_case or camelCase."""
    out: dict[str, object] = {}
    for key, value in body.items():
        name = state_key if key == "state" else key
        if style == "camel":
            first, *rest = name.split("_")
            name = first + "".join(part.capitalize() for part in rest)
        out[name] = value
    return out


def _iso(moment: datetime | None) -> str | None:
    """DRF's default: ISO 8601 with microseconds and a Z for UTC."""
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")
