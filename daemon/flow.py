"""The life of a file inside the loop: taken from the inbox, read into the ledger, planned into batches, reported
and moved once every row is final. The service loop calls these parts, each inside its own error boundary."""

import math
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import structlog

from daemon import intake
from daemon.config import Settings
from daemon.config.routes import settings_for
from daemon.folders import fix_names, write_and_move
from daemon.ledger import FileInfo, Ledger
from daemon.planner import plan as plan_batches
from daemon.reporter import ReportNames, outcome_for
from daemon.retry import Backoff
from daemon.states import OPEN_FILE_STATES, FileState, RowStatus
from daemon.steps import Inline, Offload, Steps, offloaded, started
from daemon.watcher import InboxScanner, inbox_name

log = structlog.get_logger(__name__)

# The inbox is scanned every watch.rescan_seconds, when a watcher event wakes the loop (at most this often, so
# a copy that fires thousands of write events does not turn into a busy loop), and when a file is due to settle.
EVENT_SCAN_GAP = 0.1
UNREADABLE_RETRY = 60.0  # seconds before a file that could not be opened (permissions) is tried again
BLOCKED_RECHECK = 1.0  # seconds between looks at rows blocked by an earlier file's open rows for the same code
DELIVERY_RETRY = (5.0, 300.0)  # first and longest wait before writing a file's reports again after a failure
DELIVERY_POLL = 0.1  # how often the loop looks whether reports written off its thread are done
STEP_ROWS = 10_000  # rows of work (hashed, read, recorded, planned) one step of the loop does at most (~0.1 s)
SKIP_LINES = 50_000  # lines of a file looked up in the upload history per step when it is planned


