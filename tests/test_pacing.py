"""The shared request pacer: even spacing, pauses, rate changes, shutdown, and real threads."""

import itertools
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.pacing import Pacer, PacerClosed, SendWindow


class FakeClock:
    """A clock that only moves when someone sleeps or the test advances it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def granted(pacer: Pacer, clock: FakeClock) -> float:
    pacer.acquire()
    return clock.now


def test_slots_are_evenly_spaced() -> None:
    clock = FakeClock()
    pacer = Pacer(10, clock=clock, sleep=clock.sleep)
    times = [granted(pacer, clock) for _ in range(5)]
    assert times == pytest.approx([1000.0, 1000.1, 1000.2, 1000.3, 1000.4])


def test_no_burst_after_an_idle_spell() -> None:
    clock = FakeClock()
    pacer = Pacer(10, clock=clock, sleep=clock.sleep)
    pacer.acquire()
    clock.now += 60  # idle for a minute: a token bucket with capacity > 1 would now allow a burst
    first, second = granted(pacer, clock), granted(pacer, clock)
    assert first == 1060.0
    assert second == pytest.approx(1060.1)


def test_a_caller_after_its_slot_goes_at_once() -> None:
    clock = FakeClock()
    pacer = Pacer(10, clock=clock, sleep=clock.sleep)
    pacer.acquire()
    clock.now += 0.25
    pacer.acquire()
    assert clock.sleeps == []


def test_pause_until_holds_every_acquire() -> None:
    clock = FakeClock()
    pacer = Pacer(10, clock=clock, sleep=clock.sleep)
    pacer.acquire()
    pacer.pause_until(1005.0)
    pacer.pause_until(1002.0)  # an earlier pause never shortens a later one
    assert [granted(pacer, clock) for _ in range(2)] == pytest.approx([1005.0, 1005.1])


def test_a_pause_that_begins_while_waiting_is_honoured() -> None:
    clock = FakeClock()
    pacer = Pacer(10, clock=clock, sleep=clock.sleep)
    pacer.acquire()

    def sleep_while_another_worker_hits_a_429(seconds: float) -> None:
        if not clock.sleeps:
            pacer.pause_until(clock.now + 3.0)
        clock.sleep(seconds)

    pacer._sleep = sleep_while_another_worker_hits_a_429
    pacer.acquire()
    assert clock.now == pytest.approx(1003.0)


def test_set_rate_changes_the_spacing() -> None:
    clock = FakeClock()
    pacer = Pacer(10, clock=clock, sleep=clock.sleep)
    pacer.acquire()
    pacer.set_rate(2)
    assert pacer.rate == 2
    assert granted(pacer, clock) == pytest.approx(1000.5)


@pytest.mark.parametrize("rate", [0, -1, float("inf"), float("nan")])
def test_a_rate_must_be_positive_and_finite(rate: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Pacer(rate)
    with pytest.raises(ValueError, match="positive"):
        Pacer(1).set_rate(rate)


def test_close_wakes_a_waiting_caller() -> None:
    pacer = Pacer(10)
    pacer.pause_until(time.monotonic() + 60)
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            pacer.acquire()
        except PacerClosed as exc:
            outcome.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.05)
    pacer.close()
    thread.join(5)
    assert not thread.is_alive()
    assert len(outcome) == 1
    with pytest.raises(PacerClosed):
        pacer.acquire()


@given(gaps=st.lists(st.floats(min_value=0, max_value=1.0, allow_nan=False), min_size=1, max_size=40))
def test_slots_never_come_closer_than_the_interval_nor_early(gaps: list[float]) -> None:
    clock = FakeClock()
    pacer = Pacer(10, clock=clock, sleep=clock.sleep)
    previous = None
    for gap in gaps:
        clock.now += gap
        asked = clock.now
        slot = granted(pacer, clock)
        assert slot >= asked
        if previous is not None:
            assert slot - previous >= 0.1 - 1e-9
            assert slot == pytest.approx(max(asked, previous + 0.1))  # and never later than needed
        previous = slot


def test_real_threads_never_get_two_slots_closer_than_the_interval() -> None:
    rate, per_thread, threads_count = 50.0, 5, 8
    interval = 1 / rate
    pacer = Pacer(rate)
    times: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(per_thread):
            pacer.acquire()
            now = time.monotonic()
            with lock:
                times.append(now)

    threads = [threading.Thread(target=worker) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    times.sort()
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(times) == 40
    # A late wake-up of one thread can shrink the gap to the next; it can never make slots come early overall.
    assert min(gaps) >= interval * 0.5
    assert times[-1] - times[0] >= 39 * interval - 0.005


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
    pacer.close()
    now[0] = 200.0
    assert not pacer.try_acquire()


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


@given(st.lists(st.floats(min_value=0, max_value=0.3), min_size=1, max_size=60))
def test_no_rolling_window_ever_holds_more_than_the_limit(gaps: list[float]) -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    window = SendWindow(5, 1.0, clock=lambda: now[0], sleep=sleep)
    sent = []
    for gap in gaps:
        now[0] += gap
        window.wait_turn()
        sent.append(now[0])
    for i in range(len(sent) - 5):
        assert sent[i + 5] - sent[i] >= 1.0 - 1e-9
