"""The service loop: scan, take, plan, upload, report; one step at a time, every step resumable after a crash."""

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import SecretStr

from daemon import intake
from daemon.alerts import Alerts
from daemon.api import ScantrustClient
from daemon.breaker import CircuitBreaker
from daemon.clocktext import clock_time
from daemon.config import ConfigError, Settings
from daemon.dashboard import Dashboard
from daemon.flow import DELIVERY_POLL, FileFlow
from daemon.folders import refuse_network_ledger, remove_leftover_temps
from daemon.lease import Instance, Leadership
from daemon.ledger import Clock, Ledger, utcnow
from daemon.metrics import Telemetry
from daemon.mounts import MOUNTINFO
from daemon.notify import Notifier
from daemon.pacing import Pace
from daemon.progress import ProgressTracker
from daemon.reload import adopt, changes
from daemon.retention import RetentionSweeper
from daemon.retry import Backoff
from daemon.states import OPEN_FILE_STATES
from daemon.status import systemd_status
from daemon.steps import Offload, ThreadOffload
from daemon.uploader import Uploader, policy_from
from daemon.watcher import EMPTY_GRACE_SECONDS, InboxEvents, InboxScanner

SERVICE_UMASK = 0o027
log = structlog.get_logger(__name__)

IDLE_WAIT = 0.2  # longest pause of the loop when nothing is in flight
SLOW_PART = 0.25  # seconds a part of the step may hold the loop before it is logged (step_part_slow)
WORK_WAIT = 0.01  # pause of a loop whose file work waits for a read on the ledger's own thread
STEP_RETRY = (1.0, 60.0)  # first and longest wait before a part of the loop runs again after it failed
ONCE_START_ATTEMPTS = 3  # run --once ends (exit 1) when the start-up check could not reach the API this often
ONCE_DELIVERY_ATTEMPTS = 3  # run --once gives up delivering a file's reports after this many failures (exit 1)
PROGRESS_EVERY = 5.0  # seconds between progress samples (a count of each active file's open rows)
STOP_DEADLINE = 120.0  # seconds a graceful stop waits for requests in flight (each is bounded by its timeouts)


class TokenRefusedError(Exception):
    """The API refused the token (401/403): uploads stopped, rows left pending."""


class ApiUnreachableError(Exception):
    """`run --once`: the start-up check could not reach the API; no file was taken."""


class ConfigurationPausedError(Exception):
    """The API said the upload endpoint does not exist (404/405): api.base_url is wrong; rows left pending."""


class LeaseHeldError(Exception):
    """`run --once` found another instance leading on the same ledger: it does not wait for it."""


