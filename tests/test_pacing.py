"""The request pace: even spacing, pauses, rate changes, the rolling send window, and the 429 slowdown."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.pacing import CATCH_UP_SECONDS, MAX_THROTTLE_PAUSE, PACE_HEADROOM, SEND_WINDOW, Pace, Pacer, SendWindow


class FakeClock:
    """A clock that only moves when someone sleeps or the test advances it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def next_slot(pacer: Pacer, clock: FakeClock) -> float:
    """Wait (on the fake clock) for the next slot and take it; returns its time."""
    clock.now = max(clock.now, pacer.next_free())
    assert pacer.try_acquire()
    return clock.now


def test_slots_are_evenly_spaced() -> None:
    clock = FakeClock()
    pacer = Pacer(10, clock=clock)
    times = [next_slot(pacer, clock) for _ in range(5)]
    assert times == pytest.approx([1000.0, 1000.1, 1000.2, 1000.3, 1000.4])


def test_no_burst_after_an_idle_spell() -> None:
    clock = FakeClock()
    pacer = Pacer(10, clock=clock)
    assert pacer.try_acquire()
    clock.now += 60  # idle for a minute: a token bucket with capacity > 1 would now allow a burst
    assert pacer.try_acquire()
    assert not pacer.try_acquire()
    assert pacer.next_free() == pytest.approx(1060.1)


def test_set_rate_changes_the_spacing() -> None:
    clock = FakeClock()
    pacer = Pacer(10, clock=clock)
    assert pacer.try_acquire()
    pacer.set_rate(2)
    assert pacer.rate == 2
    assert next_slot(pacer, clock) == pytest.approx(1000.5)