class FileFlow:
    """Moves files through the ledger's states; remembers which files may have work, and what keeps failing."""

    def __init__(
        self,
        settings: Settings,
        *,
        ledger: Ledger,
        scanner: InboxScanner,
        wake: threading.Event,
        stopping: threading.Event,
        monotonic: Callable[[], float],
        offload: Offload | None = None,
    ) -> None:
        self.settings = settings  # replaced by the service on a reload
        self.offload = offload or Inline()  # long ledger reads, off the loop's thread in the service
        self.ledger = ledger
        self.scanner = scanner
        self.wake = wake
        self.stop_event = stopping
        self.monotonic = monotonic
        self._next_scan = 0.0
        self._last_scan = -math.inf
        self._to_plan: set[int] = set()  # active files that may have rows to plan
        self._blocked: set[int] = set()  # files with rows waiting on an earlier file's open row for the same code
        self._next_unblock = 0.0  # monotonic time from which blocked files are looked at again
        self._unblock_pending = False  # something progressed since blocked files were last looked at
        self._active: set[int] = set()  # active files this process knows; others were reopened by `retry`
        self._unreadable: dict[str, float] = {}  # inbox paths that could not be opened, and when to try again
        self._reread: dict[int, Path] = {}  # claimed files whose reading failed on the ledger, to read again
        self._reading: dict[int, tuple[Path, str, Steps[int | None]]] = {}  # files being read: copy, name, steps
        self._planning: dict[int, Steps[int]] = {}  # files being planned, a slice of their batches per step
        self._recorded_files = 0  # files recorded whole since take_recorded() was last asked
        self.delivery: dict[int, Backoff] = {}  # files whose reports could not be written or input not moved
        self._delivering: dict[int, Future[tuple[ReportNames, Path]]] = {}  # reports being written off the loop
        self._counting: dict[int, Future[dict[RowStatus, int]]] = {}  # final rows being counted off the loop
        self.on_done: Callable[[FileInfo, ReportNames], None] | None = None  # [notify]: inside the final commit

    def resume(self) -> int:
        """After recovery: every active file may have rows to plan. Returns how many there are."""
        self._to_plan = {f.id for f in self.ledger.files([FileState.ACTIVE])}
        self._active |= self._to_plan
        return len(self._to_plan)

    def progressed(self, *, finished: bool) -> None:
        """Something was answered, planned or finished: an earlier row that a blocked row waited on may be closed.

        Looking again costs a pass over the earlier files' open rows, so it is done at once when a file finished
        and otherwise at most every BLOCKED_RECHECK seconds, not after every answer (see recheck_blocked).
        """
        self._unblock_pending = True
        if finished:
            self._next_unblock = 0.0
        self.recheck_blocked()

    def recheck_blocked(self) -> None:
        """Plan blocked files again if something progressed since they were last looked at and the time has come."""
        if not self._blocked or not self._unblock_pending or self.monotonic() < self._next_unblock:
            return
        self._next_unblock = self.monotonic() + BLOCKED_RECHECK
        self._unblock_pending = False
        self._to_plan |= self._blocked
        self._blocked.clear()

    def next_unblock(self) -> float:
        """Monotonic time when blocked files are looked at again; infinity when none is blocked."""
        return self._next_unblock if self._blocked and self._unblock_pending else math.inf

    def rescan_now(self) -> None:
        """Look at the inbox again at the next step (new ignore patterns or settle time)."""
        self._next_scan = 0.0

    def next_scan(self) -> float:
        """Monotonic time of the next inbox scan, if no event comes before."""
        return min(self._next_scan, self._last_scan + EVENT_SCAN_GAP if self.wake.is_set() else math.inf)

    def take_if_due(self, now: float) -> int:
        """Scan the inbox when due and claim and read what has settled; returns how many files were taken."""
        if not self._scan_due(now) or self.stop_event.is_set():
            return 0
        self.wake.clear()
        self._last_scan = now
        taken = self._take_settled(now)
        settling = self.scanner.next_check()
        self._next_scan = min(now + self.settings.watch.rescan_seconds, math.inf if settling is None else settling)
        return taken

    def _take_settled(self, now: float) -> int:
        taken = 0
        for file_id, copy in sorted(self._reread.items()):
            if file_id in self._reading:
                continue
            self.ledger.discard_rows(file_id)
            log.info("intake_restarted", file_id=file_id, note="its reading failed before")
            self.read(file_id, copy)
            taken += 1
        self._unreadable = {p: at for p, at in self._unreadable.items() if at > now}
        settled = self.scanner.scan(now, ())
        if settled:
            # Ledgers from before claims were renames hold open files at their inbox path: never take those twice.
            states = list(OPEN_FILE_STATES)
            claimed = {f.path for f in self.ledger.files(states)}
            settled = [p for p in settled if str(p) not in claimed]
        inbox = self.settings.paths.inbox
        for path in settled:
            if str(path) in self._unreadable:
                continue
            self.scanner.taken(path)
            try:
                file_id, claimed_path = intake.claim(path, self.ledger, self.settings)
            except intake.Vanished:
                log.info("file_vanished", file=inbox_name(inbox, path), note="taken afresh if it comes back")
                continue
            except OSError as exc:
                # E.g. no permission to rename it: not the file's content, so no report; looked at again later.
                self._unreadable[str(path)] = now + UNREADABLE_RETRY
                name = inbox_name(inbox, path)
                log.warning("file_not_claimable", file=name, error=str(exc), retry_in=UNREADABLE_RETRY)
                continue
            self.read(file_id, claimed_path)
            taken += 1
        return taken

    def read(self, file_id: int, claimed: Path) -> None:
        """Start reading a claimed file into the ledger; read_some() takes it a few thousand rows at a time."""
        steps = intake.reading(file_id, claimed, self.ledger, self.settings, offload=self.offload)
        self._reading[file_id] = (claimed, self.ledger.file(file_id).name, steps)

    def busy(self) -> bool:
        """Whether files are being read or planned (or wait to be): the loop must not sleep."""
        return self.reading() or self.planning_any()

    def delivering(self) -> bool:
        """Whether reports are being written, or final rows counted, off the loop's thread (the loop looks every
        DELIVERY_POLL)."""
        return bool(self._delivering or self._counting)

    def reading(self) -> bool:
        """Whether claimed files are being read."""
        return bool(self._reading)

    def planning_any(self) -> bool:
        """Whether files are being planned or wait to be."""
        return bool(self._planning or self._to_plan)

    def close(self) -> None:
        """Drop the files being read or planned (their open tables close): a stop, or the end of `run --once`."""
        for _, _, steps in self._reading.values():
            steps.close()
        for planning in self._planning.values():
            planning.close()
        self._reading.clear()
        self._planning.clear()

    def take_recorded(self) -> int:
        """How many files were recorded whole since the last call."""
        recorded, self._recorded_files = self._recorded_files, 0
        return recorded

    def read_some(self) -> int:
        """Advance the reading of claimed files by up to STEP_ROWS rows; returns the rows of work done (the files
        recorded whole are counted for take_recorded)."""
        budget = STEP_ROWS
        for file_id, (claimed, name, steps) in list(self._reading.items()):
            while budget > 0:
                try:
                    work = next(steps)
                except StopIteration as end:
                    del self._reading[file_id]
                    self._recorded_files += self._recorded(file_id, claimed, name, end.value)
                    break
                except Exception as exc:
                    del self._reading[file_id]
                    self._read_failed(file_id, claimed, name, exc)
                    break
                if work == 0:
                    break  # it waits for a read off the loop's thread: the next file meanwhile
                budget -= work
            if budget <= 0:
                break
        return STEP_ROWS - budget

    def _recorded(self, file_id: int, claimed: Path, name: str, done: int | None) -> int:
        self._reread.pop(file_id, None)
        if done is None:  # it changed while being read: back into the inbox, to settle anew
            self._put_back(claimed, name)
            self.wake.set()
            return 0
        self._to_plan.add(file_id)
        self._active.add(file_id)  # known: finish() must not plan it a second time
        return 1

    def _read_failed(self, file_id: int, claimed: Path, name: str, exc: Exception) -> None:
        if isinstance(exc, intake.Vanished):
            self._reread.pop(file_id, None)
            log.warning("file_vanished", file=name, file_id=file_id, note="claim released; taken afresh if it returns")
            return
        if isinstance(exc, OSError):
            # E.g. no read permission yet: not the file's content, so no report; back to the inbox, tried later.
            self._reread.pop(file_id, None)
            self.ledger.forget_file(file_id)
            back = self._put_back(claimed, name)
            if back is not None:
                self._unreadable[str(back)] = self.monotonic() + UNREADABLE_RETRY
            log.warning("file_not_readable", file=name, error=str(exc), retry_in=UNREADABLE_RETRY)
            return
        # The ledger could not take it (a full disk): its rows so far are dropped and it is read again from the
        # start when the take part runs next; the boundary around this part logs the error.
        self._reread[file_id] = claimed
        raise exc

    def _put_back(self, claimed: Path, name: str) -> Path | None:
        try:
            back = intake.put_back(claimed, self.settings.paths.inbox, name)
        except OSError as exc:
            log.error("file_not_returned", file=name, path=str(claimed), error=str(exc))
            return None
        log.info("file_returned", file=name, moved_to=str(back))
        return back

    def _scan_due(self, now: float) -> bool:
        return now >= self._next_scan or (self.wake.is_set() and now >= self._last_scan + EVENT_SCAN_GAP)

    def plan(self) -> int:
        """Put the plannable rows of files that may have some into batches, up to STEP_ROWS rows of work per step
        (a file's batches are committed a slice at a time, and its first slices are sent while the rest are
        made); returns the rows of work done.

        A file whose planning fails (a full disk) stays to be planned again, and the others are still planned: the
        first failure is raised at the end, for the loop's error boundary to log and back off.
        """
        for file_id in sorted(self._to_plan - set(self._planning)):
            self._to_plan.discard(file_id)  # taken up: added again if something changes while it is planned
            self._planning[file_id] = self._planning_steps(file_id)
        done = 0
        failure: Exception | None = None
        for file_id, steps in list(self._planning.items()):
            while done < STEP_ROWS:
                try:
                    work = next(steps)
                except StopIteration:
                    del self._planning[file_id]
                    break
                except Exception as exc:
                    del self._planning[file_id]
                    self._to_plan.add(file_id)  # planned again from where the committed slices left it
                    failure = failure or exc
                    break
                if work == 0:
                    break  # it waits for a read off the loop's thread
                done += work
            if done >= STEP_ROWS:
                break
        if failure is not None:
            raise failure
        return done

    def planning(self, file_id: int) -> bool:
        """Whether the file has rows that may still be planned (so it cannot be finished yet)."""
        return file_id in self._to_plan or file_id in self._planning or file_id in self._blocked

    def _planning_steps(self, file_id: int) -> Steps[int]:
        f = self.ledger.file(file_id)
        if f.state is not FileState.ACTIVE:
            return 0
        skipped = 0
        first, last = self.ledger.line_range(file_id)
        for start in range(first, last + 1, SKIP_LINES):
            skipped += self.ledger.skip_uploaded(f.id, f.data_key, lines=(start, start + SKIP_LINES - 1))
            yield max(1, min(SKIP_LINES, last + 1 - start) // 10)  # a lookup costs a tenth of a recorded row
        size = last + 1 - first
        groups = yield from offloaded(self.offload, lambda: self.ledger.plannable_groups(file_id), size)
        planned = sum(len(lines) for lines in groups.values())
        if groups:
            upload = settings_for(self.settings, f.name).upload  # its route's batch sizes
            p = plan_batches(
                groups,
                mode=f.mode,  # as configured when the file was taken
                sync_batch_size=upload.sync_batch_size,
                async_batch_size=upload.async_batch_size,
            )
            del groups
            batches = [(b.kind, b.lines, b.data_hash) for b in p.batches]
            start = 0
            while start < len(batches):
                end, rows = start, 0
                while end < len(batches) and (rows == 0 or rows + len(batches[end][1]) <= STEP_ROWS):
                    rows += len(batches[end][1])
                    end += 1
                self.ledger.add_batches(file_id, batches[start:end])  # sent from the next dispatch on
                start = end
                yield rows
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
        if (yield from offloaded(self.offload, lambda: self.ledger.has_pending_rows(file_id), size)):
            self._blocked.add(file_id)
        return skipped + planned

    def finish(self) -> int:
        """Close files whose rows are all final and deliver their reports; returns how many were delivered."""
        finished = 0
        now = self.monotonic()
        for f in self.ledger.files([FileState.ACTIVE, FileState.REPORTING]):
            if f.state is FileState.ACTIVE:
                if f.id not in self._active:
                    self._active.add(f.id)
                    self._to_plan.add(f.id)
                    continue
                if self.planning(f.id) or self.ledger.has_open_rows(f.id):
                    self._counting.pop(f.id, None)
                    continue
                if self.ledger.settle_some():
                    continue  # a file at rest has its codes in `codes`: merged a key range per step, then finished
                counts = self._final_counts(f.id)
                if counts is None:
                    continue  # being counted off the loop's thread
                self.ledger.transition_file(f.id, FileState.REPORTING, outcome=outcome_for(counts), counts=counts)
            backoff = self.delivery.get(f.id)
            if backoff is not None and now < backoff.next_at:
                continue
            if self._report_and_move(self.ledger.file(f.id), now):
                finished += 1
        return finished

    def _final_counts(self, file_id: int) -> dict[RowStatus, int] | None:
        """The rows by status of a file whose rows are all final; None while a big file's are counted off the
        loop's thread (a pass over its rows: two seconds for five million)."""
        future = self._counting.pop(file_id, None)
        if future is None:
            first, last = self.ledger.line_range(file_id)
            future = started(self.offload, lambda: self.ledger.row_counts(file_id), last - first)
        if not future.done():
            self._counting[file_id] = future
            return None
        return future.result()

    def _report_and_move(self, f: FileInfo, now: float) -> bool:
        """Deliver one file; on a file-system error it stays `reporting` and is tried again with backoff.

        A big file's reports are written off the loop's thread (they read the ledger only): the step that starts
        them returns at once, and a later one records the delivery once they are written."""
        try:
            future = self._delivering.pop(f.id, None)
            if future is None:
                f = fix_names(self.ledger, f, self.settings.paths)
                first, last = self.ledger.line_range(f.id)
                paths, reports = self.settings.paths, self.settings.reports
                future = started(self.offload, lambda: write_and_move(self.ledger, f, paths, reports), last - first)
            if not future.done():
                self._delivering[f.id] = future
                return False
            names, target = future.result()
        except OSError as exc:
            backoff = self.delivery.setdefault(f.id, Backoff(*DELIVERY_RETRY))
            error = f"reports of {f.name} not delivered: {exc.strerror or exc} ({exc.filename or ''})"
            wait = backoff.failed(now, error)
            self.ledger.set_file(f.id, delivery_error=error)
            log.error("delivery_failed", file=f.name, file_id=f.id, error=error, retry_in=wait)
            return False
        with self.ledger.grouped():  # the file's final state and what it notifies: both recorded, or neither
            self.ledger.transition_file(f.id, FileState.DONE, delivery_error=None)
            if self.on_done is not None:
                self.on_done(self.ledger.file(f.id), names)
        self.delivery.pop(f.id, None)
        self._active.discard(f.id)
        counts = self.ledger.file_counts(f.id)  # kept with the record: the rows are not counted again
        log.info(
            "file_done",
            file=f.name,
            file_id=f.id,
            status=str(f.outcome),
            summary=names.summary,
            moved_to=str(target),
            **counts,
        )
        return True
