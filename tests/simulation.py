"""Deterministic simulation of the whole service: the real loop, a simulated clock, the emulator in-process.

One seed is one schedule: files dropped (some under the same name, some exact copies, some vanishing before they
are taken), and faults at random moments — outages of uploads and of task polls separately, 5xx, 429 with and
without Retry-After, resets, hangs past the read timeout, batches applied then answered 500, tasks that fail,
are lost (404) or never finish, a token revoked and renewed, connections refused, folders vanishing and
returning, wall-clock jumps, SIGHUP, and crashes (the process state discarded, the ledger reopened). After the
last fault the world heals, and the run must end with the invariants of `check()` holding.

Everything that decides runs on one thread: requests run at once against the emulator and their answers are
delivered on the simulated clock `last_delay` later, so a seed reproduces a run exactly.

Replay one seed:   .venv/bin/python tests/simulation.py --seed 1234 -v
Run many:          .venv/bin/python tests/simulation.py --schedules 100000 --jobs 2
"""

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import SecretStr

from daemon.api import ScantrustClient
from daemon.breaker import CircuitBreaker
from daemon.config import load_settings
from daemon.ledger import Ledger
from daemon.pacing import Pace
from daemon.sandbox import Emulator, EmulatorConfig
from daemon.sandbox.inprocess import InProcessAdapter
from daemon.service import IDLE_WAIT, Service, TokenRefusedError
from daemon.states import FileState
from daemon.steps import Inline
from daemon.uploader import Uploader, policy_from
from daemon.watcher import InboxScanner

TOKEN = "sim-token-0123456789"
WORKERS = 4
BATCH = 4  # small batches: many requests from few rows
HEAL_BOUND = 3000.0  # simulated seconds after the last fault within which everything must be final
FAULT_WINDOW = 120.0  # faults strike within this many simulated seconds from the start
MAX_ATTEMPTS = 4
MAX_TURNS = 8000  # a schedule takes a few hundred turns; thousands more mean the loop spins without waiting
FINAL_ROW_STATES = {"uploaded", "not_affected", "skipped", "rejected", "failed"}


class SimClock:
    """Monotonic and wall time of the simulated world; only advance() moves them."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall_offset = 1_790_000_000.0 - self.mono  # a wall clock around late 2026

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> datetime:
        return datetime.fromtimestamp(self.mono + self.wall_offset, UTC)

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self.mono += seconds


@dataclass
class Delivery:
    """An answer computed at submit time, delivered on the simulated clock."""

    due: float
    result: Any = None
    error: BaseException | None = None


class SimRunner:
    """The uploader's Runner for the simulation: runs each request at once, delivers its answer later."""

    def __init__(self, clock: SimClock, adapter: InProcessAdapter, horizon: Callable[[], float]) -> None:
        self.clock = clock
        self.adapter = adapter
        self.horizon = horizon  # how far the clock may jump while the loop only waits (next fault, next deadline)
        self.pending: dict[Future[Any], Delivery] = {}

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        delivery = Delivery(due=0.0)
        try:
            delivery.result = fn(*args)
        except BaseException as exc:  # delivered to the uploader as the request's failure
            delivery.error = exc
        delivery.due = self.clock.mono + self.adapter.last_delay
        self.pending[future] = delivery
        return future

    def wait(self, futures: Collection[Future[Any]], timeout: float) -> set[Future[Any]]:
        # The loop waits IDLE_WAIT at most so that it notices signals and files; in the simulation nothing can
        # happen before the horizon, so the clock jumps straight to the first answer or the horizon.
        limit = self.clock.mono + timeout
        if timeout >= IDLE_WAIT:
            limit = max(limit, self.horizon())
        waiting = [f for f in futures if f in self.pending]
        first = min((self.pending[f].due for f in waiting), default=float("inf"))
        if first > limit:
            self.clock.advance(limit - self.clock.mono)
            return set()
        self.clock.advance(first - self.clock.mono)
        done = set()
        for future in waiting:
            delivery = self.pending[future]
            if delivery.due <= self.clock.mono:
                del self.pending[future]
                if delivery.error is not None:
                    future.set_exception(delivery.error)
                else:
                    future.set_result(delivery.result)
                done.add(future)
        return done

    def shutdown(self) -> None:
        self.pending.clear()


