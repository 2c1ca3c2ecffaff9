"""One evenly spaced request pace shared by every upload worker, so the API's rate limit is never hit."""

import math
import threading
import time
from collections import deque
from collections.abc import Callable


class PacerClosed(Exception):
    """acquire() gave up because the pacer was closed (the daemon is shutting down)."""


class Pacer:
    """Hands out request slots exactly 1/rate apart, in the order they were asked for.

    A token bucket with a capacity of one: no bursts, not even after an idle spell, so a pace of 10/s never
    puts two requests into the API's window closer than 100 ms.
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self._interval = self._interval_for(rate)
        self._clock = clock
        self._closed = threading.Event()
        # The default sleep wakes on close(), so a worker parked behind a long pause cannot delay shutdown.
        self._sleep = sleep if sleep is not None else self._closed.wait
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
        """Hold every acquire, including those already waiting, until this clock time (e.g. after a 429)."""
        with self._lock:
            self._paused_until = max(self._paused_until, monotonic_time)

    def close(self) -> None:
        """Wake every waiting acquire with PacerClosed, and refuse further ones."""
        self._closed.set()

    def acquire(self) -> None:
        """Block until the caller's slot; raise PacerClosed if the pacer is closed meanwhile."""
        while True:
            with self._lock:
                self._raise_if_closed()
                slot = max(self._last_slot + self._interval, self._clock(), self._paused_until)
                self._last_slot = slot
            while (remaining := slot - self._clock()) > 0:
                self._sleep(remaining)
                self._raise_if_closed()
            with self._lock:
                if self._paused_until <= slot:
                    return
            # A pause began while this caller waited for its slot: queue again behind the pause.

    def try_acquire(self) -> bool:
        """Take a slot if one is due now, without waiting; False when the next slot is still ahead (or closed).

        The uploader uses this from its single thread, so a batch is marked `sending` only when its request can
        leave at once: a crash can then hardly catch a batch whose request had not gone out yet.
        """
        with self._lock:
            now = self._clock()
            if self._closed.is_set() or max(self._last_slot + self._interval, self._paused_until) > now:
                return False
            self._last_slot = now
            return True

    def next_free(self) -> float:
        """The clock time from which try_acquire() will succeed."""
        with self._lock:
            return max(self._last_slot + self._interval, self._paused_until)

    def _raise_if_closed(self) -> None:
        if self._closed.is_set():
            raise PacerClosed("the request pacer was closed")


class SendWindow:
    """At most `limit` requests leave in any rolling `window` seconds, counted when they actually leave.

    The pacer spaces slots evenly, but a slot is taken a few milliseconds before its request is sent (the ledger
    commits `sending` in between), and that jitter can squeeze 11 requests into the API's rolling second. This
    guard, checked in the worker just before the request, holds the rare one that would.
    """

    def __init__(
        self,
        limit: int,
        window: float = 1.05,
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

    def wait_turn(self) -> float:
        """Block until a request may leave without breaking the window; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            at = now
            if len(self._sent) == self.limit:
                at = max(now, self._sent[0] + self.window)
            self._sent.append(at)
        if at > now:
            self._sleep(at - now)
        return at - now
