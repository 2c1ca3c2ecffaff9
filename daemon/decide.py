"""Decisions: what every answer or failure of every request kind means, as one pure function and its table.

`decide()` looks at the request that was answered (an `Attempt`) and its result or exception, and returns a
typed `Decision`; it performs no I/O. The uploader applies the decision to the ledger in one place. A reader who
wants to know "what happens on a 404 to a task poll" reads `decide()` from top to bottom.

Every decision also says what the answer means for the circuit breaker (`health`): a request that got any
HTTP answer other than a transient one proves the API is reachable (success); a transient failure or an answer
the client cannot read is a failure. Nothing else changes the breaker, so each answered request records exactly
one of the two.
"""

from dataclasses import dataclass, field
from enum import StrEnum

from daemon.answers import SyncResult, TaskState, TaskStatus
from daemon.errors import (
    ApiError,
    ErrorKind,
    HTTPStatusError,
    NotFound,
    Rejected,
    Throttled,
    Timeout,
    Transient,
    classify,
)
from daemon.retry import RetryPolicy
from daemon.states import RowStatus

BASE_URL_EXAMPLE = "e.g. https://api.scantrust.com"
MISSING_TASK_POLLS = 3  # a task that answers 404 this many times in a row is given up
SPLIT_AFTER_TIMEOUTS = 2  # a batch that timed out this many times in a row is cut in halves


class RequestKind(StrEnum):
    """The kinds of request the daemon makes."""

    SYNC_UPLOAD = "sync_upload"  # POST /api/v2/scm/upload/ with up to 100 items
    ASYNC_SUBMIT = "async_submit"  # POST /api/v2/scm/upload/async/: creates a task
    TASK_POLL = "task_poll"  # GET /api/v2/scm/tasks/<id>/
    TOKEN_CHECK = "token_check"  # noqa: S105 - a kind name; GET /api/v2/me/ while the token is refused
    START_CHECK = "start_check"  # GET /api/v2/me/ at start-up, before any file is taken

    @property
    def upload(self) -> bool:
        """Whether it sends data (the API's scm_update throttle scope)."""
        return self in (RequestKind.SYNC_UPLOAD, RequestKind.ASYNC_SUBMIT)


class Health(StrEnum):
    """What an answer says about the API's reachability, for the circuit breaker."""

    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True)
class Attempt:
    """What decide() needs to know about the request that was answered."""

    kind: RequestKind
    lines: tuple[int, ...] = ()  # the batch's rows, in row order (uploads)
    failures: int = 0  # failed attempts (or polls) of this batch before this one
    task_id: str | None = None  # polls
    task_age: float = 0.0  # seconds since the task was created, as this process measured them (polls)


@dataclass(frozen=True)
class Policy:
    """The settings decide() follows."""

    retry: RetryPolicy
    poll_interval: float
    poll_max_interval: float
    poll_timeout: float
    max_server_wait: float = 3600.0  # a Retry-After is honoured up to this many seconds


@dataclass(frozen=True)
class Decision:
    """Base of every decision: the breaker's record, and a 429's announced wait (None: no 429)."""

    health: Health
    throttled: float | None = field(default=None, kw_only=True)


# --- uploads -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncDone(Decision):
    """A sync answer: the listed codes are uploaded, the others not affected (unless the batch is ambiguous)."""

    changed: frozenset[str]


@dataclass(frozen=True)
class TaskCreated(Decision):
    """An async job exists: store its task id; from now on it is polled, never sent again."""

    task_id: str


@dataclass(frozen=True)
class Requeue(Decision):
    """Send the batch again after `delay` seconds."""

    delay: float
    error: str
    ambiguous: bool  # the failed attempt may have been applied
    count_failure: bool  # counts against retry.max_attempts


@dataclass(frozen=True)
class Split(Decision):
    """Replace the batch by smaller ones; `rejected` rows (line: why) are rejected on the way."""

    parts: tuple[tuple[int, ...], ...]
    rejected: dict[int, str]
    ambiguous: bool
    reason: str


@dataclass(frozen=True)
class FailRows(Decision):
    """Give the batch up: its open rows become `status` with the detail."""

    status: RowStatus
    detail: str
    task_state: str | None = None
    retries_spent: bool = False  # the API kept failing: `run --once` says so in its exit code


@dataclass(frozen=True)
class PauseForToken(Decision):
    """The API refused the token: every upload pauses, the batch goes back untouched (polls: asked again later)."""

    reason: str


@dataclass(frozen=True)
class PauseForConfiguration(Decision):
    """The upload endpoint itself is missing (404/405): a wrong api.base_url, not a row defect; pause, keep rows."""

    reason: str


