"""The emulator's knobs (EmulatorConfig, changeable at run time) and its counters (EmulatorStats snapshots)."""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

PoisonStyle = Literal["items", "detail"]
TaskVocabulary = Literal["portal", "docs"]
POISON_STYLES: tuple[PoisonStyle, ...] = ("items", "detail")
TASK_VOCABULARIES: tuple[TaskVocabulary, ...] = ("portal", "docs")
_RATES = (
    "fail_rate",
    "slow_rate",
    "task_fail_rate",
    "throttle_rate",
    "reset_rate",
    "hang_rate",
    "applied_then_500_rate",
)
_DURATIONS = (
    "latency",
    "slow_seconds",
    "task_pending_seconds",
    "task_running_seconds",
    "throttle_retry_after",
    "hang_seconds",
)


@dataclass(frozen=True)
class EmulatorConfig:
    """The emulator's knobs; change them at run time with Emulator.configure(**changes).

    Every random fault is drawn from one generator seeded with `seed`, so a run is reproducible.
    """

    token: str = field(default="sandbox-token", repr=False)
    campaign_fields: frozenset[str] | None = None  # None: every field accepted; else the others are discarded
    known_codes: frozenset[str] | None = None  # None: any well-formed code exists
    rate_limit: float | None = 10.0  # SCM updates (sync and async) per rolling second; None: no throttle
    latency: float = 0.0  # seconds added to every request
    fail_rate: float = 0.0  # probability of an injected 500/502/503 (nothing applied)
    slow_rate: float = 0.0  # probability of a slow answer ...
    slow_seconds: float = 0.0  # ... that sleeps this long (after applying) before answering normally
    seed: int | None = None
    revoked: bool = False  # 401 even for the right token (an expired token)
    forbidden: bool = False  # 403 for the right token (a token without the SCM permissions)
    # -- async tasks
    task_pending_seconds: float = 0.2  # a new task is `pending` this long ...
    task_running_seconds: float = 0.5  # ... then `in-progress` this long, then final (the data applied then)
    task_fail_rate: float = 0.0  # probability that a new task ends `failed` (it applies nothing)
    task_states: TaskVocabulary = "portal"  # portal: in-progress/failed; docs: running/error
    task_unknown_state: str | None = None  # reported instead of pending/in-progress; final states stay true
    # -- faults for the daemon's error handling
    poison_codes: frozenset[str] = frozenset()  # key values that make a whole upload a 400
    poison_style: PoisonStyle = "items"  # items: per-item errors aligned with the request; detail: no hint
    partial_apply: bool = False  # a poisoned sync batch applies the items before the first poisoned one
    throttle_rate: float = 0.0  # probability of an injected 429 on an SCM update (nothing applied) ...
    throttle_retry_after: float = 1.0  # ... announcing this many seconds (rounded up)
    reset_rate: float = 0.0  # probability that the connection is reset without an answer (nothing applied)
    hang_rate: float = 0.0  # probability that the answer is held hang_seconds, then a 504 (nothing applied)
    hang_seconds: float = 60.0  # the API's gateway gives up after about 60 s (API.md)
    applied_then_500_rate: float = 0.0  # probability that an upload is applied, then answered 500

    def __post_init__(self) -> None:
        for name in _RATES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"emulator knob {name} must be a probability in [0, 1], got {value}")
        for name in _DURATIONS:
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"emulator knob {name} must be a finite number of seconds >= 0, got {value}")
        if self.poison_style not in POISON_STYLES:
            raise ValueError(f"emulator knob poison_style must be one of {POISON_STYLES}, got {self.poison_style!r}")
        if self.task_states not in TASK_VOCABULARIES:
            raise ValueError(f"emulator knob task_states must be one of {TASK_VOCABULARIES}, got {self.task_states!r}")


# Knobs that hold a set: configure() accepts any iterable of strings for them.
SET_KNOBS = ("campaign_fields", "known_codes", "poison_codes")


@dataclass(frozen=True)
class EmulatorStats:
    """A snapshot of what the emulator has seen since it was created."""

    requests: Mapping[tuple[str, str], int]  # (method, path kind) -> count; see server.ROUTES for the kinds
    sync_calls: int  # sync uploads applied and answered 200
    rejected: int  # sync uploads refused with 400 (poisoned ones included)
    throttled: int  # 429s sent (by the rate limit, a burst, or throttle_rate)
    injected_failures: int  # 500/502/503 sent by fail_rate
    slow_answers: int
    auth_failures: int  # 401s and 403s sent
    max_concurrency: int  # most requests in progress at once
    async_jobs: int  # tasks created (every accepted async upload, applied_then_500 ones included)
    async_rejected: int  # async uploads refused with 400 (poisoned ones included)
    task_polls: int  # authenticated task status requests, found or not
    tasks_completed: int  # tasks that reached `complete` (their data applied)
    tasks_failed: int  # tasks that reached `failed` (nothing applied)
    resets: int  # connections reset without an answer
    hangs: int  # answers held for hang_seconds, then 504
    applied_then_500: int  # uploads applied, then answered 500
    poisoned: int  # uploads refused because they held a poison code
    partial_applications: int  # poisoned sync batches whose items before the defective one were applied

    @property
    def total_requests(self) -> int:
        """Every request received, of any kind."""
        return sum(self.requests.values())