@pytest.mark.parametrize("rate", [0, -1, float("inf"), float("nan")])
def test_a_rate_must_be_positive_and_finite(rate: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Pacer(rate)
    with pytest.raises(ValueError, match="positive"):
        Pacer(1).set_rate(rate)


@given(gaps=st.lists(st.floats(min_value=0, max_value=1.0, allow_nan=False), min_size=1, max_size=40))
def test_slots_never_outrun_the_grid(gaps: list[float]) -> None:
    clock = FakeClock()
    pacer = Pacer(4, clock=clock)
    taken: list[float] = []
    for gap in gaps:
        clock.now += gap
        while pacer.try_acquire():  # a loop that takes every slot it is given
            taken.append(clock.now)
    # Slot j is due (j - i) intervals after slot i was due at the least, and a slot is taken at most
    # CATCH_UP_SECONDS after it was due: the rate over any span is the pace's, plus what a catch-up makes up.
    for i, j in itertools.combinations(range(len(taken)), 2):
        assert taken[j] - taken[i] >= (j - i) * 0.25 - CATCH_UP_SECONDS - 1e-9


@given(late=st.floats(min_value=0, max_value=0.099))
def test_a_loop_that_takes_each_slot_late_keeps_the_rate(late: float) -> None:
    clock = FakeClock()
    pacer = Pacer(10, clock=clock)
    times = []
    for _ in range(101):
        clock.now = max(clock.now, pacer.next_free()) + late  # the loop wakes `late` after the slot came due
        assert pacer.try_acquire()
        times.append(clock.now)
    # The first slot starts the grid; each later one is `late` after its due time: 99 intervals, no drift.
    assert times[-1] - times[1] == pytest.approx(9.9)


def test_slots_missed_in_a_brief_hold_are_made_up_and_a_long_one_starts_the_grid_again() -> None:
    clock = FakeClock()
    pacer = Pacer(10, clock=clock)
    assert pacer.try_acquire()
    clock.now += 0.35  # the loop was held past three slots (1000.1, 1000.2, 1000.3)
    assert pacer.due_slots() == 3
    assert [pacer.try_acquire() for _ in range(4)] == [True, True, True, False]
    assert pacer.due_slots() == 0
    assert pacer.next_free() == pytest.approx(1000.4)  # back on the grid
    clock.now += CATCH_UP_SECONDS + 0.2  # held longer than a catch-up may make up: no burst
    assert pacer.due_slots() == 1
    assert pacer.try_acquire()
    assert not pacer.try_acquire()
    assert pacer.next_free() == pytest.approx(clock.now + 0.1)


def test_ten_slots_of_the_paced_grid_fit_in_the_send_window() -> None:
    # Else the window, not the pace, would set the rate, holding requests in the workers the polls need.
    assert 10 / (10 * PACE_HEADROOM) > SEND_WINDOW


def test_a_429_pauses_every_request_and_slows_the_pace() -> None:
    clock = FakeClock()
    pace = Pace(10, clock=clock, sleep=clock.sleep)
    assert pace.try_acquire()
    assert pace.throttled(3.0) == 3.0
    assert pace.next_free() == pytest.approx(1003.0)
    clock.now += 1
    assert pace.throttled(None) == 1.0  # no announced wait: one second
    assert pace.rate < 10 * PACE_HEADROOM  # a second 429 within the memory slows down
    assert pace.throttled(100_000_000) == MAX_THROTTLE_PAUSE  # a huge announced wait is capped
    clock.now += 31 + MAX_THROTTLE_PAUSE
    assert pace.try_acquire()  # the quiet spell gave the configured rate back
    assert pace.rate == pytest.approx(10 * PACE_HEADROOM)


def test_reconfigure_keeps_the_window_history() -> None:
    clock = FakeClock()
    pace = Pace(10, clock=clock, sleep=clock.sleep)
    for _ in range(10):
        assert pace.wait_turn() == 0
    assert pace.reconfigure(5) == pytest.approx(5 * PACE_HEADROOM)
    assert pace.wait_turn() == pytest.approx(SEND_WINDOW)  # the ten that just left still count


def test_try_acquire_takes_only_a_slot_that_is_due() -> None:
    now = [100.0]
    pacer = Pacer(4.0, clock=lambda: now[0])
    assert pacer.try_acquire()
    assert not pacer.try_acquire()
    assert pacer.next_free() == 100.25
    now[0] = 100.25
    assert pacer.try_acquire()
    pacer.pause_until(101.0)
    now[0] = 100.9
    assert not pacer.try_acquire()
    assert pacer.next_free() == 101.0
    now[0] = 101.0
    assert pacer.try_acquire()


def test_the_send_window_holds_the_request_that_would_make_eleven_in_a_second() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    window = SendWindow(10, 1.05, clock=lambda: now[0], sleep=sleep)
    for i in range(10):
        now[0] = i * 0.09  # ten requests squeezed into 0.81 s by jitter
        assert window.wait_turn() == 0
    now[0] = 0.95
    assert window.wait_turn() == pytest.approx(0.10)  # the 11th waits until 1.05 s after the first
    assert slept == [pytest.approx(0.10)]


@given(
    st.lists(st.floats(min_value=0, max_value=0.3), min_size=1, max_size=60),
    st.lists(st.floats(min_value=0, max_value=0.1), min_size=1, max_size=10),
)
def test_no_rolling_window_ever_holds_more_than_the_limit(gaps: list[float], oversleeps: list[float]) -> None:
    now = [0.0]
    late = itertools.cycle(oversleeps)

    def sleep(seconds: float) -> None:
        now[0] += seconds + next(late)  # a worker in a busy process wakes up late

    window = SendWindow(5, 1.0, clock=lambda: now[0], sleep=sleep)
    sent = []
    for gap in gaps:
        now[0] += gap
        window.wait_turn()
        sent.append(now[0])  # when the request actually leaves
    for i in range(len(sent) - 5):
        assert sent[i + 5] - sent[i] >= 1.0 - 1e-9


@given(rate=st.integers(1, 12), holds=st.lists(st.floats(min_value=0, max_value=0.6), max_size=40))
def test_paced_uploads_never_exceed_the_configured_rate_in_any_second(rate: int, holds: list[float]) -> None:
    # Slots missed while the loop was held leave one after the other: the window must hold them to the configured
    # rate (at 8/s it once allowed the API's 10, a 429 on an account limited to 8).
    clock = FakeClock()
    pace = Pace(rate, clock=clock, sleep=clock.sleep)
    sent: list[float] = []
    for hold in holds:
        clock.now += hold
        while pace.try_acquire():  # every slot due now, one after the other, each waiting for the window
            pace.wait_turn()
            sent.append(clock.now)
        clock.now = max(clock.now, pace.next_free())
    for i in range(len(sent) - rate):
        assert sent[i + rate] - sent[i] > 1.0, (i, sent[i : i + rate + 1])
