"""The emulator's knobs (EmulatorConfig, changeable at run time) and its counters (EmulatorStats snapshots)."""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

PoisonStyle = Literal["items", "detail"]
TaskVocabulary = Literal["portal", "docs"]
POISON_STYLES: tuple[PoisonStyle, ...] = ("items", "detail")
TASK_VOCABULARIES: tuple[TaskVocabulary, ...] = ("portal", "docs")
TaskPath = Literal["slash", "bare", "both"]
TaskStateKey = Literal["state", "status"]
TaskKeyStyle = Literal["snake", "camel"]
_CHOICES: Mapping[str, tuple[str, ...]] = {
    "poison_style": POISON_STYLES,
    "task_states": TASK_VOCABULARIES,
    "task_path": ("slash", "bare", "both"),
    "task_state_key": ("state", "status"),
    "task_key_style": ("snake", "camel"),
}
# The kinds of request the API serves (server.ROUTES and the task path); `outage` names some of them.
REQUEST_KINDS = ("me", "scm_upload", "scm_upload_async", "scm_task")
_RATES = (
    "fail_rate",
    "slow_rate",
    "task_fail_rate",
    "throttle_rate",
    "reset_rate",
    "hang_rate",
    "applied_then_500_rate",
    "task_missing_rate",
)
_DURATIONS = (
    "latency",
    "trickle_seconds",
    "slow_seconds",
    "task_pending_seconds",
    "task_running_seconds",
    "throttle_retry_after",
    "hang_seconds",
)


@dataclass(frozen=True)
class EmulatorConfig:
    """The emulator's knobs; change them at run time with Emulator.configure(**changes).

    Every random fault is drawn from one generator seeded with `seed`, so a run is reproducible; each request
    makes the same number of draws whatever the knobs say, so changing a knob does not shift later draws.

    Which faults strike which request kind (me, scm_upload, scm_upload_async, scm_task):
    - `outage` (503, before authentication), `revoked`/`forbidden` (401/403), `reset_rate`, `fail_rate`,
      `hang_rate`, `slow_rate`, `latency` and `trickle_seconds`: every kind listed, or every kind.
    - `rate_limit` and `throttle_burst()`: the two uploads (the API's scm_update scope).
    - `throttle_rate`: the two uploads and task polls (the API also throttles authenticated requests in
      general), not `me`, the daemon's one-off token check.
    - `applied_then_500_rate`: the two uploads that would have answered 200; `poison_codes`: the two uploads.
    - `task_fail_rate`, `task_never_finishes`, `task_pending_seconds`, `task_running_seconds`: the tasks that
      async uploads create, fixed at creation. `task_missing_rate`, `task_states`, `task_unknown_state`: polls.
    - `retry_after_header`: every 429 and every 503 (injected by `fail_rate` or by `outage`), any kind.
    - `faults_spare_me`: `me` answers normally whatever the knobs above say (an API whose token check works
      while its uploads fail: the daemon's start-up check passes, the faults strike the uploads).
    """

    token: str = field(default="sandbox-token", repr=False)
    campaign_fields: frozenset[str] | None = None  # None: every field accepted; else the others are discarded
    known_codes: frozenset[str] | None = None  # None: any well-formed code exists
    rate_limit: float | None = 10.0  # SCM updates (sync and async) per rolling second; None: no throttle
    latency: float = 0.0  # seconds added to every request
    # > 0: every answer's body goes out a byte at a time, this many seconds apart (a proxy dribbling it; each byte
    # well within a read timeout). Over HTTP only: the in-process transport has no bytes to dribble.
    trickle_seconds: float = 0.0
    faults_spare_me: bool = False  # GET /api/v2/me/ is struck by no fault (revoked, outage, fail, hang, latency...)
    echo_token: bool = False  # every error answer carries the token the client presented (body texts and a header)
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
    # API.md guesses the task path's trailing slash and the task JSON's key names; these serve the other guesses.
    task_path: TaskPath = "both"  # the form of /api/v2/scm/tasks/<id>[/] served; the other answers 404 ...
    task_redirect: bool = False  # ... or, when set, a 301 to the served form (as Django's APPEND_SLASH does)
    task_redirect_origin: str = ""  # "": the redirect stays on this server; else its Location starts with this
    task_state_key: TaskStateKey = "state"  # the key of the task's state: state or status
    task_key_style: TaskKeyStyle = "snake"  # codes_affected, created_at, ... or codesAffected, createdAt, ...
    # -- faults for the daemon's error handling
    poison_codes: frozenset[str] = frozenset()  # key values that make a whole upload a 400
    poison_style: PoisonStyle = "items"  # items: per-item errors aligned with the request; detail: no hint
    partial_apply: bool = False  # a poisoned sync batch applies the items before the first poisoned one
    throttle_rate: float = 0.0  # probability of an injected 429 on an upload or a task poll ...
    throttle_retry_after: float = 1.0  # ... announcing this many seconds (rounded up)
    reset_rate: float = 0.0  # probability that the connection is reset without an answer (nothing applied)
    hang_rate: float = 0.0  # probability that the answer is held hang_seconds, then a 504 (nothing applied)
    hang_seconds: float = 60.0  # the API's gateway gives up after about 60 s (API.md)
    applied_then_500_rate: float = 0.0  # probability that an upload is applied, then answered 500
    # -- faults for the daemon's self-healing
    outage: frozenset[str] = frozenset()  # request kinds (REQUEST_KINDS) answered 503 before anything else
    retry_after_header: float | None = None  # set: every 429 and 503 carries `Retry-After: <this>` verbatim
    task_missing_rate: float = 0.0  # probability that a poll of an existing task answers 404 (a lost task)
    task_never_finishes: bool = False  # tasks created while set stay `pending` for ever

    def __post_init__(self) -> None:
        for name in _RATES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"emulator knob {name} must be a probability in [0, 1], got {value}")
        for name in _DURATIONS:
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"emulator knob {name} must be a finite number of seconds >= 0, got {value}")
        if not (isinstance(self.outage, frozenset) and self.outage <= frozenset(REQUEST_KINDS)):
            raise ValueError(f"emulator knob outage must be a set of {REQUEST_KINDS}, got {self.outage!r}")
        wait = self.retry_after_header
        if wait is not None and not (wait >= 0 and math.isfinite(wait)):
            raise ValueError(f"emulator knob retry_after_header must be None or finite seconds >= 0, got {wait}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"emulator knob {name} must be one of {choices}, got {getattr(self, name)!r}")


# Knobs that hold a set: configure() accepts any iterable of strings for them.
SET_KNOBS = ("campaign_fields", "known_codes", "poison_codes", "outage")


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
    outages: int  # 503s sent because the request's kind was in `outage`
    tasks_missing: int  # polls of an existing task answered 404 by task_missing_rate

    @property
    def total_requests(self) -> int:
        """Every request received, of any kind."""
        return sum(self.requests.values())

    @property
    def data_requests(self) -> int:
        """Requests that send or ask about codes: all but GET /api/v2/me/ (the token and connectivity check)."""
        return self.total_requests - self.requests.get(("GET", "me"), 0)
