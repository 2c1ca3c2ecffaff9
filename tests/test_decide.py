"""The decision table: every request kind against every class of answer, and the properties that must always hold."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.answers import SyncResult, TaskState, TaskStatus
from daemon.breaker import CircuitBreaker
from daemon.decide import (
    MISSING_TASK_POLLS,
    Attempt,
    FailRows,
    Health,
    PauseForConfiguration,
    PauseForToken,
    Policy,
    PollAgain,
    RequestKind,
    Requeue,
    Split,
    SyncDone,
    TaskComplete,
    TaskCreated,
    TokenAccepted,
    TokenStillRefused,
    decide,
)
from daemon.errors import (
    ApiError,
    NotFound,
    ProtocolError,
    Rejected,
    Throttled,
    Timeout,
    TokenRefused,
    Transient,
    TransportError,
)
from daemon.retry import RetryPolicy
from daemon.states import RowStatus

POLICY = Policy(
    retry=RetryPolicy(max_attempts=3, base_delay=2.0, max_delay=300.0),
    poll_interval=5.0,
    poll_max_interval=60.0,
    poll_timeout=86400.0,
    max_server_wait=3600.0,
)
LINES = (2, 3, 4, 5)
UPLOADS = (RequestKind.SYNC_UPLOAD, RequestKind.ASYNC_SUBMIT)


def status(code: int, retry_after: float | None = None) -> ApiError:
    cls = {401: TokenRefused, 403: TokenRefused, 404: NotFound, 429: Throttled}.get(code)
    if cls is None:
        cls = Transient if code >= 500 else Rejected
    return cls(f"answered {code}", status=code, detail="", retry_after=retry_after, ambiguous=code == 500)


def task(state: TaskState, raw: str) -> TaskStatus:
    return TaskStatus("T1", state, raw, 4, None, None, None, None)


def upload(kind: RequestKind = RequestKind.SYNC_UPLOAD, failures: int = 0, lines: tuple[int, ...] = LINES) -> Attempt:
    return Attempt(kind, lines=lines, failures=failures)


def poll(failures: int = 0, age: float = 10.0) -> Attempt:
    return Attempt(RequestKind.TASK_POLL, failures=failures, task_id="T1", task_age=age)


# --- the table ---------------------------------------------------------------------------------------------

TABLE = [
    # (attempt, outcome, decision type, health)
    (upload(), SyncResult({"A": ("f",)}, 1, 1), SyncDone, Health.SUCCESS),
    (upload(RequestKind.ASYNC_SUBMIT), "T9", TaskCreated, Health.SUCCESS),
    (poll(), task(TaskState.COMPLETE, "complete"), TaskComplete, Health.SUCCESS),
    (poll(), task(TaskState.FAILED, "failed"), FailRows, Health.SUCCESS),
    (poll(), task(TaskState.PENDING, "pending"), PollAgain, Health.SUCCESS),
    (poll(), task(TaskState.UNKNOWN, "queued-somewhere"), PollAgain, Health.SUCCESS),
    (poll(age=90000.0), task(TaskState.PENDING, "pending"), FailRows, Health.SUCCESS),
    (Attempt(RequestKind.TOKEN_CHECK), {"id": 1}, TokenAccepted, Health.SUCCESS),
    (Attempt(RequestKind.TOKEN_CHECK), status(401), TokenStillRefused, Health.SUCCESS),
    (Attempt(RequestKind.TOKEN_CHECK), TransportError("refused"), TokenStillRefused, Health.FAILURE),
]
for kind in UPLOADS:
    TABLE += [
        (upload(kind), status(401), PauseForToken, Health.SUCCESS),
        (upload(kind), status(403), PauseForToken, Health.SUCCESS),
        (upload(kind), status(404), PauseForConfiguration, Health.SUCCESS),
        (upload(kind), status(405), PauseForConfiguration, Health.SUCCESS),
        (upload(kind), status(400), Split, Health.SUCCESS),
        (upload(kind, lines=(7,)), status(400), FailRows, Health.SUCCESS),
        (upload(kind), status(500), Requeue, Health.FAILURE),
        (upload(kind), status(503), Requeue, Health.FAILURE),
        (upload(kind), status(429), Requeue, Health.FAILURE),
        (upload(kind), TransportError("reset"), Requeue, Health.FAILURE),
        (upload(kind), Timeout("no answer"), Requeue, Health.FAILURE),
        (upload(kind, failures=1), Timeout("no answer"), Split, Health.FAILURE),
        (upload(kind, failures=2), status(502), FailRows, Health.FAILURE),
        (upload(kind), ProtocolError("garbage"), FailRows, Health.FAILURE),
    ]
TABLE += [
    (poll(), status(401), PauseForToken, Health.SUCCESS),
    (poll(), status(404), PollAgain, Health.SUCCESS),
    (poll(failures=MISSING_TASK_POLLS - 1), status(404), FailRows, Health.SUCCESS),
    (poll(), status(400), PollAgain, Health.SUCCESS),
    (poll(), status(503), PollAgain, Health.FAILURE),
    (poll(), TransportError("reset"), PollAgain, Health.FAILURE),
    (poll(failures=5, age=90000.0), status(503), FailRows, Health.FAILURE),
]


@pytest.mark.parametrize(("attempt", "outcome", "expected", "health"), TABLE)
def test_every_request_kind_and_answer_class_has_one_decision(
    attempt: Attempt, outcome: object, expected: type, health: Health
) -> None:
    decision = decide(attempt, outcome, POLICY, 0.5)
    assert type(decision) is expected
    assert decision.health is health


def test_a_huge_retry_after_is_honoured_only_up_to_the_cap() -> None:
    for code in (429, 503):
        decision = decide(upload(), status(code, retry_after=100_000_000), POLICY, 0.5)
        assert isinstance(decision, Requeue)
        assert decision.delay == POLICY.max_server_wait
    polled = decide(poll(), status(503, retry_after=100_000_000), POLICY, 0.5)
    assert isinstance(polled, PollAgain)
    assert polled.delay <= POLICY.max_server_wait


def test_a_429_pauses_the_pace_for_the_announced_wait() -> None:
    decision = decide(upload(), status(429, retry_after=3.0), POLICY, 0.5)
    assert decision.throttled == 3.0
    assert decide(upload(), status(429), POLICY, 0.5).throttled == 1.0
    assert decide(upload(), status(503, retry_after=3.0), POLICY, 0.5).throttled is None


def test_a_refused_batch_with_named_items_rejects_only_those() -> None:
    exc = status(400)
    assert isinstance(exc, Rejected)
    exc.item_errors = {1: "extended_id: Invalid code."}
    decision = decide(upload(), exc, POLICY, 0.5)
    assert isinstance(decision, Split)
    assert decision.rejected == {3: "refused by Scantrust: extended_id: Invalid code."}
    assert decision.parts == ((2, 4, 5),)
    assert decision.ambiguous  # items before the defective one may have been applied (API.md)


def test_retries_spent_only_when_the_api_kept_failing() -> None:
    spent = decide(upload(failures=2), status(502), POLICY, 0.5)
    assert isinstance(spent, FailRows)
    assert spent.retries_spent
    assert spent.status is RowStatus.FAILED
    refused = decide(upload(lines=(7,)), status(400), POLICY, 0.5)
    assert isinstance(refused, FailRows)
    assert not refused.retries_spent
    assert refused.status is RowStatus.REJECTED


ANSWERS = st.one_of(
    st.sampled_from([400, 401, 403, 404, 405, 406, 408, 429, 500, 501, 502, 503, 504]).map(status),
    st.just(TransportError("reset", ambiguous=True)),
    st.just(Timeout("no answer", ambiguous=True)),
    st.just(ProtocolError("garbage")),
)


@given(
    kind=st.sampled_from(list(RequestKind)),
    outcome=ANSWERS,
    failures=st.integers(0, 20),
    age=st.floats(0, 200000),
    rand=st.floats(0, 0.999),
)
def test_any_failure_gets_a_bounded_decision_and_one_health(
    kind: RequestKind, outcome: ApiError, failures: int, age: float, rand: float
) -> None:
    attempt = Attempt(kind, lines=LINES, failures=failures, task_id="T1", task_age=age)
    decision = decide(attempt, outcome, POLICY, rand)
    assert decision.health in (Health.SUCCESS, Health.FAILURE)
    for wait in (getattr(decision, "delay", 0.0), decision.throttled or 0.0):
        assert 0 <= wait <= POLICY.max_server_wait
    if isinstance(decision, FailRows) and decision.retries_spent and kind.upload:
        assert failures + 1 >= POLICY.retry.max_attempts  # no row fails before its budget is spent
    if kind is RequestKind.TASK_POLL:
        # A task is never given up on a transient failure before poll.timeout_seconds.
        assert not (isinstance(decision, FailRows) and age <= POLICY.poll_timeout and not isinstance(outcome, NotFound))


# --- the breaker's half-open trial, driven by decisions -----------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "outcome"),
    [
        (poll(), task(TaskState.PENDING, "pending")),  # a poll as the trial
        (upload(), status(400)),  # a 400 as the trial
        (upload(), status(401)),  # a 401 as the trial
    ],
)
def test_any_answered_trial_closes_the_breaker(attempt: Attempt, outcome: object) -> None:
    breaker = CircuitBreaker(threshold=1, cooldown=5.0)
    assert breaker.failure(0.0)
    assert breaker.allows(5.0) == 1
    trial = breaker.started(5.0)
    decision = decide(attempt, outcome, POLICY, 0.5)
    assert decision.health is Health.SUCCESS
    assert trial
    assert breaker.success()
    assert breaker.allows(6.0) is None


def test_a_failed_trial_reopens_the_breaker_for_longer() -> None:
    breaker = CircuitBreaker(threshold=1, cooldown=5.0)
    breaker.failure(0.0)
    trial = breaker.started(5.0)
    decision = decide(poll(), status(503), POLICY, 0.5)
    assert decision.health is Health.FAILURE
    assert breaker.failure(6.0, trial=trial)
    assert breaker.open_until == 16.0
    assert breaker.allows(16.0) == 1  # a new trial after the longer cool-down: never stuck