class ProcessClock:
    """Epoch seconds that advance with the monotonic clock, so that a wall-clock jump inside a process changes
    no wait, timeout or schedule; anchored to the wall clock when the process starts."""

    def __init__(self, wall: Clock, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._origin = wall().timestamp() - monotonic()

    def __call__(self) -> float:
        return float(self._origin + self._monotonic())


class NullEvents:
    """No watcher (the simulation, `run --once`): the periodic scan alone finds files."""

    polling = False

    def check(self) -> None:
        """Nothing to supervise."""

    def stop(self) -> None:
        """Nothing to stop."""

    def set_ignore(self, ignore: object) -> None:
        """Nothing to configure."""


@dataclass(frozen=True)
class StepResult:
    """What one step of the loop did, for tests and for the idle wait."""

    taken: int = 0  # files recorded whole (read and their repeats resolved)
    planned: int = 0  # rows of planning work: looked up, put into batches or skipped
    sent: int = 0
    answered: int = 0
    finished: int = 0
    claimed: int = 0  # files claimed from the inbox (read from this step on)
    read: int = 0  # rows of reading work: hashed, parsed, recorded

    @property
    def busy(self) -> bool:
        """Whether the step did anything at all."""
        return any((self.taken, self.planned, self.sent, self.answered, self.finished, self.claimed, self.read))


class Service:
    """The daemon: owns the ledger, the scanner and the uploader, and steps them forward.

    Built from its parts (`from_settings()` makes the production ones), so that a simulation can run the real
    loop with a fake clock, an in-process API and a seeded schedule of faults.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        ledger: Ledger,
        uploader: Uploader,
        scanner: InboxScanner,
        events: InboxEvents | NullEvents | None = None,
        clock: Clock = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        idle_wait: Callable[[float], None] | None = None,  # called with the seconds until there is work
        notifier: Notifier | None = None,
        reload_settings: Callable[[], Settings] | None = None,
        wake: threading.Event | None = None,
        offload: Offload | None = None,
        instance: Instance | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.monotonic = monotonic
        self.epoch_clock = ProcessClock(clock, monotonic)
        self.ledger = ledger
        self.uploader = uploader
        self.scanner = scanner
        self.stop_event = threading.Event()
        # Set by watcher events (and by a file that must be looked at again); the idle loop waits on it. Signal
        # handlers never touch it: Event.set() from a handler can deadlock on the lock the main thread holds.
        self.wake = wake or threading.Event()
        self.events: InboxEvents | NullEvents = events or NullEvents()
        self.idle_wait = idle_wait or self._wait_for_wake
        self.notifier = notifier or Notifier(None)
        self.reload_settings = reload_settings
        self.reload_requested = False  # set by SIGHUP's handler; the loop re-reads the configuration
        self._next_status = 0.0
        self._next_progress = 0.0
        self.dashboard = Dashboard(ledger, settings.paths.outbox, clock=clock)  # outbox/index.html
        # Long ledger reads of the file work (a file's repeats, its plannable groups, its reports, the progress
        # counts) run on threads of their own; the simulation passes Inline() to keep its runs deterministic.
        self.offload: Offload = offload or ThreadOffload()
        self.progress = ProgressTracker(ledger, self.offload)  # file_progress events and the per-file STATUS= text
        self.flow = FileFlow(
            settings,
            ledger=ledger,
            scanner=scanner,
            wake=self.wake,
            stopping=self.stop_event,
            monotonic=monotonic,
            offload=self.offload,
        )
        self._parts: dict[str, Backoff] = {}  # parts of the loop that failed, and when they run again
        # /metrics and /healthz when [metrics] listen is set (it counts the uploader's requests and decisions);
        # [retention] once a day, in a thread of its own.
        self.telemetry = Telemetry(settings.metrics, ledger=ledger, uploader=uploader, clock=clock, monotonic=monotonic)
        self.retention = RetentionSweeper(settings, ledger=ledger, clock=clock, monotonic=monotonic)
        self.alerts = Alerts(settings.notify, ledger, settings.paths.outbox, epoch=self.epoch, monotonic=monotonic)
        self.flow.on_done = self.alerts.file_done
        # One instance at a time does the work of a ledger that several share (daemon.lease).
        self.leadership = Leadership(
            ledger,
            lease_seconds=settings.ha.lease_seconds,
            renew_seconds=settings.ha.renew_seconds,
            monotonic=monotonic,
            me=instance or Instance.this(self.epoch(), settings.ha.host),
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        once: bool = False,
        notifier: Notifier | None = None,
        reload_settings: Callable[[], Settings] | None = None,
        mountinfo: Path = MOUNTINFO,
        token_renewable: bool = True,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> "Service":
        """The production service: SQLite ledger, HTTP client, worker threads, inotify or polling watcher."""
        os.umask(SERVICE_UMASK)  # ledger, reports, archived copies: the service's group may read, others nothing
        refuse_network_ledger(settings.paths.ledger, mountinfo)
        ledger = Ledger(settings.paths.ledger_target())
        api, retry = settings.api, settings.retry
        client = ScantrustClient(
            api.base_url,
            SecretStr(api.require_token()),
            connect_timeout=api.connect_timeout,
            read_timeout=api.read_timeout,
            request_deadline=api.request_deadline,
            pool_size=api.max_in_flight,
        )
        service: Service

        def token_source() -> SecretStr | None:
            return service._current_token()

        uploader = Uploader(
            ledger,
            client,
            policy_from(settings),
            workers=api.max_in_flight,
            pace=Pace(api.requests_per_second, clock=monotonic),
            # run --once must end within its retry budget: no cool-downs on top of it.
            breaker=CircuitBreaker(
                threshold=retry.breaker_failures if not once else 2**31,
                cooldown=retry.breaker_cooldown_seconds,
            ),
            token_source=token_source,
            token_renewable=token_renewable,
            monotonic=monotonic,
        )
        watch = settings.watch
        scanner = InboxScanner(
            settings.paths.inbox,
            settle_seconds=watch.settle_seconds,
            ignore=watch.ignore,
            empty_grace=0.0 if once else EMPTY_GRACE_SECONDS,
        )
        wake = threading.Event()
        events = None if once else InboxEvents(settings.paths.inbox, wake, polling=watch.polling, ignore=watch.ignore)
        service = cls(
            settings,
            ledger=ledger,
            uploader=uploader,
            scanner=scanner,
            events=events,
            notifier=notifier,
            reload_settings=reload_settings,
            wake=wake,
            monotonic=monotonic,
        )
        return service

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
        """Epoch seconds on the process clock (the unit of batches' next_attempt_at); immune to wall-clock jumps."""
        return self.epoch_clock()

    def longest_wait(self) -> float:
        """The longest wait any schedule in the ledger can legitimately hold (for clamping after a clock jump)."""
        retry, poll = self.settings.retry, self.settings.poll
        return max(retry.max_delay_seconds, retry.max_server_wait_seconds, poll.max_interval_seconds, 60.0)

    def recover(self) -> None:
        """Make the ledger consistent after a crash: re-read claimed files, re-queue batches caught sending."""
        now = self.epoch()
        counts = self.ledger.recover(now, longest_wait=self.longest_wait())
        temps = remove_leftover_temps(self.settings.paths.outbox)
        resumed = intake.resume_claims(self.ledger)
        inbox = self.settings.paths.inbox
        try:
            orphans = intake.return_orphans(inbox, self.ledger)
        except OSError as exc:
            orphans = 0
            log.error("processing_folder_unreadable", inbox=str(inbox), error=str(exc))
        for file_id, claimed in resumed:
            self.flow.read(file_id, claimed)
        active = self.flow.resume()
        log.info(
            "ledger_recovered",
            files_reread=len(resumed),
            orphans_returned=orphans,
            temp_reports_removed=temps,
            **counts,
            active_files=active,
        )

    # --- one step --------------------------------------------------------------------------------------------

    def step(self, *, wait: float = 0.0) -> StepResult:
        """One pass: scan when due, take settled files, plan, send due batches, record answers, finish files.

        Each part runs inside its own error boundary: a part that fails (a full disk under the ledger, a folder
        gone) is logged, shown in `status`, and tried again after a backoff while the other parts go on.
        """
        self.leadership.tick()  # renews the lease when due; raises LeaseLostError when another instance leads
        now = self.monotonic()
        # Nothing is taken, sent or delivered unless the lease is certainly still ours (a renewal that failed on a
        # database away for a while): answers are still recorded.
        leads = self.leadership.safe()
        # No file is taken before the start-up check has passed (they wait, safe, in the inbox).
        taking = self.uploader.start_passed and leads
        claimed = self._guarded("take", self.flow.take_if_due, now, default=0) if taking else 0
        # Reading and planning go a few thousand rows per step, so that answers are recorded and requests leave
        # meanwhile however big the file (daemon.steps).
        read = self._guarded("read", self.flow.read_some, default=0)
        taken = self.flow.take_recorded()
        planned = self._guarded("plan", self.flow.plan, default=0)
        # Answers are waited for up to the pace's next slot (set by the last dispatch), and the dispatch follows at
        # once: nothing else of the step sits between a slot falling due and its request leaving.
        timeout = wait if self.uploader.busy else 0.0
        if self.uploader.paced_until is not None:  # answers may wait; the next paced slot may not
            timeout = min(timeout, max(0.0, self.uploader.paced_until - self.monotonic()))
        if self.flow.busy() and "read" not in self._parts and "plan" not in self._parts:
            timeout = min(timeout, 0.0 if read or planned else WORK_WAIT)  # more rows to do: a glance at answers
        answered = self._guarded("record", self.uploader.collect, timeout, self.epoch, default=0)
        sending = leads and not self.stop_event.is_set()
        sent = self._guarded("send", self.uploader.dispatch, self.epoch(), default=0) if sending else 0
        finished = self._guarded("finish", self.flow.finish, default=0) if leads else 0
        # The codes of recorded answers, merged into the upload history a key range per step once enough gathered.
        self._guarded("merge", self.ledger.merge_some, default=0)
        if answered or planned or finished:
            self.flow.progressed(finished=finished > 0)
        else:
            self.flow.recheck_blocked()
        return StepResult(taken, planned, sent, answered, finished, claimed, read)

    def _guarded(self, part: str, fn: Callable[..., int], *args: Any, default: int) -> int:
        """Run one part of the step unless it is backing off after a failure; a failure never ends the loop."""
        backoff = self._parts.get(part)
        now = self.monotonic()
        if backoff is not None and now < backoff.next_at:
            return default
        began = time.perf_counter()
        try:
            result = fn(*args)
        except Exception as exc:
            backoff = self._parts.setdefault(part, Backoff(*STEP_RETRY))
            error = f"{type(exc).__name__}: {exc}"
            wait = backoff.failed(now, error)
            log.error("step_failed", part=part, error=error, retry_in=wait, failures=backoff.failures)
            return default
        took = time.perf_counter() - began - (args[0] if part == "record" else 0.0)  # less its wait for answers
        if took > SLOW_PART:
            log.info("step_part_slow", part=part, seconds=round(took, 3), note="the loop was held this long")
        if backoff is not None:
            log.info("step_recovered", part=part, after_failures=backoff.failures)
            del self._parts[part]
        return result

    # --- loops -----------------------------------------------------------------------------------------------

    def idle(self) -> bool:
        """Nothing in flight, nothing open in the ledger, nothing waiting to settle."""
        open_files = self.ledger.files(OPEN_FILE_STATES)
        return not open_files and not self.uploader.busy and self.scanner.waiting == 0

    def turn(self, *, once: bool = False) -> bool:
        """One turn of the service loop; False when the loop should end (`once` and nothing left to do).

        Raises TokenRefusedError when the start-up check finds the token refused; in `once` mode also
        ConfigurationPausedError (after recording what was in flight) and ApiUnreachableError.
        """
        if self.reload_requested:
            self.reload()
        result = self.step(wait=IDLE_WAIT)
        self._guarded("notify", self.alerts.step, self.epoch(), self.uploader, result.answered, default=0)
        self._dashboard(files_changed=bool(result.claimed or result.taken or result.finished))
        pause = self.uploader.pause
        if self.uploader.start_refused is not None:
            raise TokenRefusedError(self.uploader.start_refused)  # at start-up: a restart cannot help
        if once and self.uploader.starting:
            if self.uploader.start_failures >= ONCE_START_ATTEMPTS:
                reason = f"the API cannot be reached ({self.uploader.start_error})"
                at = clock_time(self.epoch(), self.epoch())
                self.uploader.not_started(f"the last `run --once` ended at {at}: {reason}; no file was taken")
                raise ApiUnreachableError(reason)
        elif pause is not None and once:
            self.uploader.drain(self.epoch, deadline=self.monotonic() + STOP_DEADLINE)
            self._guarded("finish", self.flow.finish, default=0)
            if pause.cause == "token":
                raise TokenRefusedError(pause.reason)  # the service waits instead; --once cannot
            raise ConfigurationPausedError(pause.reason)
        self.notifier.alive()  # only a loop that turns pings the watchdog
        self.telemetry.turned()  # and only one that turns keeps /healthz at 200
        self.retention.tick()  # at most once a day, in its own thread
        self._report_status()
        if once and not result.busy and self.uploader.start_passed and self.idle():
            return False
        if once and not result.busy and self._only_undeliverable_left():
            return False  # the CLI exits 1 naming them; the next run delivers them
        self.events.check()
        if not result.busy and not self.uploader.inflight:  # with requests in flight, step() waited for answers
            self.idle_wait(self.next_wake())
        return True

    def undelivered(self) -> list[str]:
        """Why files whose reports could not be delivered are still waiting."""
        return [b.error for b in self.flow.delivery.values()]

    def _only_undeliverable_left(self) -> bool:
        """`run --once`: every open file is final but its reports failed to be delivered a few times over."""
        if not self.flow.delivery or self.uploader.busy or self.scanner.waiting:
            return False
        if any(b.failures < ONCE_DELIVERY_ATTEMPTS for b in self.flow.delivery.values()):
            return False
        open_files = self.ledger.files(OPEN_FILE_STATES)
        return {f.id for f in open_files} <= set(self.flow.delivery)

    def start(self, *, once: bool = False) -> None:
        """Take the lead (standing by while another instance has it), then recover, retrying with backoff while
        the ledger cannot be written (a full disk): it never ends the service; a stop request does."""
        backoff = Backoff(*STEP_RETRY)
        while not self.stop_event.is_set():
            try:
                if not self._lead(once=once):
                    return  # stopped while standing by
                self.recover()
                self.uploader.check_at_start()
                return
            except LeaseHeldError:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                wait = backoff.failed(self.monotonic(), error)
                log.error("recovery_failed", error=error, retry_in=wait, failures=backoff.failures)
                self.notifier.status(f"PROBLEM: the ledger cannot be prepared: {error} (retried in {wait:g} s)")
            while not self.stop_event.is_set() and self.monotonic() < backoff.next_at:
                self.notifier.alive()
                self.idle_wait(backoff.next_at - self.monotonic())

    def _lead(self, *, once: bool) -> bool:
        """Take the work lease, standing by (ready, healthy, stop-aware) while another instance holds it.

        False when stopped while standing by. `run --once` does not wait: LeaseHeldError. A database error
        propagates to start()'s backoff.
        """
        said = None
        while not self.stop_event.is_set():
            if self.leadership.try_take():
                if said is not None:
                    self.notifier.status(f"taking over from {said}: recovering the ledger", force=True)
                return True
            holder, remaining = self.leadership.holder, self.leadership.remaining
            if once:
                raise LeaseHeldError(
                    f"another instance ({holder}) is working on this ledger; its lease runs {remaining:.0f} s more"
                )
            if holder != said:
                said = holder
                log.info("standby", leader=holder, lease_left=round(remaining, 1), instance=self.leadership.me.id)
                self.notifier.ready(f"standby: {holder} leads; taking over if its lease runs out")
            until = self.monotonic() + self.settings.ha.renew_seconds
            while not self.stop_event.is_set() and self.monotonic() < until:
                self.notifier.alive()
                self.telemetry.turned(leading=False)  # a standby is healthy
                self.idle_wait(until - self.monotonic())
        return False

    def run(self, *, once: bool = False) -> None:
        """Step until stopped (or, with once, until the inbox and the ledger hold no unfinished work)."""
        self.telemetry.open()
        try:
            self.start(once=once)
            if not self.leadership.leading:
                return  # stopped while standing by: nothing of the ledger was touched
            self.events.check()  # starts the observer
            self.notifier.ready(f"ready: watching {self.settings.paths.inbox}")
            while not self.stop_event.is_set() and self.turn(once=once):
                pass
            self.shutdown()
            self.leadership.release()  # a standby goes on at once
        finally:
            self.events.stop()
            self.telemetry.close()
            self.retention.close()  # before the ledger closes under it
            self.flow.close()  # a file half read stays `received`: read again from the start next time
            self.offload.close()
            self.uploader.close()
            self.alerts.close()
            self.ledger.close()

    def shutdown(self) -> None:
        """Record every answer in flight and deliver what is final (a graceful stop, or the end of --once)."""
        in_flight = len(self.uploader.inflight)
        self.notifier.stopping(f"stopping: waiting for {in_flight} request(s) in flight")
        log.info("stopping", in_flight=in_flight)
        self.uploader.client.stopping()  # an answer still trickling in does not hold the stop
        self.uploader.not_started(None)  # stopped while waiting for the API: nothing is paused any more
        self.uploader.drain(self.epoch, deadline=self.monotonic() + STOP_DEADLINE)
        self._guarded("finish", self.flow.finish, default=0)
        self._guarded("progress", lambda: len(self.progress.sample(self.epoch())), default=0)  # the end state
        self._dashboard(files_changed=True, running=False)

    def _dashboard(self, *, files_changed: bool, running: bool = True) -> None:
        """Rewrite outbox/index.html when due; a failed write is logged and retried by the error boundary."""
        up = self.uploader
        args = (up.pause, up.breaker.is_open, self.progress.current)
        tick = self.dashboard.tick
        self._guarded("dashboard", lambda: tick(self.monotonic(), files_changed, *args, running=running), default=0)

    def _wait_for_wake(self, until_work: float) -> None:
        """The production idle wait: at most IDLE_WAIT, so that signals and a stop are noticed promptly."""
        timeout = min(IDLE_WAIT, until_work)
        if self.wake.is_set():
            time.sleep(timeout)  # an event came too soon after the last scan: wait out the gap, do not spin
        else:
            self.wake.wait(timeout)

    def next_wake(self) -> float:
        """Seconds until the loop has something to do (a due batch, a scan, a retry), if nothing wakes it before."""
        mono = self.monotonic()
        try:
            due = self.ledger.next_due()
        except Exception:  # the ledger unreadable (its server restarting): the parts that failed
            due = None  # log it and back off, and their backoffs below say when to look again
        until_due = max(0.0, due - self.epoch()) if due is not None else math.inf
        held = self.uploader.held_until()  # due batches that cannot go yet must not make the loop spin
        if held is not None:
            until_due = max(until_due, held - mono)
        # Monotonic times at which each part of the step has work; a part backing off after a failure has none
        # before its backoff ends, or a due batch or a due scan would make the loop spin.
        work = {
            "send": mono + until_due,
            "take": self.flow.next_scan() if self.uploader.start_passed else math.inf,
            # Files being read or planned go on at once; WORK_WAIT when they wait for a read on the ledger thread.
            "read": mono + WORK_WAIT if self.flow.reading() else math.inf,
            "plan": mono + WORK_WAIT if self.flow.planning_any() else self.flow.next_unblock(),
            "finish": min(
                [b.next_at for b in self.flow.delivery.values()] + [mono + DELIVERY_POLL] * self.flow.delivering(),
                default=math.inf,
            ),
            # The progress sample runs on its own schedule (in _report_status), so a failed one is retried then.
            "progress": max(self._next_progress, self._next_status) if "progress" in self._parts else math.inf,
        }
        for part, backoff in self._parts.items():  # and when its backoff ends, it is tried again in any case
            at = work.get(part, math.inf)
            work[part] = backoff.next_at if at == math.inf else max(at, backoff.next_at)
        waits = [at - mono for at in work.values()]
        kept = self.uploader.unrecorded_retry_at()
        if kept is not None:
            waits.append(kept - mono)
        if self.uploader.pause is not None and self.uploader.pause.cause in ("token", "starting"):
            waits.append(self.uploader.next_token_check - self.epoch())
        return max(0.0, min(waits))

    def _report_status(self) -> None:
        now = self.monotonic()
        if now < self._next_status:
            return
        self._next_status = now + 1.0
        pause = self.uploader.pause
        if now >= self._next_progress:
            self._next_progress = now + PROGRESS_EVERY
            reason = pause.reason if pause is not None else None
            self._guarded("progress", lambda: len(self.progress.sample(self.epoch(), paused=reason)), default=0)
        elif self.progress.counting:  # counted off the loop's thread: taken in once done
            self._guarded("progress", lambda: len(self.progress.collect()), default=0)
        active = self.progress.current
        if not self.notifier.enabled:
            return
        open_files = OPEN_FILE_STATES
        files = self._guarded("status", lambda: len(self.ledger.files(open_files)), default=0)
        text = systemd_status(
            files=files,
            in_flight=len(self.uploader.inflight),
            busy=self.uploader.busy,
            inbox=str(self.settings.paths.inbox),
            active=active,
            settling=self.scanner.waiting,
            problems=[b.error for b in self.flow.delivery.values()]
            + [f"{p}: {b.error}" for p, b in self._parts.items()],
            pause=pause,
            breaker_open=self.uploader.breaker.is_open,
        )
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
        watch = self.settings.watch
        self.scanner.settle_seconds, self.scanner.ignore = watch.settle_seconds, list(watch.ignore)
        self.events.set_ignore(watch.ignore)
        if isinstance(self.events, InboxEvents) and watch.polling != self.events.polling:
            self.events.stop()
            self.events.polling = watch.polling  # check() starts the other kind
        self.uploader.reconfigure(self.settings)  # the pace keeps its window's history
        self._parts.clear()  # a fixed configuration may have cured a failing part: try everything again now
        self.flow.settings = self.settings
        self.flow.rescan_now()  # new ignore patterns or settle time: look at the inbox again now
        log.info("config_reloaded", applied=list(diff.live))
        if diff.need_restart:
            log.warning("config_change_needs_restart", keys=list(diff.need_restart))
        self.notifier.ready(f"ready: watching {self.settings.paths.inbox}")

    def stop(self) -> None:
        """Ask the loop to stop after the step in progress (safe to call from a signal handler)."""
        self.stop_event.set()
