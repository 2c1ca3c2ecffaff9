"""The retry policy for failed API calls: a pure decision from the attempt number and the error, no I/O."""

from dataclasses import dataclass
from enum import StrEnum

from daemon.errors import ApiError, ErrorKind, HTTPStatusError, classify

# 2**64 already dwarfs any sane max_delay; capping the exponent keeps huge attempt numbers from overflowing.
_MAX_EXPONENT = 64


class Jitter(StrEnum):
    """How the random draw spreads a backoff delay."""

    FULL = "full"  # anywhere in [0, backoff): spreads retries most, may retry almost at once
    EQUAL = "equal"  # in [backoff/2, backoff): always waits at least half the backoff


@dataclass(frozen=True)
class RetryDecision:
    """Whether to try again, after how many seconds, and why (for the log and the report)."""

    retry: bool
    delay: float
    reason: str


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient errors; the server's Retry-After is a floor."""

    max_attempts: int
    base_delay: float
    max_delay: float
    jitter: Jitter = Jitter.EQUAL

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"retry.max_attempts must be at least 1, got {self.max_attempts}")
        if not 0 <= self.base_delay <= self.max_delay:
            raise ValueError(
                f"retry delays must satisfy 0 <= base_delay_seconds <= max_delay_seconds, "
                f"got {self.base_delay} and {self.max_delay}"
            )

    def backoff(self, attempt: int) -> float:
        """The delay ceiling after `attempt` failures: base * 2**(attempt-1), at most max_delay."""
        return min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, _MAX_EXPONENT))

    def decide(self, attempt: int, error: ApiError, rand: float) -> RetryDecision:
        """Decide after attempt number `attempt` (from 1) failed with `error`; `rand` is a draw in [0, 1)."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        if not 0 <= rand < 1:
            raise ValueError(f"rand must be in [0, 1), got {rand}")
        kind = classify(error)
        if kind is not ErrorKind.TRANSIENT:
            return RetryDecision(retry=False, delay=0.0, reason=f"{kind} error, not retried")
        if attempt >= self.max_attempts:
            return RetryDecision(retry=False, delay=0.0, reason=f"transient error persisted through {attempt} attempts")
        ceiling = self.backoff(attempt)
        floor = 0.0 if self.jitter is Jitter.FULL else ceiling / 2
        delay = floor + rand * (ceiling - floor)
        reason = f"transient error on attempt {attempt} of {self.max_attempts}, backing off"
        retry_after = error.retry_after if isinstance(error, HTTPStatusError) else None
        if retry_after is not None and retry_after > delay:
            delay = retry_after
            reason = f"transient error on attempt {attempt} of {self.max_attempts}, server asked to wait"
        return RetryDecision(retry=True, delay=delay, reason=reason)


@dataclass
class Backoff:
    """Retry timing of one thing that keeps failing (a file's delivery, a part of the loop)."""

    first: float
    longest: float
    failures: int = 0
    next_at: float = 0.0
    error: str = ""

    def failed(self, now: float, error: str) -> float:
        """Count a failure at `now`; returns the wait before the next try."""
        self.failures += 1
        self.error = error
        wait: float = min(self.longest, self.first * 2.0 ** min(self.failures - 1, 20))
        self.next_at = now + wait
        return wait
