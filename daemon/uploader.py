"""Uploader: sends due batches and polls async tasks through a pool of HTTP workers, and applies every decision.

The pieces it hands its workers (Work, the runner, the pause) are in daemon.work; `Pause` and `policy_from` are
imported from here by the service and the operator's views."""

import dataclasses
import math
import random
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import structlog
from pydantic import SecretStr

from daemon.api import ScantrustClient
from daemon.breaker import CircuitBreaker
from daemon.checks import START_RETRY, TOKEN_RECHECK_SECONDS, StartAndTokenChecks
from daemon.config import Settings
from daemon.decide import (
    Attempt,
    Decision,
    FailRows,
    Health,
    PauseForConfiguration,
    PauseForToken,
    Policy,
    PollAgain,
    RequestKind,
    Requeue,
    Split,
    SyncDone,
    TaskComplete,
    TaskCreated,
    decide,
)
from daemon.errors import ApiError, ProtocolError
from daemon.ledger import UPLOADS_PAUSED, BatchInfo, Ledger, StateConflict
from daemon.normalize import scm_data
from daemon.pacing import Pace
from daemon.retry import Backoff
from daemon.states import BatchState
from daemon.work import FileContext, Pause, Runner, ThreadRunner, Work, policy_from

log = structlog.get_logger(__name__)

UNRECORDED_RETRY = (0.5, 30.0)  # first and longest wait before answers the ledger could not take are recorded again


