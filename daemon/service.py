"""The service loop: scan, take, plan, upload, report; one step at a time, every step resumable after a crash."""

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydantic import SecretStr

from daemon import intake
from daemon.api import ScantrustClient
from daemon.config import Settings
from daemon.ledger import Clock, FileInfo, Ledger, utcnow
from daemon.pacing import Pacer
from daemon.planner import plan
from daemon.reporter import choose_base, outcome_for, write_reports
from daemon.retry import RetryPolicy
from daemon.states import FileState, Outcome
from daemon.uploader import Uploader
from daemon.watcher import InboxScanner

log = structlog.get_logger(__name__)

# Requests are paced 3 % under the configured rate: the API counts arrivals in a rolling second, and the jitter
# between our clock and its arrival times otherwise lets an 11th request into a second at exactly 10/s.
PACE_HEADROOM = 0.97
SCAN_INTERVAL = 0.5  # seconds between inbox scans; a listing of one folder is cheap
IDLE_WAIT = 0.2  # longest pause of the loop when nothing is in flight


class TokenRefusedError(Exception):
    """The API refused the token (401/403): uploads stopped, rows left pending."""


class FolderError(Exception):
    """A configured folder is missing or unusable."""


@dataclass(frozen=True)
class StepResult:
    """What one step of the loop did, for tests and for the idle wait."""

    taken: int = 0
    planned: int = 0  # rows put into batches or skipped
    sent: int = 0
    answered: int = 0
    finished: int = 0

    @property
    def busy(self) -> bool:
        """Whether the step did anything at all."""
        return any((self.taken, self.planned, self.sent, self.answered, self.finished))


