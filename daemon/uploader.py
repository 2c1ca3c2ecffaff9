"""Uploader: sends due batches and polls async tasks through a pool of HTTP workers, recording every outcome."""

import math
import random
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import SecretStr

from daemon.api import ApiError, ErrorKind, ScantrustClient, SyncResult, TaskState, TaskStatus, classify
from daemon.breaker import CircuitBreaker, ThrottleGovernor
from daemon.config import PollSettings
from daemon.errors import HTTPStatusError, Rejected, Throttled, TransportError
from daemon.ledger import UPLOADS_PAUSED, BatchInfo, Ledger
from daemon.normalize import Layout, scm_data
from daemon.pacing import Pacer, PacerClosed, SendWindow
from daemon.retry import RetryPolicy
from daemon.states import BatchState, RowStatus

log = structlog.get_logger(__name__)

MISSING_TASK_POLLS = 3  # a task that answers 404 this many times in a row is given up
MAX_THROTTLE_PAUSE = 60.0  # seconds: a 429's announced wait is honoured up to this
TOKEN_RECHECK_SECONDS = 180.0  # while the token is refused, ask GET /me/ this often
SPLIT_AFTER_TIMEOUTS = 2  # a batch that timed out this many times in a row is cut in halves
API_RATE_LIMIT = 10  # SCM updates per second per account (API.md)
SEND_WINDOW = 1.05  # seconds: the rolling window in which at most max(API_RATE_LIMIT, pace) requests leave


def send_window(rate: float) -> SendWindow:
    """The guard on actual departures for a pace: the API's limit, or the pace itself when configured higher."""
    return SendWindow(max(API_RATE_LIMIT, math.ceil(rate)), SEND_WINDOW)


@dataclass(frozen=True)
class FileContext:
    """What sending a file's rows needs from its ledger record."""

    name: str
    data_key: str
    layout: Layout
    clear_empty: bool


@dataclass(frozen=True)
class Work:
    """A request in a worker's hands: a sync upload, an async submission, or a task poll."""

    kind: str  # upload | submit | poll | token
    batch: BatchInfo | None
    file: FileContext | None
    keys: tuple[str, ...] = ()
    lines: tuple[int, ...] = ()


def timed_out(exc: ApiError) -> bool:
    """Whether a failure was a timeout: no answer within the read timeout, or the API's own 504."""
    if isinstance(exc, HTTPStatusError):
        return exc.status == 504
    return isinstance(exc, TransportError) and "timeout" in str(exc).lower()


def halves(lines: tuple[int, ...]) -> list[tuple[int, ...]]:
    """A batch's rows in two halves, in row order."""
    middle = len(lines) // 2
    return [lines[:middle], lines[middle:]]


def next_poll_delay(elapsed: float, poll: PollSettings) -> float:
    """Wait about half the task's age before asking again: quick at first, backing off to max_interval_seconds."""
    return min(poll.max_interval_seconds, max(poll.interval_seconds, elapsed / 2))


