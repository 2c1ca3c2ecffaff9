"""The service loop: scan, take, plan, upload, report; one step at a time, every step resumable after a crash."""

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydantic import SecretStr

from daemon import intake
from daemon.api import ScantrustClient
from daemon.config import ConfigError, Settings
from daemon.folders import deliver, refuse_network_ledger
from daemon.ledger import Clock, FileInfo, Ledger, utcnow
from daemon.mounts import MOUNTINFO
from daemon.notify import Notifier
from daemon.pacing import Pacer
from daemon.planner import plan
from daemon.reload import adopt, changes
from daemon.reporter import outcome_for
from daemon.retry import RetryPolicy
from daemon.states import FileState
from daemon.uploader import Uploader, send_window
from daemon.watcher import InboxEvents, InboxScanner

log = structlog.get_logger(__name__)

# Requests are paced 3 % under the configured rate: the API counts arrivals in a rolling second, and the jitter
# between our clock and its arrival times otherwise lets an 11th request into a second at exactly 10/s.
PACE_HEADROOM = 0.97
# The inbox is scanned every watch.rescan_seconds, when a watcher event wakes the loop (at most this often, so
# a copy that fires thousands of write events does not turn into a busy loop), and when a file is due to settle.
EVENT_SCAN_GAP = 0.1
IDLE_WAIT = 0.2  # longest pause of the loop when nothing is in flight
UNREADABLE_RETRY = 60.0  # seconds before a file that could not be opened (permissions) is tried again


class TokenRefusedError(Exception):
    """The API refused the token (401/403): uploads stopped, rows left pending."""


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