@dataclass
class Drop:
    """A file the schedule drops into the inbox."""

    at: float
    name: str
    rows: list[tuple[str, dict[str, str]]]  # code, data
    copy_of: int | None = None  # the index of an earlier drop with the same bytes
    vanish_at: float | None = None  # deleted from the inbox then (if still there)

    def text(self, fields: list[str]) -> str:
        lines = [",".join(["extended_id", *fields])]
        lines += [",".join([code, *(data[f] for f in fields)]) for code, data in self.rows]
        return "\n".join(lines) + "\n"


@dataclass
class Fault:
    """One fault: switched on at `at`, off at `until` (None: an instant event)."""

    kind: str
    at: float
    until: float | None = None
    value: Any = None


@dataclass
class Schedule:
    """Everything a seed decides."""

    seed: int
    mode: str
    drops: list[Drop]
    faults: list[Fault]
    last_fault: float


FIELDS = ["lot", "market"]


def make_schedule(seed: int) -> Schedule:
    rng = random.Random(seed)
    mode = rng.choice(["sync", "async", "auto"])
    drops: list[Drop] = []
    serial = 0
    for n in range(rng.randint(1, 3)):
        groups = [
            {"lot": f"L{seed % 97}-{g}", "market": rng.choice(["cn", "de", "fr"])} for g in range(rng.randint(1, 3))
        ]
        rows = []
        for _ in range(rng.randint(1, 14)):
            serial += 1
            rows.append((f"S{seed:07d}X{serial:05d}", dict(rng.choice(groups))))
        name = rng.choice(["orders.csv", f"line{n}.csv"])  # same names happen: a corrected file under the old name
        drop = Drop(at=rng.uniform(0, FAULT_WINDOW / 2), name=name, rows=rows)
        if rng.random() < 0.15:
            drop.vanish_at = drop.at + rng.uniform(0, 3)  # often before it settles, sometimes after it is taken
        drops.append(drop)
    if rng.random() < 0.35:  # a corrected file under the same name, soon after the first (while it uploads)
        first = rng.choice(drops)
        rows = []
        for _ in range(rng.randint(1, 10)):
            serial += 1
            rows.append((f"S{seed:07d}X{serial:05d}", {"lot": f"L{seed % 97}-fix", "market": "de"}))
        drops.append(Drop(at=first.at + rng.uniform(0.5, 20.0), name=first.name, rows=rows))
    if drops and rng.random() < 0.2:  # the same bytes dropped again later, under another name
        first = drops[0]
        drops.append(Drop(at=first.at + rng.uniform(5, 100), name="copy.csv", rows=first.rows, copy_of=0))
    kinds = [
        "upload_outage",
        "poll_outage",
        "fail",
        "throttle",
        "throttle_huge",
        "reset",
        "hang",
        "applied_then_500",
        "task_fail",
        "task_missing",
        "task_never",
        "revoke",
        "refuse",
        "blackhole",
        "outbox_gone",
        "archive_gone",
        "ledger_full",
        "clock_jump",
        "sighup",
        "crash",
    ]
    faults: list[Fault] = []
    for _ in range(rng.randint(0, 6)):
        kind = rng.choice(kinds)
        at = rng.uniform(0, FAULT_WINDOW)
        if kind in ("clock_jump", "sighup", "crash"):
            value = rng.choice([-86400.0, 2 * 86400.0, 3600.0]) if kind == "clock_jump" else None
            faults.append(Fault(kind, at, None, value))
        else:
            faults.append(Fault(kind, at, at + rng.choice([1.0, 5.0, 20.0, 60.0, 200.0])))
    # Crashes are the fault the ledger exists for: most schedules have some, often two close together (a
    # restart loop), so that a batch is caught in flight again and again.
    windows = [f for f in faults if f.until is not None]
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        at = rng.uniform(0, FAULT_WINDOW)
        if windows and rng.random() < 0.6:  # in the middle of another fault: requests hang, fail, are retried
            window = rng.choice(windows)
            assert window.until is not None
            at = rng.uniform(window.at, window.until)
        faults.append(Fault("crash", at))
        if rng.random() < 0.5:
            faults.append(Fault("crash", at + rng.uniform(0.5, 40.0)))
    faults.sort(key=lambda f: f.at)
    last = max([f.until or f.at for f in faults] + [d.at for d in drops])
    return Schedule(seed, mode, drops, faults, last)


