"""The request pace: evenly spaced slots, a rolling-window guard on departures, and the slowdown after 429s."""

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from daemon.breaker import ThrottleGovernor

CATCH_UP_SECONDS = 0.5  # slots missed while the loop was held this long are made up (the send window permitting)


class Pacer:
    """Hands out request slots on a grid 1/rate apart, in the order they were asked for.

    A slot taken late (the loop was recording an answer or merging codes when it came due) keeps the grid: the
    next one is due a full interval after the slot's due time, not after the moment it was taken. So neither the
    loop's latency nor a brief hold lowers the rate: taking each slot 15 ms late turned 9.7/s into 8.5/s, and
    a 0.4 s merge every 50 jobs cost 8 % more. Slots missed for up to CATCH_UP_SECONDS are given back to back
    until the grid is reached again (the send window still allows at most its limit in any rolling window);
    a longer gap (an idle spell, a pause) starts the grid again from now, so it never turns into a burst.
    """

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = self._interval_for(rate)
        self._clock = clock
        self._lock = threading.Lock()
        self._last_slot = -math.inf
        self._paused_until = -math.inf

    @staticmethod
    def _interval_for(rate: float) -> float:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"pace must be a positive number of requests per second, got {rate}")
        return 1.0 / rate

    @property
    def rate(self) -> float:
        """Requests per second."""
        with self._lock:
            return 1.0 / self._interval

    def set_rate(self, rate: float) -> None:
        """Change the pace; the next slot is spaced by the new interval."""
        interval = self._interval_for(rate)
        with self._lock:
            self._interval = interval

    def pause_until(self, monotonic_time: float) -> None:
        """Give no slot before this clock time (e.g. after a 429)."""
        with self._lock:
            self._paused_until = max(self._paused_until, monotonic_time)

    def try_acquire(self) -> bool:
        """Take a slot if one is due now, without waiting; False when the next slot is still ahead.

        The uploader uses this from its single thread, so a batch is marked `sending` only when its request can
        leave at once: a crash can then hardly catch a batch whose request had not gone out yet.
        """
        with self._lock:
            now = self._clock()
            due = self._due()
            if due > now:
                return False
            self._last_slot = due if self._catching_up(due, now) else now
            return True

    def next_free(self) -> float:
        """The clock time from which try_acquire() will succeed."""
        with self._lock:
            return self._due()

    def due_slots(self) -> int:
        """How many slots try_acquire() would give now, one after the other (more than one while catching up)."""
        with self._lock:
            now = self._clock()
            due = self._due()
            if due > now:
                return 0
            return int((now - due) / self._interval) + 1 if self._catching_up(due, now) else 1

    def _due(self) -> float:
        """When the next slot is due (the lock held)."""
        return max(self._last_slot + self._interval, self._paused_until)

    @staticmethod
    def _catching_up(due: float, now: float) -> bool:
        """Whether a slot due at `due` and taken at `now` keeps the grid (else the grid starts again at now)."""
        return now - due <= CATCH_UP_SECONDS