def unique_path(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/stem-2.ext`, `-3`... : the first that does not exist, so nothing is overwritten."""
    candidate = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    n = 2
    while candidate.exists():
        candidate = folder / f"{stem}-{n}{suffix}"
        n += 1
    return candidate


def prepare_folders(settings: Settings, *, create_inbox: bool = False) -> None:
    """Check the inbox and create outbox, archive, failed and the ledger's folder when missing."""
    paths = settings.paths
    if create_inbox:
        paths.inbox.mkdir(parents=True, exist_ok=True)
    if not paths.inbox.is_dir():
        raise FolderError(f"inbox {paths.inbox} does not exist; create it or set paths.inbox")
    for what, folder in (
        ("outbox", paths.outbox),
        ("archive", paths.archive),
        ("failed", paths.failed),
        ("ledger", paths.ledger.parent),
    ):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FolderError(f"{what} folder {folder} cannot be created ({exc.strerror}); fix paths.{what}") from exc


class Service:
    """The daemon: owns the ledger, the scanner and the uploader, and steps them forward."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.monotonic = monotonic
        self.ledger = Ledger(settings.paths.ledger, clock=clock)
        api = settings.api
        client = ScantrustClient(
            api.base_url,
            SecretStr(api.require_token()),
            connect_timeout=api.connect_timeout,
            read_timeout=api.read_timeout,
            pacer=Pacer(api.requests_per_second * PACE_HEADROOM),
            pool_size=api.max_in_flight,
        )
        retry = settings.retry
        self.uploader = Uploader(
            self.ledger,
            client,
            RetryPolicy(retry.max_attempts, retry.base_delay_seconds, retry.max_delay_seconds),
            workers=api.max_in_flight,
        )
        self.scanner = InboxScanner(
            settings.paths.inbox, settle_seconds=settings.watch.settle_seconds, ignore=settings.watch.ignore
        )
        self.stop_event = threading.Event()
        self._next_scan = 0.0
        self._to_plan: set[int] = set()  # active files that may have rows to plan
        self._blocked: set[int] = set()  # files with rows waiting on an earlier file's open row for the same code

    def epoch(self) -> float:
        """The injected clock as epoch seconds (the unit of batches' next_attempt_at)."""
        return self.clock().timestamp()

    def recover(self) -> None:
        """Make the ledger consistent after a crash: re-take half-read files, re-queue batches caught sending."""
        restarted = intake.discard_partial(self.ledger)
        counts = self.ledger.recover()
        self._to_plan = {f.id for f in self.ledger.files([FileState.ACTIVE])}
        log.info("ledger_recovered", files_retaken=restarted, **counts, active_files=len(self._to_plan))

    # --- one step --------------------------------------------------------------------------------------------

    def step(self, *, wait: float = 0.0) -> StepResult:
        """One pass: scan when due, take settled files, plan, send due batches, record answers, finish files."""
        now = self.monotonic()
        taken = 0
        if now >= self._next_scan and not self.stop_event.is_set():
            self._next_scan = now + SCAN_INTERVAL
            taken = self._take_settled(now)
        planned = self._plan()
        sent = 0 if self.stop_event.is_set() else self.uploader.dispatch(self.epoch())
        answered = self.uploader.collect(wait if self.uploader.busy else 0.0, self.epoch)
        finished = self._finish_files()
        if self._blocked and (answered or planned or finished):
            # Progress elsewhere may have closed the earlier row that a blocked row was waiting on.
            self._to_plan |= self._blocked
            self._blocked.clear()
        return StepResult(taken, planned, sent, answered, finished)

    def _take_settled(self, now: float) -> int:
        claimed = {f.path for f in self.ledger.files([FileState.RECEIVED, FileState.ACTIVE, FileState.REPORTING])}
        taken = 0
        for path in self.scanner.scan(now, claimed):
            self.scanner.taken(path)
            try:
                file_id = intake.take(path, self.ledger, self.settings)
            except FileNotFoundError:
                log.info("file_vanished", file=path.name)
                continue
            if file_id is not None:
                self._to_plan.add(file_id)
                taken += 1
        return taken

    def _plan(self) -> int:
        planned = 0
        for file_id in sorted(self._to_plan):
            self._to_plan.discard(file_id)
            f = self.ledger.file(file_id)
            if f.state is not FileState.ACTIVE:
                continue
            rows = self.ledger.plannable_rows(file_id, f.data_key)
            if rows:
                p = plan(rows, sync_batch_size=self.settings.upload.sync_batch_size)
                if p.skipped:
                    self.ledger.skip_rows(file_id, p.skipped)
                self.ledger.add_batches(file_id, "sync", [b.lines for b in p.batches])
                planned += len(rows)
                log.info(
                    "file_planned",
                    file=f.name,
                    file_id=file_id,
                    batches=len(p.batches),
                    skipped=len(p.skipped),
                )
            if self.ledger.has_pending_rows(file_id):
                self._blocked.add(file_id)
        return planned

    def _finish_files(self) -> int:
        finished = 0
        for f in self.ledger.files([FileState.ACTIVE, FileState.REPORTING]):
            if f.state is FileState.ACTIVE:
                if f.id in self._to_plan or f.id in self._blocked or self.ledger.has_open_rows(f.id):
                    continue
                self.ledger.transition_file(
                    f.id, FileState.REPORTING, outcome=outcome_for(self.ledger.row_counts(f.id))
                )
            self._report_and_move(self.ledger.file(f.id))
            finished += 1
        return finished

    def _report_and_move(self, f: FileInfo) -> None:
        paths = self.settings.paths
        bound = log.bind(file=f.name, file_id=f.id)
        if f.report_base is None:
            self.ledger.set_file(f.id, report_base=choose_base(paths.outbox, Path(f.name).stem))
        folder = paths.failed if f.outcome is Outcome.FAILED else paths.archive
        if f.destination is None:
            self.ledger.set_file(f.id, destination=str(unique_path(folder, f.name)))
        f = self.ledger.file(f.id)
        assert f.destination is not None
        names = write_reports(self.ledger, f, paths.outbox, self.ledger.now())
        source, target = Path(f.path), Path(f.destination)
        if source.exists() and not target.exists():
            shutil.move(source, target)
        elif not target.exists():
            bound.warning("input_missing", path=str(source), note="the input vanished before it could be moved")
        self.ledger.transition_file(f.id, FileState.DONE)
        counts = {str(k): v for k, v in self.ledger.row_counts(f.id).items()}
        bound.info("file_done", status=str(f.outcome), summary=names.summary, moved_to=str(target), **counts)

    # --- loops -----------------------------------------------------------------------------------------------

    def idle(self) -> bool:
        """Nothing in flight, nothing open in the ledger, nothing waiting to settle."""
        open_files = self.ledger.files([FileState.RECEIVED, FileState.ACTIVE, FileState.REPORTING])
        return not open_files and not self.uploader.busy and self.scanner.waiting == 0

    def run(self, *, once: bool = False) -> None:
        """Step until stopped (or, with once, until the inbox and the ledger hold no unfinished work)."""
        self.recover()
        try:
            while not self.stop_event.is_set():
                result = self.step(wait=IDLE_WAIT)
                if self.uploader.token_refused:
                    raise TokenRefusedError(self.uploader.token_refused)
                if once and not result.busy and self.idle():
                    break
                if not result.busy and not self.uploader.busy:
                    self.stop_event.wait(self._idle_wait())
            log.info("stopping", in_flight=len(self.uploader.inflight))
            self.uploader.drain(self.epoch)
            self._finish_files()
        finally:
            self.uploader.close()
            self.ledger.close()

    def _idle_wait(self) -> float:
        due = self.ledger.next_due()
        until_due = max(0.0, due - self.epoch()) if due is not None else IDLE_WAIT
        return min(IDLE_WAIT, until_due, max(0.0, self._next_scan - self.monotonic()))

    def stop(self) -> None:
        """Ask the loop to stop after the step in progress (safe to call from a signal handler)."""
        self.stop_event.set()