class Uploader:
    """Runs up to `workers` requests at once; the ledger is written only from the caller's thread."""

    def __init__(
        self,
        ledger: Ledger,
        client: ScantrustClient,
        policy: RetryPolicy,
        poll: PollSettings,
        *,
        workers: int,
        pacer: Pacer | None = None,
        breaker_failures: int = 10,
        breaker_cooldown: float = 30.0,
        token_source: Callable[[], SecretStr | None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.policy = policy
        self.poll = poll
        self.workers = workers
        self.pacer = pacer
        self.monotonic = monotonic
        self.rand = rand
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload")
        self.inflight: dict[Future[Any], Work] = {}
        self.token_refused: str | None = None  # the API's words when it refused the token
        self.governor = ThrottleGovernor(pacer.rate) if pacer is not None else None
        self.window = send_window(pacer.rate) if pacer is not None else None
        self.breaker = CircuitBreaker(threshold=breaker_failures, cooldown=breaker_cooldown)
        self.token_source = token_source  # the token as configured now: a renewed one is picked up at a re-check
        self.paced_until: float | None = None  # when the pacer's next slot is free, if a due upload waits for it
        self._next_token_check = 0.0
        self._files: dict[int, FileContext] = {}

    def held_until(self) -> float | None:
        """Monotonic time before which due uploads cannot start (pace, breaker); inf while the token is refused."""
        if self.token_refused:
            return math.inf
        times = [t for t in (self.paced_until, self.breaker.open_until) if t is not None]
        return max(times) if times else None

    @property
    def busy(self) -> bool:
        """Whether any request is in flight."""
        return bool(self.inflight)

    def _file(self, file_id: int) -> FileContext:
        if file_id not in self._files:
            f = self.ledger.file(file_id)
            self._files[file_id] = FileContext(
                f.name, f.data_key, Layout.from_record(f.layout), bool(f.layout.get("clear_empty"))
            )
        return self._files[file_id]

    # --- sending ---------------------------------------------------------------------------------------------

    def dispatch(self, now: float) -> int:
        """Start as many due uploads and task polls as there are free workers; returns how many started."""
        self.paced_until = None
        if self.token_refused:
            return self._check_token(now)
        mono = self.monotonic()
        if self.governor is not None and self.pacer is not None and (rate := self.governor.tick(mono)) is not None:
            self.pacer.set_rate(rate)
            log.info("pace_restored", requests_per_second=round(rate, 2))
        free = self.workers - len(self.inflight)
        allowed = self.breaker.allows(mono)
        if allowed is not None:
            free = min(free, allowed)
        busy = {w.batch.id for w in self.inflight.values() if w.batch is not None}
        due = self.ledger.due_batches(now, free, exclude=busy)
        if due:
            self.breaker.started(mono)
        started = 0
        for queued in due:
            file = self._file(queued.file_id)
            if queued.state is BatchState.SUBMITTED:
                assert queued.task_id is not None
                self._submit(Work("poll", queued, file), self.client.task, queued.task_id)  # polls are not paced
                started += 1
                continue
            # Paced here, not in the worker: `sending` is committed only when the request can leave at once, so a
            # crash almost never catches a batch whose request had not gone out (it would be sent once more).
            if self.pacer is not None and not self.pacer.try_acquire():
                self.paced_until = self.pacer.next_free()
                continue
            started += 1
            batch, rows = self.ledger.start_sending(queued.id)  # committed before the request exists
            keys = tuple(key for _, key, _ in rows)
            lines = tuple(line for line, _, _ in rows)
            if batch.kind == "async":
                data = scm_data(rows[0][2], file.layout, clear_empty=file.clear_empty)
                assert batch.reference is not None
                self._submit(
                    Work("submit", batch, file, keys, lines),
                    self._send,
                    self.client.upload_async,
                    file.data_key,
                    list(keys),
                    data,
                    batch.reference,
                )
            else:
                items = [
                    {file.data_key: key, **scm_data(cells, file.layout, clear_empty=file.clear_empty)}
                    for _, key, cells in rows
                ]
                self._submit(
                    Work("upload", batch, file, keys, lines), self._send, self.client.upload_sync, file.data_key, items
                )
        return started

    def _check_token(self, now: float) -> int:
        """While the token is refused: ask GET /me/ every few minutes, one request at a time."""
        if now < self._next_token_check or any(w.kind == "token" for w in self.inflight.values()):
            return 0
        self._next_token_check = now + TOKEN_RECHECK_SECONDS
        if self.token_source is not None and (token := self.token_source()) is not None:
            self.client.set_token(token)  # the credential file may hold a renewed one by now
        self._submit(Work("token", None, None), self.client.me)
        return 1

    def _pause(self, reason: str | None) -> None:
        """Say in the ledger (for `scm-daemon status`) why uploads are paused, or that they are not."""
        self.ledger.set_meta(UPLOADS_PAUSED, reason)

    def recheck_token_now(self) -> None:
        """Check a refused token at the next dispatch (after SIGHUP, when it may have been renewed)."""
        self._next_token_check = 0.0

    def _send(self, call: Callable[..., Any], *args: Any) -> Any:
        """In a worker: wait (rarely, briefly) for the rolling window, then make the upload call."""
        if self.window is not None:
            self.window.wait_turn()
        return call(*args)

    def _submit(self, work: Work, call: Callable[..., Any], *args: Any) -> None:
        self.inflight[self.pool.submit(call, *args)] = work

    def collect(self, timeout: float, now: Callable[[], float]) -> int:
        """Wait up to `timeout` for answers and record them; returns how many came."""
        if not self.inflight:
            return 0
        done, _ = wait(list(self.inflight), timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            self._record(self.inflight.pop(future), future, now())
        return len(done)

    def drain(self, now: Callable[[], float]) -> None:
        """Wait for every request in flight (each is bounded by its timeouts) and record the answers."""
        while self.inflight:
            self.collect(1.0, now)

    def close(self) -> None:
        """Stop the worker threads (after drain)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()

    # --- answers ---------------------------------------------------------------------------------------------

    def _record(self, work: Work, future: Future[Any], now: float) -> None:
        if work.kind == "token":
            self._token_checked(future)
            return
        batch, file = work.batch, work.file
        assert batch is not None
        assert file is not None
        bound = log.bind(file=file.name, batch=batch.seq, batch_id=batch.id)
        try:
            result = future.result()
        except PacerClosed:
            # Shutting down before the request left: nothing was sent, so nothing counts against the batch.
            self.ledger.requeue(batch, at=now, error="not sent: shutting down", ambiguous=False, count_failure=False)
            return
        except ApiError as exc:
            if work.kind == "poll":
                self._poll_failed(batch, exc, now, bound)
            else:
                self._send_failed(work, batch, exc, now, bound)
            return
        if self.breaker.success():
            log.info("sending_resumed", reason="a request succeeded after the pause")
            self._pause(None)
        if work.kind == "upload":
            assert isinstance(result, SyncResult)
            self.ledger.complete_sync(batch, file.data_key, work.keys, set(result.changed))
            bound.info("batch_uploaded", rows=batch.size, changed=len(result.changed), attempt=batch.attempts)
        elif work.kind == "submit":
            task_id = str(result)
            poll_at = now + self.poll.interval_seconds
            self.ledger.submit_task(batch, task_id=task_id, submitted_at=now, poll_at=poll_at)
            bound.info("task_created", task_id=task_id, rows=batch.size, reference=batch.reference)
        else:
            assert isinstance(result, TaskStatus)
            self._polled(batch, file, result, now, bound)

    def _token_checked(self, future: Future[Any]) -> None:
        try:
            future.result()
        except ApiError as exc:
            log.error("token_still_refused", error=str(exc), next_check_in=TOKEN_RECHECK_SECONDS)
            return
        log.info("token_accepted", action="uploads resume")
        self.token_refused = None
        self._pause(None)

    def _polled(self, batch: BatchInfo, file: FileContext, status: TaskStatus, now: float, bound: Any) -> None:
        if status.state is TaskState.COMPLETE:
            self.ledger.complete_task(
                batch, file.data_key, task_state=status.raw_state, codes_affected=status.codes_affected
            )
            bound.info("task_complete", task_id=batch.task_id, codes_affected=status.codes_affected, rows=batch.size)
            return
        if status.state is TaskState.FAILED:
            detail = f"Scantrust task {batch.task_id} ended in state {status.raw_state!r}"
            self.ledger.fail_batch(batch, status=RowStatus.FAILED, detail=detail, task_state=status.raw_state)
            bound.error("task_failed", task_id=batch.task_id, state=status.raw_state)
            return
        if status.state is TaskState.UNKNOWN:
            bound.warning("task_state_unknown", task_id=batch.task_id, state=status.raw_state)
        elapsed = now - (batch.submitted_at or now)
        if elapsed > self.poll.timeout_seconds:
            detail = (
                f"Scantrust task {batch.task_id} still {status.raw_state!r} after {elapsed:.0f} s "
                "(poll.timeout_seconds)"
            )
            self.ledger.fail_batch(batch, status=RowStatus.FAILED, detail=detail, task_state=status.raw_state)
            bound.error("task_timed_out", task_id=batch.task_id, state=status.raw_state)
            return
        at = now + next_poll_delay(elapsed, self.poll)
        self.ledger.reschedule_poll(batch, at=at, task_state=status.raw_state, error=None)

    def _poll_failed(self, batch: BatchInfo, exc: ApiError, now: float, bound: Any) -> None:
        kind = classify(exc)
        if kind is ErrorKind.TOKEN_REFUSED:
            self.token_refused = str(exc)
            self.ledger.reschedule_poll(batch, at=now, task_state=None, error=None)
            bound.error("token_refused", error=str(exc))
            return
        if getattr(exc, "status", None) == 404 and batch.failures + 1 >= MISSING_TASK_POLLS:
            detail = f"Scantrust task {batch.task_id} not found (404) in {MISSING_TASK_POLLS} polls"
            self.ledger.fail_batch(batch, status=RowStatus.FAILED, detail=detail)
            bound.error("task_missing", task_id=batch.task_id)
            return
        # The task exists on the server whatever our connection does: keep asking until poll.timeout_seconds.
        elapsed = now - (batch.submitted_at or now)
        at = now + next_poll_delay(elapsed, self.poll)
        self.ledger.reschedule_poll(batch, at=at, task_state=None, error=str(exc))
        bound.warning("task_poll_failed", task_id=batch.task_id, error=str(exc), kind=str(kind))

    def _send_failed(self, work: Work, batch: BatchInfo, exc: ApiError, now: float, bound: Any) -> None:
        kind = classify(exc)
        error = str(exc)
        if kind is ErrorKind.TOKEN_REFUSED:
            # Not the batch's fault: it goes back untouched and every upload pauses until the token is accepted.
            self.ledger.requeue(batch, at=now, error=error, ambiguous=False, count_failure=False)
            if not self.token_refused:
                bound.error("token_refused", error=error, action="uploads paused; rows stay pending")
                self._pause(f"the API refused the token ({error}); renew it, it is checked every few minutes")
            self.token_refused = error
            self._next_token_check = now + TOKEN_RECHECK_SECONDS
            return
        if kind is ErrorKind.DEFECTIVE:
            self._refused(work, batch, exc, bound)
            return
        if isinstance(exc, Throttled):
            self._throttled(exc, bound)
        if self.breaker.failure(self.monotonic()):
            reason = f"{self.breaker.failures} failed requests in a row"
            bound.error("sending_paused", reason=reason, seconds=self.breaker.current_cooldown)
            self._pause(f"{reason}: sending again after {self.breaker.current_cooldown:.0f} s; last error: {error}")
        if timed_out(exc) and batch.failures + 1 >= SPLIT_AFTER_TIMEOUTS and len(work.lines) > 1:
            self.ledger.split_batch(batch, halves(work.lines), rejected={}, ambiguous=exc.ambiguous)
            bound.warning("batch_split", reason="timed out again", error=error, rows=len(work.lines))
            return
        decision = self.policy.decide(batch.failures + 1, exc, self.rand())
        if decision.retry:
            self.ledger.requeue(
                batch, at=now + decision.delay, error=error, ambiguous=exc.ambiguous, count_failure=True
            )
            bound.warning("batch_retry", error=error, kind=str(kind), delay=round(decision.delay, 3))
        else:
            detail = f"gave up after {batch.failures + 1} failed attempts: {error}"
            self.ledger.fail_batch(batch, status=RowStatus.FAILED, detail=detail)
            bound.error("batch_failed", error=error, kind=str(kind))

    def _throttled(self, exc: Throttled, bound: Any) -> None:
        """A 429 pauses every worker for the announced time, and repeated ones lower the pace for a while."""
        if self.pacer is None or self.governor is None:
            return
        mono = self.monotonic()
        wait = min(MAX_THROTTLE_PAUSE, exc.retry_after if exc.retry_after is not None else 1.0)
        self.pacer.pause_until(mono + wait)
        rate = self.governor.throttled(mono)
        if rate < self.pacer.rate:
            self.pacer.set_rate(rate)
        bound.warning("throttled", pause_seconds=wait, requests_per_second=round(self.pacer.rate, 2))

    def _refused(self, work: Work, batch: BatchInfo, exc: ApiError, bound: Any) -> None:
        """A 400: reject the items the API named, or cut the batch in halves until the defective ones stand alone."""
        detail = f"refused by Scantrust: {exc}"
        named = exc.item_errors if isinstance(exc, Rejected) else None
        # The API may have applied the items before the defective one (API.md): the resent ones are ambiguous.
        if named:
            rejected = {
                work.lines[i]: f"refused by Scantrust: {message}"
                for i, message in named.items()
                if 0 <= i < len(work.lines)
            }
            rest = tuple(line for line in work.lines if line not in rejected)
            self.ledger.split_batch(batch, [rest], rejected=rejected, ambiguous=True)
            bound.warning("batch_items_rejected", rejected=len(rejected), resent=len(rest))
        elif len(work.lines) > 1:
            self.ledger.split_batch(batch, halves(work.lines), rejected={}, ambiguous=True)
            bound.warning(
                "batch_split", reason="refused without naming the items", error=str(exc), rows=len(work.lines)
            )
        else:
            self.ledger.fail_batch(batch, status=RowStatus.REJECTED, detail=detail)
            bound.warning("batch_rejected", error=str(exc))
