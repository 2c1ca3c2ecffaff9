"""The retry policy: which errors are retried, after how long, and when it gives up."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.api import (
    ApiError,
    ProtocolError,
    Rejected,
    Throttled,
    TokenRefused,
    Transient,
    TransportError,
)
from daemon.retry import Jitter, RetryPolicy

POLICY = RetryPolicy(max_attempts=8, base_delay=2, max_delay=300)

transient_errors = st.one_of(
    st.builds(TransportError, st.just("connection reset"), ambiguous=st.booleans()),
    st.builds(Transient, st.just("503"), status=st.sampled_from([408, 500, 502, 503, 504]), detail=st.just("")),
    st.builds(
        Throttled,
        st.just("429"),
        status=st.just(429),
        detail=st.just(""),
        retry_after=st.none() | st.floats(min_value=0, max_value=4000, allow_nan=False),
    ),
)
final_errors = st.one_of(
    st.builds(TokenRefused, st.just("401"), status=st.sampled_from([401, 403]), detail=st.just("")),
    st.builds(Rejected, st.just("400"), status=st.sampled_from([400, 404, 406]), detail=st.just("")),
    st.builds(ProtocolError, st.just("garbled")),
    st.builds(ApiError, st.just("unknown")),
)
policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(min_value=1, max_value=20),
    base_delay=st.floats(min_value=0, max_value=10, allow_nan=False),
    max_delay=st.floats(min_value=10, max_value=1000, allow_nan=False),
    jitter=st.sampled_from(Jitter),
)
draws = st.floats(min_value=0, max_value=1, exclude_max=True)
attempts = st.integers(min_value=1, max_value=10_000)


@given(policy=policies, attempt=attempts, error=transient_errors, rand=draws)
def test_the_delay_stays_within_its_bounds(policy: RetryPolicy, attempt: int, error: ApiError, rand: float) -> None:
    decision = policy.decide(attempt, error, rand)
    if not decision.retry:
        assert attempt >= policy.max_attempts
        return
    retry_after = getattr(error, "retry_after", None) or 0.0
    assert 0 <= decision.delay <= max(policy.max_delay, retry_after)
    assert decision.delay >= retry_after  # the server's wait is a floor
    if policy.jitter is Jitter.EQUAL:
        assert decision.delay >= policy.backoff(attempt) / 2


@given(policy=policies, attempt=attempts, error=final_errors, rand=draws)
def test_only_transient_errors_are_retried(policy: RetryPolicy, attempt: int, error: ApiError, rand: float) -> None:
    decision = policy.decide(attempt, error, rand)
    assert not decision.retry
    assert "not retried" in decision.reason


@given(policy=policies, error=transient_errors, rand=draws, extra=st.integers(min_value=0, max_value=100))
def test_never_beyond_max_attempts(policy: RetryPolicy, error: ApiError, rand: float, extra: int) -> None:
    assert not policy.decide(policy.max_attempts + extra, error, rand).retry
    if policy.max_attempts > 1:
        assert policy.decide(policy.max_attempts - 1, error, rand).retry


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [POLICY.backoff(n) for n in range(1, 10)] == [2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert POLICY.backoff(10**6) == 300


@pytest.mark.parametrize(
    ("jitter", "rand", "delay"),
    [(Jitter.EQUAL, 0.0, 4.0), (Jitter.EQUAL, 0.5, 6.0), (Jitter.FULL, 0.0, 0.0), (Jitter.FULL, 0.5, 4.0)],
)
def test_jitter_spreads_the_backoff(jitter: Jitter, rand: float, delay: float) -> None:
    policy = RetryPolicy(max_attempts=8, base_delay=2, max_delay=300, jitter=jitter)
    decision = policy.decide(3, TransportError("reset"), rand)
    assert decision.retry
    assert decision.delay == pytest.approx(delay)


def test_the_server_wait_wins_over_a_shorter_backoff() -> None:
    error = Throttled("429", status=429, detail="", retry_after=30.0)
    decision = POLICY.decide(1, error, 0.0)
    assert (decision.retry, decision.delay) == (True, 30.0)
    assert "server asked" in decision.reason


def test_giving_up_says_so() -> None:
    decision = POLICY.decide(8, TransportError("reset"), 0.5)
    assert (decision.retry, decision.delay) == (False, 0.0)
    assert "8 attempts" in decision.reason


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0, "base_delay": 1, "max_delay": 2}, "max_attempts"),
        ({"max_attempts": 3, "base_delay": -1, "max_delay": 2}, "base_delay"),
        ({"max_attempts": 3, "base_delay": 5, "max_delay": 2}, "base_delay"),
    ],
)
def test_a_nonsensical_policy_is_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("attempt", "rand"), [(0, 0.5), (1, 1.0), (1, -0.1)])
def test_arguments_out_of_range_are_refused(attempt: int, rand: float) -> None:
    with pytest.raises(ValueError, match=r"attempt|rand"):
        POLICY.decide(attempt, TransportError("reset"), rand)
