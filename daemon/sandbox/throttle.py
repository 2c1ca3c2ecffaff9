"""A sliding-window request throttle that behaves like Django REST Framework's SimpleRateThrottle."""

import math
import threading
from collections import deque


class SlidingWindowThrottle:
    """Allows `rate` requests per rolling second; refused requests are not counted."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"throttle rate must be positive, got {rate}")
        # DRF expresses a rate as "N requests per duration"; so 2.5/s becomes 2 per 0.8 s.
        self.num_requests = max(1, int(rate))
        self.duration = self.num_requests / rate
        self._history: deque[float] = deque()
        self._lock = threading.Lock()

    def allow(self, now: float) -> float | None:
        """Record a request at `now` and return None; if throttled, return whole seconds to wait (>= 1)."""
        with self._lock:
            # Same boundary as DRF: an entry exactly `duration` old no longer counts.
            while self._history and self._history[0] <= now - self.duration:
                self._history.popleft()
            if len(self._history) < self.num_requests:
                self._history.append(now)
                return None
            remaining = self.duration - (now - self._history[0])
            available = self.num_requests - len(self._history) + 1
            return float(max(1, math.ceil(remaining / available)))
