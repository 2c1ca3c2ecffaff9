"""Back-pressure: slow down after repeated 429s, and stop sending for a while after a run of failures."""

from dataclasses import dataclass


@dataclass
class ThrottleGovernor:
    """Lowers the request rate while 429s keep coming, and gives the configured rate back after a quiet spell."""

    configured: float  # requests per second from the configuration (after headroom)
    factor: float = 0.8  # each 429 within `memory` seconds of the last one multiplies the rate by this ...
    floor_share: float = 0.5  # ... down to this share of the configured rate: others may be using the account
    memory: float = 30.0  # seconds without a 429 after which the configured rate returns
    rate: float = 0.0
    last_429: float | None = None

    def __post_init__(self) -> None:
        self.rate = self.configured

    @property
    def floor(self) -> float:
        """The slowest pace repeated 429s can bring."""
        return self.configured * self.floor_share

    def throttled(self, now: float, sent_at: float | None = None) -> float:
        """A 429 arrived at `now` for a request sent at `sent_at`: returns the rate to use from now on.

        A request that had left before the last 429 came back was refused by the same crowded second: it is one
        event, answered by one pause, not a sign that 429s keep coming.
        """
        same_event = sent_at is not None and self.last_429 is not None and sent_at <= self.last_429
        if not same_event and self.last_429 is not None and now - self.last_429 <= self.memory:
            self.rate = max(self.floor, min(self.rate, self.configured) * self.factor)
        self.last_429 = now
        return self.rate

    def tick(self, now: float) -> float | None:
        """The rate to restore when the quiet spell is over, else None (nothing to change)."""
        if self.last_429 is not None and now - self.last_429 > self.memory and self.rate != self.configured:
            self.rate = self.configured
            self.last_429 = None
            return self.rate
        return None

    def reconfigure(self, configured: float) -> None:
        """The configured rate changed (SIGHUP)."""
        self.configured = configured
        self.rate = min(self.rate, configured) if self.last_429 is not None else configured


@dataclass
class CircuitBreaker:
    """After `threshold` transient failures in a row, nothing is sent for a cool-down that doubles while it lasts.

    Closed: requests flow. Open: nothing is sent until `open_until`. Then half-open: one request is let through;
    its success closes the breaker, its failure opens it again for twice as long (up to `max_cooldown`).
    The trial begins only when a request really leaves (`started`), and every answer records exactly one
    `success` or `failure`, so a trial cannot be lost: an answer that is neither (a request that never left)
    calls `cancelled`.
    """

    threshold: int = 10
    cooldown: float = 30.0
    max_cooldown: float = 600.0
    failures: int = 0
    open_until: float | None = None
    current_cooldown: float = 0.0
    trial_in_flight: bool = False

    def allows(self, now: float) -> int | None:
        """How many requests may start now: None for no limit, 0 while open, 1 for the half-open trial."""
        if self.open_until is None:
            return None
        if now < self.open_until or self.trial_in_flight:
            return 0
        return 1

    def started(self, now: float) -> bool:
        """A request left; returns True when it is the half-open trial."""
        if self.open_until is not None and now >= self.open_until and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

    def cancelled(self, trial: bool) -> None:
        """A request that was counted as started never reached the API (e.g. shutdown): its trial is free again."""
        if trial:
            self.trial_in_flight = False

    def success(self) -> bool:
        """A request was answered (the API is up); returns True when this closed an open breaker."""
        was_open = self.open_until is not None
        self.failures = 0
        self.open_until = None
        self.current_cooldown = 0.0
        self.trial_in_flight = False
        return was_open

    def failure(self, now: float, *, trial: bool = False) -> bool:
        """A transient failure; returns True when this opened the breaker (or opened it again).

        `trial`: the failed request was the half-open trial. A failure of a request that left before the
        breaker opened does not re-open it for longer.
        """
        self.failures += 1
        if trial:
            self.trial_in_flight = False
            self.current_cooldown = min(self.max_cooldown, max(self.cooldown, self.current_cooldown * 2))
            self.open_until = now + self.current_cooldown
            return True
        if self.open_until is None and self.failures >= self.threshold:
            self.current_cooldown = min(self.max_cooldown, self.cooldown)
            self.open_until = now + self.current_cooldown
            return True
        return False

    @property
    def is_open(self) -> bool:
        """Whether sending is paused."""
        return self.open_until is not None
