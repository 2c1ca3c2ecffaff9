"""What the uploader hands its workers: a request in hand (Work), the pool that runs them, and why sending pauses."""

from collections.abc import Callable, Collection
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol

from daemon.config import Settings
from daemon.decide import Policy, RequestKind
from daemon.ledger import BatchInfo
from daemon.normalize import Layout
from daemon.retry import RetryPolicy


class Runner(Protocol):
    """Where requests run: worker threads in production, the simulation's clock in tests."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Start fn(*args); its future completes with the answer."""

    def wait(self, futures: Collection[Future[Any]], timeout: float) -> set[Future[Any]]:
        """Wait up to `timeout` seconds for at least one of `futures`; the done ones."""

    def shutdown(self) -> None:
        """Wait for what runs and stop."""


class ThreadRunner:
    """A pool of worker threads (HTTP is blocking I/O; the ledger is written only from the caller's thread)."""

    def __init__(self, workers: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload")

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Start fn(*args) in a worker."""
        return self.pool.submit(fn, *args)

    def wait(self, futures: Collection[Future[Any]], timeout: float) -> set[Future[Any]]:
        """Wait for the first answer, up to `timeout` seconds."""
        done, _ = wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
        return done

    def shutdown(self) -> None:
        """Wait for the workers."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def policy_from(settings: Settings) -> Policy:
    """The decision policy the settings give."""
    retry, poll = settings.retry, settings.poll
    return Policy(
        retry=RetryPolicy(retry.max_attempts, retry.base_delay_seconds, retry.max_delay_seconds),
        poll_interval=poll.interval_seconds,
        poll_max_interval=poll.max_interval_seconds,
        poll_timeout=poll.timeout_seconds,
        max_server_wait=retry.max_server_wait_seconds,
    )


@dataclass(frozen=True)
class FileContext:
    """What sending a file's rows needs from its ledger record."""

    name: str
    data_key: str
    layout: Layout
    clear_empty: bool


@dataclass(frozen=True)
class Work:
    """A request in a worker's hands."""

    kind: RequestKind
    batch: BatchInfo | None
    file: FileContext | None
    keys: tuple[str, ...] = ()
    lines: tuple[int, ...] = ()
    trial: bool = False  # the circuit breaker's half-open trial
    task_age: float = 0.0  # polls: seconds since the task was created, at the time of the request
    sent_at: float | None = None  # uploads: the monotonic time the request was started


@dataclass(frozen=True)
class Pause:
    """Why nothing is uploaded right now, until the cause is fixed."""

    cause: str  # starting (the start-up check has not passed yet) | token | configuration
    reason: str
