"""A simulated clock for the emulator: monotonic seconds and a UTC wall time that move only when told."""

import math
import threading
from datetime import UTC, datetime, timedelta

EPOCH = datetime(2030, 1, 1, tzinfo=UTC)  # an arbitrary, recognisable start for simulated wall times


class ManualClock:
    """`clock()` gives simulated seconds, `clock.wall()` the matching UTC time; `advance()` moves both.

    Pass it as `Emulator(config, clock=clock, wall=clock.wall)`. Reads are safe from any thread, so an emulator
    behind a real HTTP server can use it too.
    """

    def __init__(self, start: float = 0.0, epoch: datetime = EPOCH) -> None:
        if epoch.tzinfo is None:
            raise ValueError(f"ManualClock needs an aware epoch, got {epoch!r}")
        self._now = start
        self._epoch = epoch
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def wall(self) -> datetime:
        """The UTC wall time `now` seconds after the epoch."""
        return (self._epoch + timedelta(seconds=self._now)).astimezone(UTC)

    def advance(self, seconds: float) -> float:
        """Move time forward by `seconds` (finite, >= 0); return the new time."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError(f"a clock only moves forward by a finite number of seconds, got {seconds}")
        with self._lock:
            self._now += seconds
            return self._now

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now})"