class World:
    """The simulated machine: folders, the emulator, the clock, and the service process (rebuilt at a crash)."""

    def __init__(self, schedule: Schedule, root: Path, *, verbose: bool = False) -> None:
        self.schedule = schedule
        self.root = root
        self.verbose = verbose
        self.clock = SimClock()
        self.rng = random.Random(schedule.seed ^ 0x5EED)
        self.emulator = Emulator(
            EmulatorConfig(
                token=TOKEN, rate_limit=None, seed=schedule.seed, task_pending_seconds=1.0, task_running_seconds=2.0
            ),
            clock=self.clock.monotonic,
            wall=self.clock.wall,
        )
        self.adapter = InProcessAdapter(self.emulator)
        self.config = root / "config.toml"
        for folder in ("inbox", "outbox", "archive", "failed", "state"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"""
[api]
base_url = "http://127.0.0.1:9"
connect_timeout = 5
read_timeout = 30
requests_per_second = 10
max_in_flight = {WORKERS}
[upload]
mode = "{schedule.mode}"
sync_batch_size = {BATCH}
async_batch_size = {BATCH}
[paths]
inbox = "inbox"
outbox = "outbox"
archive = "archive"
failed = "failed"
ledger = "state/ledger.sqlite3"
[watch]
settle_seconds = 1
rescan_seconds = 30
[poll]
interval_seconds = 2
max_interval_seconds = 20
timeout_seconds = 120
[retry]
max_attempts = {MAX_ATTEMPTS}
base_delay_seconds = 1
max_delay_seconds = 20
breaker_failures = 5
breaker_cooldown_seconds = 5
max_server_wait_seconds = 120
"""
        )
        self.settings = load_settings(self.config, env={"SCM_API__TOKEN": TOKEN})
        self.crashes = 0
        self.revoked = False  # the revoke fault is on
        self.exited = False  # the service ended (exit 3: token refused at start-up); systemd does not restart it
        self.turns = 0
        self.disk_full = False  # the ledger_full fault
        self.disk_rng = random.Random(schedule.seed ^ 0xD15C)
        self.next_event = float("inf")  # clock time of the next scheduled drop or fault
        self.service = self.boot()
        self.dropped: list[bool] = [False] * len(schedule.drops)  # whether each drop happened
        self.vanished: list[bool] = [False] * len(schedule.drops)  # removed or replaced before it was claimed
        self.in_inbox: dict[str, int] = {}  # inbox name -> the drop last written under it

    def boot(self) -> Service:
        """A new process: new objects on the same ledger, recovered."""
        settings = self.settings
        ledger = Ledger(settings.paths.ledger, clock=self.clock.wall)
        self.fill_disk_under(ledger)
        client = ScantrustClient(
            settings.api.base_url,
            SecretStr(TOKEN),
            connect_timeout=settings.api.connect_timeout,
            read_timeout=settings.api.read_timeout,
            pool_size=WORKERS,
            adapter=self.adapter,
        )
        uploader = Uploader(
            ledger,
            client,
            policy_from(settings),
            workers=WORKERS,
            pace=Pace(settings.api.requests_per_second, clock=self.clock.monotonic, sleep=self.clock.advance),
            breaker=CircuitBreaker(settings.retry.breaker_failures, settings.retry.breaker_cooldown_seconds),
            runner=SimRunner(self.clock, self.adapter, self.horizon),
            monotonic=self.clock.monotonic,
            rand=self.rng.random,
        )
        scanner = InboxScanner(
            settings.paths.inbox, settle_seconds=settings.watch.settle_seconds, ignore=settings.watch.ignore
        )
        service = Service(
            settings,
            ledger=ledger,
            uploader=uploader,
            scanner=scanner,
            clock=self.clock.wall,
            monotonic=self.clock.monotonic,
            idle_wait=self.idle,
            reload_settings=lambda: self.settings,
            offload=Inline(),  # the file work's long reads at once: the same schedule gives the same run
        )
        service.idle_wait = self.booting_wait
        service.start()
        service.idle_wait = self.idle
        return service

    def fill_disk_under(self, ledger: Ledger) -> None:
        """While `ledger_full` is on, half the write transactions fail at their commit as on a full disk: rolled
        back whole, with the error SQLite gives. The seam is the ledger's transaction, the one place writes go."""
        world = self

        def failing(transaction: Callable[[], Any]) -> Callable[[], Any]:
            @contextlib.contextmanager
            def wrapped() -> Iterator[Any]:
                outermost = ledger._in_group() is None
                with transaction() as value:
                    yield value
                    if outermost and world.disk_full and world.disk_rng.random() < 0.5:
                        raise sqlite3.OperationalError("database or disk is full")

            return wrapped

        ledger.begin = failing(ledger.begin)  # type: ignore[method-assign]
        ledger.grouped = failing(ledger.grouped)  # type: ignore[method-assign]

    def horizon(self) -> float:
        """The clock time up to which nothing but the service's own deadlines can happen."""
        return min(self.next_event, self.clock.mono + self.service.next_wake())

    def booting_wait(self, until_work: float) -> None:
        """The idle wait while a process starts: no scheduled event runs meanwhile (a crash is being handled)."""
        self.clock.advance(until_work)

    def idle(self, until_work: float) -> None:
        """The service's idle wait: jump to its next deadline, or to the next scheduled event if that is sooner."""
        self.clock.advance(min(until_work, self.next_event - self.clock.mono))

    def crash(self) -> None:
        """kill -9: the process's memory is gone; what was committed stays."""
        if self.exited:
            return  # no process to kill
        self.crashes += 1
        self.service.ledger.close()
        self.service = self.boot()

    def apply(self, fault: Fault, on: bool) -> None:
        emu = self.emulator
        kind = fault.kind
        if self.verbose:
            print(f"t={self.elapsed():8.2f} {'on ' if on else 'off'} {kind} {fault.value or ''}")
        if kind == "upload_outage":
            emu.configure(outage=frozenset({"scm_upload", "scm_upload_async"} if on else ()))
        elif kind == "poll_outage":
            emu.configure(outage=frozenset({"scm_task"} if on else ()))
        elif kind == "fail":
            emu.configure(fail_rate=0.5 if on else 0.0)
        elif kind == "throttle":
            emu.configure(throttle_rate=0.5 if on else 0.0, retry_after_header=None)
        elif kind == "throttle_huge":
            emu.configure(throttle_rate=0.3 if on else 0.0, retry_after_header=100_000_000.0 if on else None)
        elif kind == "reset":
            emu.configure(reset_rate=0.4 if on else 0.0)
        elif kind == "hang":
            emu.configure(hang_rate=0.4 if on else 0.0, hang_seconds=60.0)
        elif kind == "applied_then_500":
            emu.configure(applied_then_500_rate=0.4 if on else 0.0)
        elif kind == "task_fail":
            emu.configure(task_fail_rate=0.5 if on else 0.0)
        elif kind == "task_missing":
            emu.configure(task_missing_rate=0.5 if on else 0.0)
        elif kind == "task_never":
            emu.configure(task_never_finishes=on)
        elif kind == "revoke":
            emu.configure(revoked=on)
            self.revoked = on
        elif kind == "refuse":
            self.adapter.refuse = on
        elif kind == "blackhole":
            self.adapter.blackhole = on
        elif kind in ("outbox_gone", "archive_gone"):
            folder = self.root / ("outbox" if kind == "outbox_gone" else "archive")
            away = self.root / f"{folder.name}.away"
            if on and folder.exists():
                folder.rename(away)
            elif not on and away.exists():
                away.rename(folder)
        elif kind == "ledger_full":
            self.disk_full = on
        elif kind == "clock_jump":
            self.clock.wall_offset += fault.value
        elif kind == "sighup":
            self.service.reload_requested = True
        elif kind == "crash":
            self.crash()

    def elapsed(self) -> float:
        return self.clock.mono - 1000.0

    def drop(self, index: int) -> None:
        """Copy a file into the inbox, as a copy tool does: written aside, then renamed over any file of that name."""
        drop = self.schedule.drops[index]
        path = self.root / "inbox" / drop.name
        earlier = self.in_inbox.get(drop.name)
        if earlier is not None and path.exists() and path.read_text() == self.schedule.drops[earlier].text(FIELDS):
            self.vanished[earlier] = True  # replaced before the service took it: that drop never reached it
        aside = path.with_name(f".{drop.name}.part")
        aside.write_text(drop.text(FIELDS))
        aside.replace(path)
        self.in_inbox[drop.name] = index
        self.dropped[index] = True
        if self.rng.random() < 0.7:
            self.service.wake.set()  # the watcher's event; without it the periodic scan finds the file
        if self.verbose:
            print(f"t={self.elapsed():8.2f} drop {drop.name} ({len(drop.rows)} rows)")

    def vanish(self, index: int) -> None:
        """Someone moves the file out of the inbox again (if the service has not taken it yet)."""
        path = self.root / "inbox" / self.schedule.drops[index].name
        mine = self.in_inbox.get(path.name) == index and path.exists()
        if mine and path.read_text() == self.schedule.drops[index].text(FIELDS):
            path.unlink()
            self.vanished[index] = True
            del self.in_inbox[path.name]

    def run(self) -> float:
        """Run the schedule, then heal and run until every file is final; returns the time that took."""
        events: list[tuple[float, int, Callable[[], None]]] = []
        for i, drop in enumerate(self.schedule.drops):
            events.append((drop.at, 0, lambda i=i: self.drop(i)))
            if drop.vanish_at is not None:
                events.append((drop.vanish_at, 1, lambda i=i: self.vanish(i)))
        for fault in self.schedule.faults:
            events.append((fault.at, 2, lambda f=fault: self.apply(f, True)))
            if fault.until is not None:
                events.append((fault.until, 3, lambda f=fault: self.apply(f, False)))
        events.sort(key=lambda e: (e[0], e[1]))
        for at, _, action in events:
            self.next_event = 1000.0 + at
            while self.elapsed() < at:
                self.turn()
            action()
        self.next_event = float("inf")
        healed = self.elapsed()
        self.heal()
        while not self.settled():
            if self.elapsed() - healed > HEAL_BOUND:
                raise AssertionError(f"not final {self.elapsed() - healed:.0f} s after healing: {self.open_work()}")
            self.turn()
        return self.elapsed() - healed

    def turn(self) -> None:
        self.turns += 1
        if self.turns > MAX_TURNS:
            raise AssertionError(
                f"{MAX_TURNS} turns of the loop by t={self.elapsed():.1f} s: a busy loop? {self.open_work()}"
            )
        before = self.clock.mono
        if self.exited:
            self.after_exit()
            return
        try:
            self.service.turn()
        except TokenRefusedError:
            # A process started while the token was refused ends with exit 3 and is not restarted by systemd;
            # the operator renews the token and starts it again.
            self.exited = True
            self.service.ledger.close()
            return
        if self.clock.mono == before:
            self.clock.advance(0.001)  # a turn that did work still takes a little time

    def after_exit(self) -> None:
        """No process runs: once the token is renewed the operator starts the service; until then time passes."""
        if not self.revoked:
            self.exited = False
            self.service = self.boot()
            return
        self.clock.advance(max(0.001, min(60.0, self.next_event - self.clock.mono)))

    def heal(self) -> None:
        self.revoked = False
        self.emulator.configure(
            outage=frozenset(),
            fail_rate=0.0,
            throttle_rate=0.0,
            retry_after_header=None,
            reset_rate=0.0,
            hang_rate=0.0,
            applied_then_500_rate=0.0,
            task_fail_rate=0.0,
            task_missing_rate=0.0,
            task_never_finishes=False,
            revoked=False,
        )
        self.adapter.refuse = self.adapter.blackhole = False
        for name in ("outbox", "archive"):
            away = self.root / f"{name}.away"
            if away.exists():
                away.rename(self.root / name)
        self.service.reload_requested = True  # as an operator would after fixing things: SIGHUP

    def settled(self) -> bool:
        ledger = self.service.ledger
        open_files = ledger.files([FileState.RECEIVED, FileState.ACTIVE, FileState.REPORTING])
        return not open_files and not self.service.uploader.busy and not self.inbox_files()

    def inbox_files(self) -> list[str]:
        return sorted(p.name for p in (self.root / "inbox").iterdir() if p.is_file())

    def open_work(self) -> dict[str, Any]:
        with sqlite3.connect(self.settings.paths.ledger) as db:
            files = db.execute("SELECT name, state, delivery_error FROM files WHERE state<>'done'").fetchall()
            batches = db.execute(
                "SELECT id, kind, state, failures, next_attempt_at, last_error FROM batches "
                "WHERE state IN ('queued','sending','submitted')"
            ).fetchall()
        return {
            "files": files,
            "batches": batches[:5],
            "inbox": self.inbox_files(),
            "pause": self.service.uploader.pause,
        }


