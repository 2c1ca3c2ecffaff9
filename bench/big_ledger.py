"""Benchmark: a ledger of ten million rows stays fast (issue 13, item 7): status, a new file, prune.

Usage: .venv/bin/python bench/big_ledger.py [--rows 10000000] [--new 10000] [--keep DIR] [--no-prune]
Builds the ledger once with bench/status.py's builder (done files of a million rows, one file at work), and
fills `codes` with the last upload of every done row, as a real ledger of that size holds. With --keep DIR it is
kept there and reused; every run works on a copy of it, so prune never eats the kept one.

1. `scm-daemon status --json`, the whole process, three times.
2. A new file of --new rows (codes of done files, codes still open in the file at work, repeats within the file,
   new codes) taken the service's way (intake.claim, FileFlow.read, FileFlow.plan) into the big ledger and into an
   empty one. The time is split into the parse (reading and normalizing the rows: the row iterator the ledger
   consumes), the ledger's methods (each one timed), and the rest (hashing the file, the planner).
3. `scm-daemon prune --older-than 7` of the done files but the last (made 30 days old): its wall time, the rows
   dropped, its peak RSS (VmHWM), and, from another connection writing a small transaction every 10 ms as the
   service's answers do, the longest wait for the write lock (the longest prune transaction, as uploads feel it).
Budgets: status < 1 s; the new file < 1 s beyond its parse; prune's writer wait < 1 s, memory bounded.
"""

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import sqlite3
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import status as status_bench
from peak import PeakRss

from daemon import intake
from daemon.config import Settings
from daemon.flow import FileFlow
from daemon.ledger import Ledger
from daemon.logs import configure_logging
from daemon.states import FileState
from daemon.watcher import InboxScanner

# The ledger methods a new file goes through, from its claim to its batches: each is timed.
TIMED = (
    "add_file",
    "file",
    "files",
    "set_file",
    "processed",
    "insert_rows",
    "discard_rows",
    "resolve_in_file_duplicates",
    "transition_file",
    "skip_uploaded",
    "files_in_flight",
    "plannable_groups",
    "add_batches",
    "has_pending_rows",
)


class TimedLedger(Ledger):
    """The real ledger, with the time spent in each method of TIMED, and in the row iterator it consumes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.spent: dict[str, float] = {}
        self.parse = 0.0
        for name in TIMED:
            setattr(self, name, self._timed(name, getattr(self, name)))

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if name == "insert_rows":
                args = (args[0], self._parsing(args[1]))
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - started

        return timed

    def _parsing(self, rows: Iterator[Any]) -> Iterator[Any]:
        """The rows as read and normalized by intake, with the time spent making them."""
        while True:
            started = time.perf_counter()
            try:
                row = next(rows)
            except StopIteration:
                self.parse += time.perf_counter() - started
                return
            self.parse += time.perf_counter() - started
            yield row

    def in_ledger(self) -> float:
        """Time in the ledger's methods, the parse inside insert_rows taken out."""
        return sum(self.spent.values()) - self.parse


def build(path: Path, rows: int) -> None:
    """bench/status.py's ledger, plus `codes` as the done rows' uploads would have left it."""
    partial = path.with_name(path.name + ".partial")
    for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        leftover.unlink(missing_ok=True)
    started = time.perf_counter()
    status_bench.build(partial, rows)
    ledger = Ledger(partial)
    for (file_id,) in _query(ledger, "SELECT id FROM files WHERE state='done' ORDER BY id"):
        with ledger.engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO codes (data_key, key, data_hash, file_id, line, uploaded_at) "
                "SELECT 'extended_id', key, data_hash, file_id, line, ? FROM rows "
                "WHERE file_id=? AND status='uploaded'",
                (ledger.now(), file_id),
            )
        print(f"  codes of file {file_id} recorded", flush=True)
    ledger.close()
    partial.rename(path)
    print(f"built the ledger in {time.perf_counter() - started:.0f} s ({path.stat().st_size / 1e9:.1f} GB)")