class Service:
    """The daemon: owns the ledger, the scanner and the uploader, and steps them forward."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        notifier: Notifier | None = None,
        reload_settings: Callable[[], Settings] | None = None,
        mountinfo: Path = MOUNTINFO,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.monotonic = monotonic
        refuse_network_ledger(settings.paths.ledger, mountinfo)
        self.ledger = Ledger(settings.paths.ledger, clock=clock)
        api = settings.api
        self.pacer: Pacer | None = Pacer(api.requests_per_second * PACE_HEADROOM)  # SIGHUP may change its rate
        client = ScantrustClient(
            api.base_url,
            SecretStr(api.require_token()),
            connect_timeout=api.connect_timeout,
            read_timeout=api.read_timeout,
            pool_size=api.max_in_flight,
        )
        retry = settings.retry
        self.uploader = Uploader(
            self.ledger,
            client,
            RetryPolicy(retry.max_attempts, retry.base_delay_seconds, retry.max_delay_seconds),
            settings.poll,
            workers=api.max_in_flight,
            pacer=self.pacer,
            breaker_failures=retry.breaker_failures,
            breaker_cooldown=retry.breaker_cooldown_seconds,
            token_source=self._current_token,
            monotonic=monotonic,
        )
        self.scanner = InboxScanner(
            settings.paths.inbox, settle_seconds=settings.watch.settle_seconds, ignore=settings.watch.ignore
        )
        self.stop_event = threading.Event()
        # Set by watcher events (and by a file that must be looked at again); the idle loop waits on it. Signal
        # handlers never touch it: Event.set() from a handler can deadlock on the lock the main thread holds.
        self.wake = threading.Event()
        watch = settings.watch
        self.events = InboxEvents(settings.paths.inbox, self.wake, polling=watch.polling, ignore=watch.ignore)
        self.notifier = notifier or Notifier(None)
        self.reload_settings = reload_settings
        self.reload_requested = False  # set by SIGHUP's handler; the loop re-reads the configuration
        self._next_scan = 0.0
        self._last_scan = -math.inf
        self._next_status = 0.0
        self._to_plan: set[int] = set()  # active files that may have rows to plan
        self._blocked: set[int] = set()  # files with rows waiting on an earlier file's open row for the same code
        self._active: set[int] = set()  # active files this process knows; others were reopened by `retry`
        self._unreadable: dict[str, float] = {}  # inbox paths that could not be opened, and when to try again

    def _current_token(self) -> SecretStr | None:
        """The token as the configuration gives it now (the credential file may have been renewed)."""
        if self.reload_settings is None:
            return self.settings.api.token
        try:
            return self.reload_settings().api.token
        except (ConfigError, OSError, ValueError) as exc:
            log.error("token_reread_failed", error=str(exc))
            return None

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
        if self._scan_due(now) and not self.stop_event.is_set():
            self.wake.clear()
            self._last_scan = now
            taken = self._take_settled(now)
            settling = self.scanner.next_check()
            self._next_scan = min(now + self.settings.watch.rescan_seconds, math.inf if settling is None else settling)
        planned = self._plan()
        sent = 0 if self.stop_event.is_set() else self.uploader.dispatch(self.epoch())
        timeout = wait if self.uploader.busy else 0.0
        if self.uploader.paced_until is not None:  # answers may wait; the next paced slot may not
            timeout = min(timeout, max(0.0, self.uploader.paced_until - self.monotonic()))
        answered = self.uploader.collect(timeout, self.epoch)
        finished = self._finish_files()
        if self._blocked and (answered or planned or finished):
            # Progress elsewhere may have closed the earlier row that a blocked row was waiting on.
            self._to_plan |= self._blocked
            self._blocked.clear()
        return StepResult(taken, planned, sent, answered, finished)

    def _take_settled(self, now: float) -> int:
        claimed = {f.path for f in self.ledger.files([FileState.RECEIVED, FileState.ACTIVE, FileState.REPORTING])}
        taken = 0
        self._unreadable = {p: at for p, at in self._unreadable.items() if at > now}
        for path in self.scanner.scan(now, claimed):
            if str(path) in self._unreadable:
                continue
            self.scanner.taken(path)
            try:
                file_id = intake.take(path, self.ledger, self.settings)
            except FileNotFoundError:
                log.info("file_vanished", file=path.name)
                continue
            except OSError as exc:
                # E.g. no read permission yet: not the file's content, so no report; looked at again later.
                self._unreadable[str(path)] = now + UNREADABLE_RETRY
                log.warning("file_not_readable", file=path.name, error=str(exc), retry_in=UNREADABLE_RETRY)
                continue
            self._unreadable.pop(str(path), None)
            if file_id is not None:
                self._to_plan.add(file_id)
                taken += 1
            else:
                self.wake.set()  # it changed while being read: look again soon, so it settles anew
        return taken

    def _scan_due(self, now: float) -> bool:
        return now >= self._next_scan or (self.wake.is_set() and now >= self._last_scan + EVENT_SCAN_GAP)

    def _plan(self) -> int:
        planned = 0
        for file_id in sorted(self._to_plan):
            self._to_plan.discard(file_id)
            f = self.ledger.file(file_id)
            if f.state is not FileState.ACTIVE:
                continue
            skipped = self.ledger.skip_uploaded(file_id, f.data_key)
            groups = self.ledger.plannable_groups(file_id)
            if groups:
                upload = self.settings.upload
                p = plan(
                    groups,
                    mode=f.mode,  # as configured when the file was taken
                    sync_batch_size=upload.sync_batch_size,
                    async_batch_size=upload.async_batch_size,
                )
                self.ledger.add_batches(file_id, [(b.kind, b.lines, b.data_hash) for b in p.batches])
                log.info(
                    "file_planned",
                    file=f.name,
                    file_id=file_id,
                    groups=p.groups,
                    sync_calls=p.sync_calls,
                    async_jobs=p.async_jobs,
                    sync_only_calls=p.sync_only_calls,
                    skipped=skipped,
                )
            planned += skipped + sum(len(lines) for lines in groups.values())
            if self.ledger.has_pending_rows(file_id):
                self._blocked.add(file_id)
        return planned

    def _finish_files(self) -> int:
        finished = 0
        for f in self.ledger.files([FileState.ACTIVE, FileState.REPORTING]):
            if f.state is FileState.ACTIVE:
                if f.id not in self._active:
                    self._active.add(f.id)
                    self._to_plan.add(f.id)
                    continue
                if f.id in self._to_plan or f.id in self._blocked or self.ledger.has_open_rows(f.id):
                    continue
                self.ledger.transition_file(
                    f.id, FileState.REPORTING, outcome=outcome_for(self.ledger.row_counts(f.id))
                )
            self._report_and_move(self.ledger.file(f.id))
            finished += 1
        return finished

    def _report_and_move(self, f: FileInfo) -> None:
        names, target = deliver(self.ledger, f, self.settings.paths)
        self.ledger.transition_file(f.id, FileState.DONE)
        self._active.discard(f.id)
        counts = {str(k): v for k, v in self.ledger.row_counts(f.id).items()}
        log.info(
            "file_done",
            file=f.name,
            file_id=f.id,
            status=str(f.outcome),
            summary=names.summary,
            moved_to=str(target),
            **counts,
        )

    # --- loops -----------------------------------------------------------------------------------------------

    def idle(self) -> bool:
        """Nothing in flight, nothing open in the ledger, nothing waiting to settle."""
        open_files = self.ledger.files([FileState.RECEIVED, FileState.ACTIVE, FileState.REPORTING])
        return not open_files and not self.uploader.busy and self.scanner.waiting == 0

    def run(self, *, once: bool = False) -> None:
        """Step until stopped (or, with once, until the inbox and the ledger hold no unfinished work)."""
        self.recover()
        try:
            if not once:
                self.events.check()  # starts the observer
            self.notifier.ready(f"ready: watching {self.settings.paths.inbox}")
            while not self.stop_event.is_set():
                if self.reload_requested:
                    self.reload()
                result = self.step(wait=IDLE_WAIT)
                if self.uploader.token_refused and once:
                    raise TokenRefusedError(self.uploader.token_refused)  # the service waits instead; --once cannot
                self.notifier.alive()  # only a loop that turns pings the watchdog
                self._report_status()
                if once and not result.busy and self.idle():
                    break
                if not once:
                    self.events.check()
                if not result.busy and not self.uploader.busy:
                    self._idle()
            in_flight = len(self.uploader.inflight)
            self.notifier.stopping(f"stopping: waiting for {in_flight} request(s) in flight")
            log.info("stopping", in_flight=in_flight)
            self.uploader.drain(self.epoch)
            self._finish_files()
        finally:
            self.events.stop()
            self.uploader.close()
            self.ledger.close()

    def _idle(self) -> None:
        timeout = self._idle_wait()
        if self.wake.is_set():
            time.sleep(timeout)  # an event came too soon after the last scan: wait out the gap, do not spin
        else:
            self.wake.wait(timeout)

    def _idle_wait(self) -> float:
        due = self.ledger.next_due()
        until_due = max(0.0, due - self.epoch()) if due is not None else IDLE_WAIT
        held = self.uploader.held_until()  # due batches that cannot go yet must not make the loop spin
        if held is not None:
            until_due = max(until_due, held - self.monotonic())
        next_scan = min(self._next_scan, self._last_scan + EVENT_SCAN_GAP if self.wake.is_set() else math.inf)
        return min(IDLE_WAIT, until_due, max(0.0, next_scan - self.monotonic()))

    def _report_status(self) -> None:
        now = self.monotonic()
        if not self.notifier.enabled or now < self._next_status:
            return
        self._next_status = now + 1.0
        files = len(self.ledger.files([FileState.RECEIVED, FileState.ACTIVE, FileState.REPORTING]))
        if files or self.uploader.busy:
            text = f"working: {files} file(s) in progress, {len(self.uploader.inflight)} request(s) in flight"
        else:
            text = f"idle: watching {self.settings.paths.inbox}"
        if self.scanner.waiting:
            text += f", {self.scanner.waiting} file(s) settling"
        if self.uploader.token_refused:
            text = (
                "uploads paused: the API refused the token; renew it (checked every few minutes, and on SIGHUP). "
                + text
            )
        elif self.uploader.breaker.is_open:
            text = "uploads paused for a while after repeated API failures. " + text
        self.notifier.status(text)

    def reload(self) -> None:
        """Re-read the configuration (SIGHUP): take over what can change safely, log what needs a restart."""
        self.reload_requested = False
        if self.reload_settings is None:
            return
        self.notifier.reloading()
        try:
            new = self.reload_settings()
        except (ConfigError, OSError, ValueError) as exc:  # a bad edit must not stop the service
            log.error("config_reload_failed", error=str(exc), note="the previous configuration stays in force")
            self.notifier.ready("running with the previous configuration: reload failed")
            return
        diff = changes(self.settings, new)
        self.settings = adopt(self.settings, new)
        watch, retry = self.settings.watch, self.settings.retry
        self.scanner.settle_seconds, self.scanner.ignore = watch.settle_seconds, list(watch.ignore)
        self.events.set_ignore(watch.ignore)
        if watch.polling != self.events.polling:
            self.events.stop()
            self.events.polling = watch.polling  # check() below starts the other kind
        self.uploader.policy = RetryPolicy(retry.max_attempts, retry.base_delay_seconds, retry.max_delay_seconds)
        if self.pacer is not None:
            self.pacer.set_rate(self.settings.api.requests_per_second * PACE_HEADROOM)
            if self.uploader.governor is not None:
                self.uploader.governor.reconfigure(self.pacer.rate)
            self.uploader.window = send_window(self.pacer.rate)
        self.uploader.recheck_token_now()  # the token may have been renewed along with the configuration
        self._next_scan = 0.0  # new ignore patterns or settle time: look at the inbox again now
        log.info("config_reloaded", applied=list(diff.live))
        if diff.need_restart:
            log.warning("config_change_needs_restart", keys=list(diff.need_restart))
        self.notifier.ready(f"ready: watching {self.settings.paths.inbox}")

    def stop(self) -> None:
        """Ask the loop to stop after the step in progress (safe to call from a signal handler)."""
        self.stop_event.set()
