"""The back-pressure policies, stepped with explicit times."""

from hypothesis import given
from hypothesis import strategies as st

from daemon.breaker import CircuitBreaker, ThrottleGovernor


def test_repeated_429s_lower_the_rate_and_a_quiet_minute_restores_it() -> None:
    gov = ThrottleGovernor(configured=9.7)
    assert gov.throttled(0.0) == 9.7  # one 429 alone: the pause does the work
    assert gov.throttled(5.0) == 9.7 * 0.8
    assert gov.throttled(6.0) == 9.7 * 0.8 * 0.8
    assert gov.throttled(7.0) == 9.7 * 0.8 * 0.8 * 0.8
    assert gov.throttled(8.0) == 9.7 * 0.5  # the floor: half the configured pace
    assert gov.tick(30.0) is None
    assert gov.tick(38.1) == 9.7
    assert gov.throttled(40.0) == 9.7


def test_429s_for_requests_that_left_before_the_last_one_came_back_are_one_event() -> None:
    gov = ThrottleGovernor(configured=9.7)
    assert gov.throttled(10.0, sent_at=9.7) == 9.7  # the first 429: a pause, no slowdown
    assert gov.throttled(10.05, sent_at=9.8) == 9.7  # in flight when it came back: the same crowded second
    assert gov.throttled(12.0, sent_at=11.5) == 9.7 * 0.8  # sent after the pause: 429s keep coming


@given(st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=50))
def test_the_rate_never_goes_below_the_floor_or_above_the_configured_rate(gaps: list[float]) -> None:
    gov = ThrottleGovernor(configured=10.0)
    now = 0.0
    for gap in gaps:
        now += gap
        rate = gov.throttled(now)
        assert gov.floor <= rate <= 10.0


def test_the_breaker_opens_after_a_run_of_failures_and_closes_after_a_good_trial() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=10.0)
    assert breaker.allows(0.0) is None
    assert not breaker.failure(1.0)
    assert not breaker.failure(2.0)
    assert breaker.failure(3.0)  # the third in a row opens it
    assert breaker.allows(12.9) == 0
    assert breaker.allows(13.0) == 1
    assert breaker.started(13.0)
    assert breaker.allows(13.0) == 0  # one trial at a time
    assert not breaker.failure(13.5)  # a request sent before it opened fails late: no longer cool-down for it
    assert breaker.failure(14.0, trial=True)  # the trial failed: open again, twice as long
    assert breaker.open_until == 34.0
    assert breaker.started(34.0)
    assert breaker.success()
    assert breaker.allows(35.0) is None
    assert not breaker.is_open


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(threshold=3)
    breaker.failure(0.0)
    breaker.failure(0.0)
    assert not breaker.success()
    assert not breaker.failure(0.0)
    assert not breaker.is_open


def test_a_trial_that_never_reached_the_api_frees_the_slot() -> None:
    breaker = CircuitBreaker(threshold=1, cooldown=5.0)
    assert breaker.failure(0.0)
    trial = breaker.started(5.0)
    assert trial
    assert breaker.allows(5.0) == 0
    breaker.cancelled(trial)
    assert breaker.allows(5.0) == 1  # the next request is the trial