class Uploader(StartAndTokenChecks):
    """Runs up to `workers` requests at once; the ledger is written only from the caller's thread."""

    def __init__(
        self,
        ledger: Ledger,
        client: ScantrustClient,
        policy: Policy,
        *,
        workers: int,
        pace: Pace,
        breaker: CircuitBreaker,
        runner: Runner | None = None,
        token_source: Callable[[], SecretStr | None] | None = None,
        token_renewable: bool = True,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.policy = policy
        self.workers = workers
        self.pace = pace
        self.breaker = breaker
        self.runner: Runner = runner or ThreadRunner(workers)
        self.monotonic = monotonic
        self.rand = rand
        self.inflight: dict[Future[Any], Work] = {}
        self.pause: Pause | None = None
        self.token_source = token_source  # the token as configured now: a renewed one is picked up at a re-check
        self.token_renewable = token_renewable  # False when it came from the environment (needs a restart)
        self.paced_until: float | None = None  # when the pace's next slot is free, if a due upload waits for it
        self._next_token_check = 0.0
        self._files: dict[int, FileContext] = {}
        self._unrecorded: list[tuple[Future[Any], Work]] = []  # answers whose recording failed: tried again
        self._unrecorded_backoff = Backoff(*UNRECORDED_RETRY)
        self._unknown_states: set[str] = set()
        self.gave_up_rows = 0  # rows failed because the API kept failing beyond the retry budget
        self.start_refused: str | None = None  # the API refused the token at the start-up check: the service ends
        self.start_passed = True  # no start-up check asked for (check_at_start asks one)
        self.start_failures = 0  # start-up checks in a row that could not reach the API
        self.start_error: str | None = None  # why the last of them failed
        self._start_backoff = Backoff(*START_RETRY)
        self.observe: Callable[[RequestKind, Decision], None] | None = None  # told of every decision (/metrics)

    def held_until(self) -> float | None:
        """Monotonic time before which due uploads cannot start (pace, breaker); inf while paused."""
        if self.pause is not None:
            return math.inf
        times = [t for t in (self.paced_until, self.breaker.open_until) if t is not None]
        return max(times) if times else None

    @property
    def busy(self) -> bool:
        """Whether any request is in flight (or an answer waits to be recorded)."""
        return bool(self.inflight or self._unrecorded)

    def unrecorded_retry_at(self) -> float | None:
        """Monotonic time when kept answers are recorded again, if any are kept."""
        return self._unrecorded_backoff.next_at if self._unrecorded else None

    def reconfigure(self, settings: Settings) -> list[str]:
        """Take over what SIGHUP may change (rate, retry and poll policy, breaker); the names applied."""
        self.policy = policy_from(settings)
        rate = self.pace.reconfigure(settings.api.requests_per_second)
        self.breaker.threshold = settings.retry.breaker_failures
        self.breaker.cooldown = settings.retry.breaker_cooldown_seconds
        if self.pause is not None:
            # The token or the base URL may have been fixed with the configuration: ask again now.
            self._next_token_check = 0.0
            if self.pause.cause == "configuration":
                self.check_at_start()  # the base URL may be fixed: check it again before anything is sent
        log.info("pace_set", requests_per_second=round(rate, 2))
        return ["api.requests_per_second", "retry", "poll"]

    def _file(self, file_id: int) -> FileContext:
        if file_id not in self._files:
            f = self.ledger.file(file_id)
            self._files[file_id] = FileContext(f.name, f.data_key, f.layout.mapping(), f.layout.clear_empty)
        return self._files[file_id]

    # --- sending ---------------------------------------------------------------------------------------------

    def dispatch(self, now: float) -> int:
        """Start as many due uploads and task polls as there are free workers; returns how many started."""
        self.paced_until = None
        if self.pause is not None:
            return self._check_token(now) if self.pause.cause in ("token", "starting") else 0
        mono = self.monotonic()
        free = self.workers - len(self.inflight)
        allowed = self.breaker.allows(mono)
        if allowed is not None:
            free = min(free, allowed)
        busy = {w.batch.id for w in self.inflight.values() if w.batch is not None}
        started = 0
        uploads: list[FileContext] = []
        ids: list[int] = []
        # The pace gives one upload slot at a time (more while it makes up a hold of the loop, e.g. a planning
        # step), so as many due uploads as it has slots, and one more, are looked for first (the one more tells
        # that the next slot is wanted: `paced_until`), and task polls (not paced: another scope) take the other
        # free workers. Asked for together, oldest first, the queued uploads of a big file would fill every place
        # and starve the polls until all were sent.
        if free > 0:
            looked_for = min(free, self.pace.due_slots() + 1)
            for queued in self.ledger.due_batches(now, looked_for, exclude=busy, wanted=(BatchState.QUEUED,)):
                # Paced here, not in the worker: `sending` is committed only when the request can leave at once,
                # so a crash almost never catches a batch whose request had not gone out (it would be sent again).
                if not self.pace.try_acquire():
                    self.paced_until = self.pace.next_free()
                    continue
                uploads.append(self._file(queued.file_id))
                ids.append(queued.id)
        for due in self.ledger.due_batches(now, free - len(ids), exclude=busy, wanted=(BatchState.SUBMITTED,)):
            assert due.task_id is not None
            age = max(0.0, now - (due.submitted_at if due.submitted_at is not None else now))
            work = Work(
                RequestKind.TASK_POLL, due, self._file(due.file_id), trial=self.breaker.started(mono), task_age=age
            )
            self._submit(work, self.client.task, due.task_id)
            started += 1
        if not ids:
            return started
        with self.ledger.grouped():  # every `sending` of this pass in one commit, before any request exists
            marked = [self.ledger.start_sending(batch_id) for batch_id in ids]
        failed: Exception | None = None
        for (batch, rows), file in zip(marked, uploads, strict=True):
            trial = False
            try:
                work, call, args = self._request(batch, rows, file)
                trial = self.breaker.started(mono)
                self._submit(dataclasses.replace(work, trial=trial, sent_at=mono), self._send, call, *args)
                started += 1
            except Exception as exc:
                # `sending` is committed but nothing left: put it back at once, never leave it there.
                self.breaker.cancelled(trial)
                self.ledger.requeue(batch, at=now, error=f"not sent: {exc}", ambiguous=False, count_failure=False)
                failed = failed or exc
        if failed is not None:
            raise failed
        return started

    def _request(
        self, batch: BatchInfo, rows: list[tuple[int, str, list[str]]], file: FileContext
    ) -> tuple[Work, Callable[..., Any], tuple[Any, ...]]:
        """The upload call for a batch marked `sending`: its work record, the client method and its arguments."""
        keys = tuple(key for _, key, _ in rows)
        lines = tuple(line for line, _, _ in rows)
        if batch.kind == "async":
            data = scm_data(rows[0][2], file.layout, clear_empty=file.clear_empty)
            assert batch.reference is not None
            work = Work(RequestKind.ASYNC_SUBMIT, batch, file, keys, lines)
            return work, self.client.upload_async, (file.data_key, list(keys), data, batch.reference)
        items = [
            {file.data_key: key, **scm_data(cells, file.layout, clear_empty=file.clear_empty)} for _, key, cells in rows
        ]
        return Work(RequestKind.SYNC_UPLOAD, batch, file, keys, lines), self.client.upload_sync, (file.data_key, items)

    def _send(self, call: Callable[..., Any], *args: Any) -> Any:
        """In a worker: make the upload call, which waits (rarely, briefly) for the rolling window once the request
        is built, just before it leaves."""
        return call(*args, turn=self.pace.wait_turn)

    def _submit(self, work: Work, call: Callable[..., Any], *args: Any) -> None:
        self.inflight[self.runner.submit(call, *args)] = work

    def collect(self, timeout: float, now: Callable[[], float]) -> int:
        """Wait up to `timeout` for answers and record them; returns how many were recorded."""
        recorded = 0
        retry: list[tuple[Future[Any], Work]] = []
        if self._unrecorded and self.monotonic() >= self._unrecorded_backoff.next_at:
            retry, self._unrecorded = self._unrecorded, []
        for future, work in retry:
            recorded += self._record_safely(future, work, now())
        if retry and not self._unrecorded:
            self._unrecorded_backoff = Backoff(*UNRECORDED_RETRY)
        if not self.inflight:
            return recorded
        done = self.runner.wait(list(self.inflight), 0.0 if retry else timeout)
        answers = [(f, self.inflight.pop(f)) for f in sorted(done, key=lambda f: _order(self.inflight[f]))]
        if len(answers) == 1:
            return recorded + self._record_safely(*answers[0], now())
        # Answers that arrived together are recorded in one transaction: one commit instead of one per answer.
        # Nothing that depends on them leaves before the commit (dispatch comes in the next step). If any of them
        # cannot be recorded, none is: they are all kept and recorded one by one at the next step.
        try:
            with self.ledger.grouped():
                for future, work in answers:
                    self._record(work, future, now())
        except Exception as exc:
            self._kept(exc, answers)
            return recorded
        return recorded + len(answers)

    def _record_safely(self, future: Future[Any], work: Work, now: float) -> int:
        """Record an answer, all of it or nothing; if the ledger cannot take it now (disk full, locked), keep it and
        try again after a backoff."""
        try:
            with self.ledger.grouped():
                self._record(work, future, now)
        except StateConflict as exc:
            # Its batch is no longer where the answer found it: recording it again would change nothing true.
            log.error("answer_dropped", error=str(exc), kind=str(work.kind))
            return 0
        except Exception as exc:
            self._kept(exc, [(future, work)])
            return 0
        return 1

    def _kept(self, exc: Exception, answers: list[tuple[Future[Any], Work]]) -> None:
        """Answers the ledger could not take: kept, recorded one by one when the backoff ends."""
        self._unrecorded.extend(answers)
        wait = self._unrecorded_backoff.failed(self.monotonic(), f"{type(exc).__name__}: {exc}")
        log.error(
            "answer_not_recorded",
            error=f"{type(exc).__name__}: {exc}",
            answers=len(answers),
            retry_in=wait,
            action="tried again, one by one",
        )

    def drain(self, now: Callable[[], float], *, deadline: float = math.inf) -> None:
        """Wait for every request in flight (each is bounded by its timeouts) and record the answers."""
        while self.inflight and self.monotonic() < deadline:
            self.collect(1.0, now)
        if self._unrecorded:  # one last try; what the ledger still cannot take is sent again after the restart
            self._unrecorded_backoff.next_at = 0.0
            self.collect(0.0, now)

    def close(self) -> None:
        """Stop the workers (after drain)."""
        self.runner.shutdown()
        self.client.close()

    # --- answers ---------------------------------------------------------------------------------------------

    def _record(self, work: Work, future: Future[Any], now: float) -> None:
        try:
            outcome: object = future.result()
        except ApiError as exc:
            outcome = exc
        except Exception as exc:
            log.error("request_crashed", kind=str(work.kind), error=f"{type(exc).__name__}: {exc}")
            outcome = ProtocolError(f"the request failed unexpectedly ({type(exc).__name__}: {exc})")
        batch = work.batch
        attempt = Attempt(
            work.kind,
            lines=work.lines,
            failures=batch.failures if batch is not None else 0,
            task_id=batch.task_id if batch is not None else None,
            task_age=work.task_age,
        )
        decision = decide(attempt, outcome, self.policy, self.rand())
        if self.observe is not None:
            self.observe(work.kind, decision)
        self.apply(work, decision, now)

    def apply(self, work: Work, decision: Decision, now: float) -> None:
        """The one place where a decision changes the ledger, the breaker, the pace and the pause."""
        self._health(work, decision)
        bound = log.bind(kind=str(work.kind))
        if work.file is not None and work.batch is not None:
            bound = bound.bind(file=work.file.name, batch=work.batch.seq, batch_id=work.batch.id)
        if decision.throttled is not None:
            pause = self.pace.throttled(decision.throttled, work.sent_at)
            bound.warning("throttled", pause_seconds=pause, requests_per_second=round(self.pace.rate, 2))
        if work.kind in (RequestKind.TOKEN_CHECK, RequestKind.START_CHECK):
            self._checked(decision, now, bound)
            return
        batch, file = work.batch, work.file
        assert batch is not None
        assert file is not None
        ledger = self.ledger
        match decision:
            case SyncDone(changed=changed):
                ledger.complete_sync(batch, file.data_key, work.keys, changed)
                bound.info("batch_uploaded", rows=batch.size, changed=len(changed), attempt=batch.attempts)
            case TaskCreated(task_id=task_id):
                ledger.submit_task(batch, task_id=task_id, submitted_at=now, poll_at=now + self.policy.poll_interval)
                bound.info("task_created", task_id=task_id, rows=batch.size, reference=batch.reference)
            case TaskComplete(task_state=state, codes_affected=affected):
                ledger.complete_task(batch, file.data_key, task_state=state, codes_affected=affected)
                bound.info("task_complete", task_id=batch.task_id, codes_affected=affected, rows=batch.size)
            case PollAgain(delay=delay, task_state=state, error=error, unknown_state=unknown):
                if unknown and state is not None and state not in self._unknown_states:
                    self._unknown_states.add(state)
                    bound.warning("task_state_unknown", task_id=batch.task_id, state=state[:100])
                ledger.reschedule_poll(batch, at=now + delay, task_state=state, error=error, polled_at=now)
                if error is not None:
                    bound.warning("task_poll_failed", task_id=batch.task_id, error=error, retry_in=round(delay, 3))
            case Requeue(delay=delay, error=error, ambiguous=ambiguous, count_failure=count):
                ledger.requeue(batch, at=now + delay, error=error, ambiguous=ambiguous, count_failure=count)
                bound.warning("batch_retry", error=error, delay=round(delay, 3))
            case Split(parts=parts, rejected=rejected, ambiguous=ambiguous, reason=reason):
                ledger.split_batch(batch, parts, rejected=rejected, ambiguous=ambiguous)
                bound.warning("batch_split", reason=reason, rejected=len(rejected), rows=len(work.lines))
            case FailRows(status=status, detail=detail, task_state=state, retries_spent=spent):
                ledger.fail_batch(batch, status=status, detail=detail, task_state=state)
                self.gave_up_rows += batch.size if spent else 0
                bound.error("batch_given_up", status=str(status), detail=detail)
            case PauseForToken(reason=reason):
                self._paused(work, batch, Pause("token", reason), now, bound)
            case PauseForConfiguration(reason=reason):
                self._paused(work, batch, Pause("configuration", reason), now, bound)
            case _:
                raise AssertionError(f"no applier for {decision!r}")

    def _paused(self, work: Work, batch: BatchInfo, pause: Pause, now: float, bound: Any) -> None:
        """Not the batch's fault: it goes back untouched, and every upload pauses until the cause is fixed."""
        if work.kind is RequestKind.TASK_POLL:
            self.ledger.reschedule_poll(batch, at=now, task_state=None, error=None, polled_at=None)
        else:
            self.ledger.requeue(batch, at=now, error=pause.reason, ambiguous=False, count_failure=False)
        if self.pause is None:
            bound.error("token_refused" if pause.cause == "token" else "configuration_problem", error=pause.reason)
            self._set_pause(pause)
            self._next_token_check = now + TOKEN_RECHECK_SECONDS

    def _health(self, work: Work, decision: Decision) -> None:
        """Exactly one breaker record per answered request."""
        if decision.health is Health.SUCCESS:
            if self.breaker.success():
                log.info("sending_resumed", reason="a request was answered after the pause")
                if self.pause is None:
                    self.ledger.set_meta(UPLOADS_PAUSED, None)
            return
        if self.breaker.failure(self.monotonic(), trial=work.trial):
            seconds = self.breaker.current_cooldown
            reason = f"{self.breaker.failures} failed requests in a row: sending again after {seconds:.0f} s"
            log.error("sending_paused", reason=reason, seconds=seconds)
            if self.pause is None:
                self.ledger.set_meta(UPLOADS_PAUSED, reason)


def _order(work: Work) -> int:
    """Answers that arrive together are recorded in batch order, so a run is reproducible."""
    return work.batch.id if work.batch is not None else 0


__all__ = ["START_RETRY", "TOKEN_RECHECK_SECONDS", "Pause", "Uploader", "policy_from"]