def check(world: World) -> None:
    """The invariants of a healed run."""
    schedule = world.schedule
    outbox = world.root / "outbox"
    summaries = sorted(outbox.glob("*.summary.json"))
    expected_files = sum(1 for d, v in zip(world.dropped, world.vanished, strict=True) if d and not v)
    with sqlite3.connect(world.settings.paths.ledger) as db:
        files = db.execute("SELECT id, name, state, outcome, report_base FROM files").fetchall()
        rows = db.execute("SELECT file_id, key, status, detail, cells FROM rows").fetchall()
        batches = db.execute("SELECT state FROM batches WHERE state IN ('queued','sending','submitted')").fetchall()
    # One final report per file that reached the service; none for one that vanished before it was claimed.
    assert len(files) == expected_files, (files, world.dropped, world.vanished)
    assert all(state == "done" for _, _, state, _, _ in files), files
    assert len(summaries) == expected_files, [s.name for s in summaries]
    assert len({base for *_, base in files}) == len(files)  # no report overwritten
    assert not batches
    assert not list(outbox.glob(".*.tmp"))
    # Every row final; nothing rejected (no defective data was dropped).
    data_by_code = {code: data for d in schedule.drops for code, data in d.rows}
    emu_data = world.emulator.all_data("extended_id")
    for _file_id, key, status, detail, _cells in rows:
        assert status in FINAL_ROW_STATES, (key, status, detail)
        assert status != "rejected", (key, detail)
        if status in ("uploaded", "not_affected"):
            # "uploaded" only on the API's word: the API holds the row's data (listed, task complete, or applied
            # by an earlier attempt that reached it).
            assert emu_data.get(key) == data_by_code[key], (key, status, detail, emu_data.get(key))
        if status == "failed":
            assert (
                f"after {MAX_ATTEMPTS} failed attempts" in detail
                or "ended in state" in detail
                or "not found (404)" in detail
                or "poll.timeout_seconds" in detail
            ), (key, detail)
    # Nothing wrong at the API: every code it holds has exactly the data its file says.
    for code, data in emu_data.items():
        assert data_by_code.get(code) == data, (code, data)
    # Re-sends are bounded by what can legitimately cause them: crashes and ambiguous failures.
    stats = world.emulator.stats()
    resent = sum(max(0, world.emulator.transactions("extended_id", c) - 1) for c in emu_data)
    allowed = (world.crashes * WORKERS + stats.applied_then_500 + stats.hangs + stats.resets) * BATCH * 2
    assert resent <= allowed, (resent, allowed)