def _query(ledger: Ledger, sql: str, *params: Any) -> list[Any]:
    with ledger.engine.connect() as conn:
        return list(conn.exec_driver_sql(sql, params).all())


def copy_ledger(source: Path, target: Path) -> float:
    for old in (target, Path(f"{target}-wal"), Path(f"{target}-shm")):
        old.unlink(missing_ok=True)
    started = time.perf_counter()
    shutil.copyfile(source, target)
    # On disk before anything is timed: else the first checkpoint's fsync writes the whole copy out.
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - started


def time_status(ledger_path: Path, folder: Path) -> list[float]:
    env = {**os.environ, "SCM_PATHS__LEDGER": str(ledger_path), "SCM_PATHS__INBOX": str(folder)}
    command = [sys.executable, "-m", "daemon", "status", "--json"]
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, text=True, env=env, cwd=folder, check=True)
        timings.append(time.perf_counter() - started)
    return timings


def new_file(path: Path, rows: int, big: Path) -> dict[str, int]:
    """A CSV of `rows` rows: 30 % codes of the big ledger's done files (already uploaded, with other data), 20 %
    codes still open in its file at work (they wait for it), 1 % repeats within the file, the rest new codes."""
    rnd = random.Random(11)
    done = [int(i) for (i,) in _read(big, "SELECT id FROM files WHERE state='done' ORDER BY id")]
    active = [int(i) for (i,) in _read(big, "SELECT id FROM files WHERE state='active' ORDER BY id")]
    mix = {"uploaded before": rows * 30 // 100, "open in an earlier file": rows * 20 // 100, "repeats": rows // 100}
    mix["new"] = rows - sum(mix.values())
    codes: list[str] = []
    for _ in range(mix["uploaded before"]):
        codes.append(_status_code(rnd.choice(done) - 1, rnd.randrange(2, 100_000)))
    for _ in range(mix["open in an earlier file"]):
        codes.append(_status_code(rnd.choice(active) - 1, rnd.randrange(2, 100_000)))
    alphabet = string.ascii_letters + string.digits
    codes += ["".join(rnd.choices(alphabet, k=12)) for _ in range(mix["new"])]
    lines = [f"{code},LOT{n // 1000:04d},de,2026-11-{1 + n % 28:02d}\r\n" for n, code in enumerate(codes)]
    lines += rnd.sample(lines, mix["repeats"])  # the same line again: skipped as a repeat within the file
    rnd.shuffle(lines)
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("extended_id,batch,intended_market,production_date\r\n")
        f.writelines(lines)
    return mix


def _status_code(n: int, line: int) -> str:
    """The code bench/status.py gives row `line` of its file number `n` (files are numbered from 0, ids from 1)."""
    return f"C{n:03d}{line:09d}"


def take_new_file(ledger_path: Path, folder: Path, source: Path) -> dict[str, Any]:
    """Claim, read and plan a copy of `source` through the service's own FileFlow; the figures of each part."""
    inbox = folder / "inbox"
    shutil.rmtree(inbox, ignore_errors=True)
    inbox.mkdir()
    shutil.copyfile(source, inbox / "new.csv")
    settings = Settings.model_validate({"paths": {"inbox": inbox, "ledger": ledger_path, "outbox": folder / "out"}})
    ledger = TimedLedger(ledger_path)
    ledger.spent.clear()
    flow = FileFlow(
        settings,
        ledger=ledger,
        scanner=InboxScanner(inbox, settle_seconds=0, ignore=[]),
        wake=threading.Event(),
        stopping=threading.Event(),
        monotonic=time.monotonic,
    )
    started = time.perf_counter()
    file_id, claimed = intake.claim(inbox / "new.csv", ledger, settings)
    claim_s = time.perf_counter() - started
    flow.read(file_id, claimed)
    while flow.reading():
        flow.read_some()
    assert ledger.file(file_id).state is FileState.ACTIVE, "the new file was not read"
    read_s = time.perf_counter() - started - claim_s
    parse_s = ledger.parse
    flow.plan()
    total = time.perf_counter() - started
    counts = {str(k): v for k, v in ledger.row_counts(file_id).items()}
    batches = _query(ledger, "SELECT count(*) FROM batches WHERE file_id=?", file_id)[0][0]
    assert ledger.file(file_id).state is FileState.ACTIVE
    in_ledger = ledger.in_ledger()
    spent = dict(sorted(ledger.spent.items(), key=lambda kv: -kv[1]))
    spent["insert_rows"] -= ledger.parse
    ledger.close()
    return {
        "counts": counts,
        "batches": batches,
        "total": total,
        "claim": claim_s,
        "read": read_s,
        "parse": parse_s,
        "plan": total - claim_s - read_s,
        "ledger": in_ledger,
        "other": total - parse_s - in_ledger,
        "spent": spent,
    }


class WriterProbe(threading.Thread):
    """Another connection writing one small transaction every 10 ms, as the service records answers: how long
    each waited for the write lock (what prune's transactions cost it), and how long the whole write took (with
    its commit's fsync, which a busy disk makes slow whoever holds the lock)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.lock_waits: list[float] = []
        self.writes: list[float] = []
        self.wal_peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=600, isolation_level=None)
        conn.execute("PRAGMA synchronous=FULL")
        wal = Path(f"{self.path}-wal")
        n = 0
        while not self.stop.is_set():
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            locked = time.perf_counter()
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('bench_probe', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (str(n),),
            )
            conn.execute("COMMIT")
            self.lock_waits.append(locked - started)
            self.writes.append(time.perf_counter() - started)
            n += 1
            with contextlib.suppress(FileNotFoundError):
                self.wal_peak = max(self.wal_peak, wal.stat().st_size)
            time.sleep(0.01)
        conn.close()

    def figures(self, since: int = 0) -> dict[str, float]:
        """Longest and 99th-percentile lock wait and write, of the writes from number `since` on."""
        waits, writes = sorted(self.lock_waits[since:]), sorted(self.writes[since:])
        return {
            "writes": len(writes),
            "longest_wait": waits[-1],
            "p99_wait": waits[int(len(waits) * 0.99)],
            "longest_write": writes[-1],
            "p99_write": writes[int(len(writes) * 0.99)],
        }


def prune(ledger_path: Path, folder: Path) -> dict[str, Any]:
    """Make the done files but the last 30 days old, then `scm-daemon prune --older-than 7` beside a writer."""
    ledger = Ledger(ledger_path)
    done = [int(i) for (i,) in _query(ledger, "SELECT id FROM files WHERE state='done' ORDER BY id")]
    old = (datetime.now(UTC) - timedelta(days=30)).isoformat(timespec="milliseconds")
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE files SET finished_at=? WHERE id IN ({','.join(map(str, done[:-1]))})", (old,))
    old_rows = sum(
        sum(json.loads(c).values())
        for (c,) in _query(ledger, f"SELECT counts FROM files WHERE id IN ({','.join(map(str, done[:-1]))})")
    )
    ledger.close()
    env = {**os.environ, "SCM_PATHS__LEDGER": str(ledger_path), "SCM_PATHS__INBOX": str(folder)}
    probe = WriterProbe(ledger_path)
    probe.start()
    time.sleep(3.0)  # the writer alone first: the disk's own pace
    alone = probe.figures()
    since = len(probe.writes)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "daemon", "prune", "--older-than", "7"],
        env=env,
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak = PeakRss(process.pid)
    assert process.stdout is not None
    output = process.stdout.read()
    os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped yet
    peak_mb = peak.stop()
    process.wait()
    wall = time.perf_counter() - started
    probe.stop.set()
    probe.join()
    if process.returncode != 0:
        raise SystemExit(f"prune failed ({process.returncode}):\n{output}")
    left = sqlite3.connect(ledger_path).execute("SELECT count(*) FROM rows").fetchone()[0]
    return {
        "old_rows": old_rows,
        "output": output.strip(),
        "wall": wall,
        "peak_rss_mb": peak_mb,
        "rows_left": left,
        "alone": alone,
        "beside": probe.figures(since),
        "wal_peak_mb": probe.wal_peak / 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows in done files")
    parser.add_argument("--new", type=int, default=10_000, help="rows of the new file taken into the ledger")
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the built ledger in this folder")
    parser.add_argument("--no-prune", action="store_true", help="skip the prune part")
    args = parser.parse_args()
    configure_logging(level="warning", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="scm-bench-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        base = folder / f"big-{args.rows}.sqlite3"
        if not base.exists():
            build(base, args.rows)
        work = folder / "work.sqlite3"
        copied = copy_ledger(base, work)
        status_times = time_status(work, folder)
        small = folder / "empty.sqlite3"
        for old in (small, Path(f"{small}-wal"), Path(f"{small}-shm")):
            old.unlink(missing_ok=True)
        source = folder / f"new-{args.new}.csv"
        mix = new_file(source, args.new, base)
        baseline = take_new_file(small, folder, source)
        taken = take_new_file(work, folder, source)
        pruned = None if args.no_prune else prune(work, folder)
        total_rows = sum(
            sum(json.loads(c).values()) for (c,) in _read(base, "SELECT counts FROM files WHERE counts IS NOT NULL")
        )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} cores (shared: figures vary)"
    )
    print(f"ledger: {total_rows:,} rows in done files + one file at work; copied for this run in {copied:.1f} s")
    print(f"`scm-daemon status --json`: {', '.join(f'{t:.2f}' for t in status_times)} s (whole process)")
    for label, t in (("empty ledger", baseline), ("big ledger", taken)):
        print(
            f"new file of {args.new:,} rows into the {label}: {t['total']:.2f} s = parse {t['parse']:.2f} s "
            f"+ ledger {t['ledger']:.2f} s + other {t['other']:.2f} s (claim {t['claim']:.2f}, read {t['read']:.2f}, "
            f"plan {t['plan']:.2f}); beyond the parse: {t['total'] - t['parse']:.2f} s"
        )
        print("  ledger methods: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in t["spent"].items() if v >= 0.001))
        print(f"  rows {t['counts']}, {t['batches']} batches")
    print(f"  the new file's codes: {mix}")
    ok = min(status_times) < 1.0 and taken["total"] - taken["parse"] < 1.0
    if pruned is not None:
        print(
            f"prune of {pruned['old_rows']:,} old rows: {pruned['wall']:.1f} s, "
            f"peak RSS {pruned['peak_rss_mb']:.0f} MB, {pruned['rows_left']:,} rows left"
        )
        print(f"  {pruned['output'].splitlines()[-1]}")
        beside, alone = pruned["beside"], pruned["alone"]
        print(
            f"  a writer beside it ({beside['writes']:,} transactions): waited for the lock "
            f"{beside['longest_wait']:.3f} s at most (99th percentile {beside['p99_wait']:.3f} s); "
            f"whole write with its fsync {beside['longest_write']:.3f} s at most "
            f"(99th percentile {beside['p99_write']:.3f} s); "
            f"WAL peak {pruned['wal_peak_mb']:.0f} MB"
        )
        print(
            f"  the same writer alone before ({alone['writes']} transactions): "
            f"longest write {alone['longest_write']:.3f} s (99th percentile {alone['p99_write']:.3f} s)"
        )
        ok = ok and beside["longest_wait"] < 1.0
    return 0 if ok else 1


def _read(path: Path, sql: str) -> list[Any]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