class SendWindow:
    """At most `limit` requests leave in any rolling `window` seconds, counted when they actually leave.

    The pacer spaces slots evenly, but a slot is taken a few milliseconds before its request is sent (the ledger
    commits `sending` in between), and that jitter can squeeze 11 requests into the API's rolling second. This
    guard, checked in the worker just before the request, holds the rare one that would.
    """

    def __init__(
        self,
        limit: int,
        window: float = 1.02,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if limit < 1 or not window > 0:
            raise ValueError(f"a send window needs limit >= 1 and window > 0, got {limit} and {window}")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._sent: deque[float] = deque(maxlen=limit)

    def resize(self, limit: int) -> None:
        """Allow `limit` requests per window from now on, keeping the departures already counted."""
        if limit < 1:
            raise ValueError(f"a send window needs limit >= 1, got {limit}")
        with self._lock:
            self.limit = limit
            self._sent = deque(self._sent, maxlen=limit)

    def wait_turn(self) -> float:
        """Block until a request may leave without breaking the window; returns the seconds waited.

        A departure is counted when it happens, not when it was planned: a worker that sleeps for its turn can
        wake 50-100 ms late in a busy process, and counting its planned time let the request ten places later
        leave 0.975 s after it (measured: the cause of the 429s at 10/s). So the worker sleeps, then asks again.
        """
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                at = now if len(self._sent) < self.limit else max(now, self._sent[0] + self.window)
                if at <= now:
                    self._sent.append(now)
                    return waited
            self._sleep(at - now)
            waited += at - now


# Requests are paced 3 % under the configured rate: the API counts arrivals in a rolling second, and the jitter
# between our clock and its arrival times otherwise lets an 11th request into a second at exactly 10/s.
PACE_HEADROOM = 0.97
# Seconds: the rolling window in which at most requests_per_second (rounded down) requests leave. As many
# intervals of the paced grid (1.031 s at any whole rate) must fit in it with room to spare, or the window, not the
# pace, sets the rate: at 1.05 s it held every request that the grid let out a little early, the held requests sat
# in the workers, and the task polls waited for a free worker (the headline's jobs completed 10-30 s after sent).
# Its 20 ms over the API's second covers the request's way to the API (1.6 ms median, 8 ms at most, measured).
SEND_WINDOW = 1.02
MAX_THROTTLE_PAUSE = 60.0  # seconds: a 429's announced wait pauses every request up to this


class Pace:
    """Everything that decides when an upload may leave: one object, owned by the uploader.

    The pacer spaces slots evenly at the configured rate (less the headroom), the send window holds the rare
    request that would still make the API's rolling second too full, and the governor lowers the rate while
    429s keep coming and restores it after a quiet spell.
    """

    def __init__(
        self,
        requests_per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        rate = requests_per_second * PACE_HEADROOM
        self._clock = clock
        self.pacer = Pacer(rate, clock=clock)
        self.window = SendWindow(self._window_limit(requests_per_second), SEND_WINDOW, clock=clock, sleep=sleep)
        self.governor = ThrottleGovernor(rate)

    @staticmethod
    def _window_limit(requests_per_second: float) -> int:
        """At most the configured rate in any window: slots made up after a hold leave one after the other, and
        at 8/s a window of 10 (the API's own limit, as it was) let 10 into one second (a 429 on an account, or a
        share of one, limited to 8)."""
        return max(1, math.floor(requests_per_second))

    @property
    def rate(self) -> float:
        """The pace now in force, in requests per second."""
        return self.pacer.rate

    def try_acquire(self) -> bool:
        """Take a slot for a request that leaves at once; False when the next slot is still ahead."""
        restored = self.governor.tick(self._clock())
        if restored is not None:
            self.pacer.set_rate(restored)
        return self.pacer.try_acquire()

    def next_free(self) -> float:
        """The clock time from which try_acquire() will succeed."""
        return self.pacer.next_free()

    def due_slots(self) -> int:
        """How many uploads may leave now, one after the other."""
        return self.pacer.due_slots()

    def wait_turn(self) -> float:
        """In a worker, just before the request leaves: wait (rarely, briefly) for the rolling window."""
        return self.window.wait_turn()

    def throttled(self, retry_after: float | None, sent_at: float | None = None) -> float:
        """A 429 for a request sent at `sent_at`: pause every request for the announced time (capped) and slow
        down; returns the pause."""
        now = self._clock()
        pause = min(MAX_THROTTLE_PAUSE, retry_after if retry_after is not None else 1.0)
        self.pacer.pause_until(now + pause)
        rate = self.governor.throttled(now, sent_at)
        if rate < self.pacer.rate:
            self.pacer.set_rate(rate)
        return pause

    def reconfigure(self, requests_per_second: float) -> float:
        """A new configured rate (SIGHUP); the window keeps its history. Returns the rate now in force."""
        rate = requests_per_second * PACE_HEADROOM
        self.governor.reconfigure(rate)
        self.pacer.set_rate(self.governor.rate)
        self.window.resize(self._window_limit(requests_per_second))
        return self.pacer.rate
