"""Uploader: sends due batches through a pool of HTTP workers and records every outcome in the ledger."""

import random
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import structlog

from daemon.api import ApiError, ErrorKind, ScantrustClient, SyncResult, classify
from daemon.ledger import BatchInfo, Ledger
from daemon.normalize import Layout, scm_data
from daemon.pacing import PacerClosed
from daemon.retry import RetryPolicy
from daemon.states import RowStatus

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Sending:
    """A batch whose request is in a worker's hands."""

    batch: BatchInfo
    data_key: str
    file_name: str


class Uploader:
    """Runs up to `workers` requests at once; the ledger is written only from the caller's thread."""

    def __init__(
        self,
        ledger: Ledger,
        client: ScantrustClient,
        policy: RetryPolicy,
        *,
        workers: int,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.policy = policy
        self.workers = workers
        self.rand = rand
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload")
        self.inflight: dict[Future[SyncResult], Sending] = {}
        self.token_refused: str | None = None  # the API's words when it refused the token
        self._layouts: dict[int, tuple[Layout, bool, str, str]] = {}

    @property
    def busy(self) -> bool:
        """Whether any request is in flight."""
        return bool(self.inflight)

    def _file_context(self, file_id: int) -> tuple[Layout, bool, str, str]:
        if file_id not in self._layouts:
            f = self.ledger.file(file_id)
            self._layouts[file_id] = (
                Layout.from_record(f.layout),
                bool(f.layout.get("clear_empty")),
                f.data_key,
                f.name,
            )
        return self._layouts[file_id]

    def dispatch(self, now: float) -> int:
        """Send as many due batches as there are free workers; returns how many went out."""
        if self.token_refused:
            return 0
        free = self.workers - len(self.inflight)
        if free <= 0:
            return 0
        sent = 0
        for batch_id in self.ledger.due_batches(now, free):
            batch, rows = self.ledger.start_sending(batch_id)  # committed before the request exists
            layout, clear_empty, data_key, file_name = self._file_context(batch.file_id)
            items = [{data_key: key, **scm_data(cells, layout, clear_empty=clear_empty)} for _, key, cells in rows]
            future = self.pool.submit(self.client.upload_sync, data_key, items)
            self.inflight[future] = Sending(batch, data_key, file_name)
            sent += 1
        return sent

    def collect(self, timeout: float, now: Callable[[], float]) -> int:
        """Wait up to `timeout` for answers and record them; returns how many batches got one."""
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

    def _record(self, sending: Sending, future: Future[SyncResult], now: float) -> None:
        batch = sending.batch
        bound = log.bind(file=sending.file_name, batch=batch.seq, batch_id=batch.id, attempt=batch.attempts)
        try:
            result = future.result()
        except PacerClosed:
            # Shutting down before the request left: nothing was sent, so nothing counts against the batch.
            self.ledger.requeue(batch, at=now, error="not sent: shutting down", ambiguous=False, count_failure=False)
            return
        except ApiError as exc:
            self._failed(batch, exc, now, bound)
            return
        self.ledger.complete_sync(batch, sending.data_key, set(result.changed))
        bound.info("batch_uploaded", rows=batch.size, changed=len(result.changed))

    def _failed(
        self, batch: BatchInfo, exc: ApiError, now: float, bound: structlog.typing.FilteringBoundLogger
    ) -> None:
        kind = classify(exc)
        error = str(exc)
        if kind is ErrorKind.TOKEN_REFUSED:
            # Not the batch's fault: it goes back untouched and every upload stops.
            self.ledger.requeue(batch, at=now, error=error, ambiguous=False, count_failure=False)
            self.token_refused = error
            bound.error("token_refused", error=error)
            return
        if kind is ErrorKind.DEFECTIVE:
            detail = f"refused by Scantrust: {error}"
            self.ledger.fail_batch(batch, status=RowStatus.REJECTED, detail=detail)
            bound.warning("batch_rejected", error=error)
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