def fingerprint(world: World) -> str:
    """A digest of what a run did (every row's fate, every request the API saw): equal for equal runs."""
    with sqlite3.connect(world.settings.paths.ledger) as db:
        rows = db.execute("SELECT file_id, line, status, detail, batch_id FROM rows ORDER BY file_id, line").fetchall()
        batches = db.execute("SELECT id, state, attempts, task_id FROM batches ORDER BY id").fetchall()
    stats = world.emulator.stats()
    seen = (rows, batches, sorted(stats.requests.items()), stats.total_requests, world.elapsed())
    return hashlib.sha256(repr(seen).encode()).hexdigest()[:16]


def run_seed(seed: int, *, verbose: bool = False, keep: bool = False) -> dict[str, Any]:
    """One schedule; raises AssertionError (with the seed's replay command) when an invariant breaks."""
    schedule = make_schedule(seed)
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - tmpfs: fsync is free
    root = Path(tempfile.mkdtemp(prefix=f"scm-sim-{seed}-", dir=base))
    world = None
    try:
        world = World(schedule, root, verbose=verbose)
        heal_time = world.run()
        check(world)
        return {
            "seed": seed,
            "heal_time": heal_time,
            "crashes": world.crashes,
            "faults": len(schedule.faults),
            "turns": world.turns,
            "fingerprint": fingerprint(world),
        }
    except Exception as exc:
        raise AssertionError(
            f"simulation seed {seed} failed: {type(exc).__name__}: {exc}\n"
            f"replay: .venv/bin/python tests/simulation.py --seed {seed} -v"
        ) from exc
    finally:
        if world is not None:
            world.service.ledger.close()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def quiet_logs() -> None:
    """The service logs every step; thousands of schedules need none of it."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50), cache_logger_on_first_use=False)


def run_many(first: int, count: int) -> tuple[int, list[str]]:
    """Run seeds first..first+count-1; how many passed, and the failures' messages."""
    quiet_logs()
    warnings.simplefilter("error")  # as under pytest: a deprecation in a code path is found here too
    failures = []
    for seed in range(first, first + count):
        try:
            run_seed(seed)
        except AssertionError as exc:
            failures.append(str(exc))
    return count - len(failures), failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, help="replay this one schedule")
    parser.add_argument("--schedules", type=int, default=2000)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the seed's folder for a look")
    args = parser.parse_args()
    if args.seed is not None:
        if not args.verbose:
            quiet_logs()
        print(json.dumps(run_seed(args.seed, verbose=args.verbose, keep=args.keep)))
        return 0
    started = time.monotonic()
    passed, failed = run_parallel(args.first, args.schedules, args.jobs)
    for message in failed:
        print(message, file=sys.stderr)
    print(f"{passed} passed, {len(failed)} failed in {time.monotonic() - started:.1f} s (simulated schedules)")
    return 1 if failed else 0


def run_parallel(first: int, schedules: int, jobs: int) -> tuple[int, list[str]]:
    """Seeds first.. in chunks over `jobs` processes; how many passed, and every failure's message."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    chunk = max(1, schedules // (jobs * 8))
    passed, failed = 0, []
    # spawn: the caller (pytest) has threads of its own, and fork() with threads can deadlock.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(run_many, s, min(chunk, first + schedules - s)) for s in range(first, first + schedules, chunk)
        ]
        for future in futures:
            ok, messages = future.result()
            passed += ok
            failed += messages
    return passed, failed


if __name__ == "__main__":
    sys.exit(main())