# --- polls ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskComplete(Decision):
    """The task completed: every row of the job is uploaded."""

    task_state: str
    codes_affected: int | None


@dataclass(frozen=True)
class PollAgain(Decision):
    """Ask about the task again after `delay` seconds; `error` counts against the batch, None resets the count."""

    delay: float
    task_state: str | None
    error: str | None
    unknown_state: bool = False


# --- token checks --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenAccepted(Decision):
    """GET /me/ answered 200: uploads resume."""


@dataclass(frozen=True)
class TokenStillRefused(Decision):
    """GET /me/ failed: the pause goes on (the API's words, or why it could not be asked)."""

    reason: str


@dataclass(frozen=True)
class StartCheckFailed(Decision):
    """GET /me/ at start-up failed. `cause`: token (refused: the service ends, exit 3), configuration (no such
    endpoint: api.base_url names another server) or unreachable (asked again after a backoff)."""

    cause: str
    reason: str


def halves(lines: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """A batch's rows in two halves, in row order."""
    middle = len(lines) // 2
    return lines[:middle], lines[middle:]


def next_poll_delay(age: float, policy: Policy) -> float:
    """Wait about half the task's age before asking again: quick at first, backing off to the max interval."""
    return min(policy.poll_max_interval, max(policy.poll_interval, age / 2))


def timed_out(exc: ApiError) -> bool:
    """No answer within the read timeout, or the API's own 504."""
    return isinstance(exc, Timeout) or (isinstance(exc, Transient) and exc.status == 504)


def health_of(exc: ApiError) -> Health:
    """A failure's meaning for the breaker: an HTTP answer that is not transient proves the API is up."""
    return Health.SUCCESS if classify(exc) in (ErrorKind.TOKEN_REFUSED, ErrorKind.DEFECTIVE) else Health.FAILURE


def decide(attempt: Attempt, outcome: object, policy: Policy, rand: float) -> Decision:
    """The decision for one answered request: `outcome` is its result, or the ApiError it raised."""
    if isinstance(outcome, ApiError):
        if attempt.kind is RequestKind.TOKEN_CHECK:
            return TokenStillRefused(health_of(outcome), reason=str(outcome))
        if attempt.kind is RequestKind.START_CHECK:
            return _start_check_failed(outcome)
        if attempt.kind is RequestKind.TASK_POLL:
            return _poll_failed(attempt, outcome, policy, rand)
        return _upload_failed(attempt, outcome, policy, rand)
    if attempt.kind in (RequestKind.TOKEN_CHECK, RequestKind.START_CHECK):
        return TokenAccepted(Health.SUCCESS)
    if attempt.kind is RequestKind.SYNC_UPLOAD:
        assert isinstance(outcome, SyncResult)
        return SyncDone(Health.SUCCESS, changed=frozenset(outcome.changed))
    if attempt.kind is RequestKind.ASYNC_SUBMIT:
        return TaskCreated(Health.SUCCESS, task_id=str(outcome))
    assert isinstance(outcome, TaskStatus)
    return _polled(attempt, outcome, policy)


def _start_check_failed(exc: ApiError) -> StartCheckFailed:
    health = health_of(exc)
    if classify(exc) is ErrorKind.TOKEN_REFUSED:
        return StartCheckFailed(health, cause="token", reason=str(exc))
    if isinstance(exc, NotFound) or (isinstance(exc, Rejected) and exc.status == 405):
        reason = f"{exc}: this is not the Scantrust API; check api.base_url (scheme and host only, {BASE_URL_EXAMPLE})"
        return StartCheckFailed(health, cause="configuration", reason=reason)
    return StartCheckFailed(health, cause="unreachable", reason=str(exc))


def _server_wait(exc: ApiError, policy: Policy) -> float | None:
    wait = exc.retry_after if isinstance(exc, HTTPStatusError) else None
    return None if wait is None else min(wait, policy.max_server_wait)


def _upload_failed(attempt: Attempt, exc: ApiError, policy: Policy, rand: float) -> Decision:
    kind = classify(exc)
    health = health_of(exc)
    error = str(exc)
    if kind is ErrorKind.TOKEN_REFUSED:
        return PauseForToken(health, reason=error)
    if isinstance(exc, NotFound) or (isinstance(exc, Rejected) and exc.status == 405):
        return PauseForConfiguration(
            health,
            reason=(
                f"{error}: the upload endpoint does not exist at this address; check api.base_url "
                f"(scheme and host only, {BASE_URL_EXAMPLE})"
            ),
        )
    if kind is ErrorKind.DEFECTIVE:
        return _refused(attempt, exc, health)
    throttled = _server_wait(exc, policy) if isinstance(exc, Throttled) else None
    if isinstance(exc, Throttled) and throttled is None:
        throttled = 1.0
    timeouts_again = timed_out(exc) and attempt.failures + 1 >= SPLIT_AFTER_TIMEOUTS
    if kind is ErrorKind.TRANSIENT and timeouts_again and len(attempt.lines) > 1:
        return Split(
            health,
            parts=halves(attempt.lines),
            rejected={},
            ambiguous=exc.ambiguous,
            reason="timed out again",
            throttled=throttled,
        )
    retry = policy.retry.decide(attempt.failures + 1, exc, rand)
    if retry.retry:
        delay = retry.delay
        server = _server_wait(exc, policy)
        if server is not None:
            # The policy takes the server's wait as a floor; it is honoured only up to the cap.
            delay = min(delay, max(server, policy.retry.backoff(attempt.failures + 1)))
        return Requeue(
            health, delay=delay, error=error, ambiguous=exc.ambiguous, count_failure=True, throttled=throttled
        )
    return FailRows(
        health,
        status=RowStatus.FAILED,
        detail=f"gave up after {attempt.failures + 1} failed attempts: {error}",
        throttled=throttled,
        retries_spent=kind is ErrorKind.TRANSIENT,
    )


def _refused(attempt: Attempt, exc: ApiError, health: Health) -> Decision:
    """A 400: reject the items the API named, or cut the batch in halves until the defective ones stand alone."""
    named = exc.item_errors if isinstance(exc, Rejected) else None
    lines = attempt.lines
    # The API may have applied the items before the defective one (API.md): the resent ones are ambiguous.
    if named:
        rejected = {lines[i]: f"refused by Scantrust: {message}" for i, message in named.items() if 0 <= i < len(lines)}
        rest = tuple(line for line in lines if line not in rejected)
        return Split(health, parts=(rest,), rejected=rejected, ambiguous=True, reason="items rejected")
    if len(lines) > 1:
        return Split(
            health, parts=halves(lines), rejected={}, ambiguous=True, reason="refused without naming the items"
        )
    return FailRows(health, status=RowStatus.REJECTED, detail=f"refused by Scantrust: {exc}")


def _polled(attempt: Attempt, status: TaskStatus, policy: Policy) -> Decision:
    if status.state is TaskState.COMPLETE:
        return TaskComplete(Health.SUCCESS, task_state=status.raw_state, codes_affected=status.codes_affected)
    if status.state is TaskState.FAILED:
        detail = f"Scantrust task {attempt.task_id} ended in state {status.raw_state!r}"
        return FailRows(Health.SUCCESS, status=RowStatus.FAILED, detail=detail, task_state=status.raw_state)
    if attempt.task_age > policy.poll_timeout:
        detail = (
            f"Scantrust task {attempt.task_id} still {status.raw_state!r} after {attempt.task_age:.0f} s "
            "(poll.timeout_seconds)"
        )
        return FailRows(Health.SUCCESS, status=RowStatus.FAILED, detail=detail, task_state=status.raw_state)
    return PollAgain(
        Health.SUCCESS,
        delay=next_poll_delay(attempt.task_age, policy),
        task_state=status.raw_state,
        error=None,
        unknown_state=status.state is TaskState.UNKNOWN,
    )


def _poll_failed(attempt: Attempt, exc: ApiError, policy: Policy, rand: float) -> Decision:
    health = health_of(exc)
    kind = classify(exc)
    if kind is ErrorKind.TOKEN_REFUSED:
        return PauseForToken(health, reason=str(exc))
    if isinstance(exc, NotFound) and attempt.failures + 1 >= MISSING_TASK_POLLS:
        detail = f"Scantrust task {attempt.task_id} not found (404) in {MISSING_TASK_POLLS} polls"
        return FailRows(health, status=RowStatus.FAILED, detail=detail)
    # The task exists on the server whatever our connection does: ask again until poll.timeout_seconds has
    # passed and the retry budget is spent, so that a long outage does not fail a task that will complete.
    if attempt.task_age > policy.poll_timeout and attempt.failures + 1 >= policy.retry.max_attempts:
        detail = (
            f"Scantrust task {attempt.task_id}: no usable answer after {attempt.task_age:.0f} s "
            f"(poll.timeout_seconds) and {attempt.failures + 1} failed polls: {exc}"
        )
        return FailRows(health, status=RowStatus.FAILED, detail=detail, retries_spent=True)
    delay = next_poll_delay(attempt.task_age, policy)
    server = _server_wait(exc, policy)
    if server is not None:
        delay = max(delay, server)
    delay = max(delay, policy.retry.backoff(attempt.failures + 1) * (0.5 + rand / 2))
    return PollAgain(health, delay=min(delay, policy.max_server_wait), task_state=None, error=str(exc))
