"""Benchmark: drop-to-report latency of the running service for a small file, against the emulator.

Usage: .venv/bin/python bench/latency.py [--drops 5] [--settle 2] [--rows 10] [--limit 10]
Starts `python -m daemon run -c CONFIG` (the long-running service, not --once), waits until it watches its inbox,
then drops files one at a time the way a copy does (written under a hidden name, then renamed) and times each from
the rename to the appearance of its `<stem>.summary.json` in the outbox. Ends the service with SIGTERM.
Budget: drop-to-report for a 10-row file = settle time + under 2 s.
"""

import argparse
import contextlib
import json
import os
import platform
import random
import shlex
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.sandbox import Emulator, EmulatorConfig

TOKEN = EmulatorConfig().token  # the emulator's well-known default, not a secret
BUDGET = 2.0  # seconds over the settle time
POLL = 0.005  # seconds between looks at the outbox
READY_EVENTS = ('"watcher_started"', '"watcher_unavailable"')  # the inbox is watched (or only scanned) from here


def write_config(root: Path, base_url: str, settle: float) -> Path:
    """A deployment on the default settings, but for the emulator's address and the settle time asked for."""
    lines = [
        "[api]",
        f"base_url = {json.dumps(base_url)}",
        "requests_per_second = 10",
        "",
        "[watch]",
        f"settle_seconds = {settle}",
        "",
        "[paths]",
        'ledger = "state/ledger.sqlite3"',
        "",
    ]
    (root / "inbox").mkdir(parents=True)
    path = root / "config.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def small_file(rows: int, rnd: random.Random) -> str:
    """A CSV of `rows` fresh random codes, each with its own data (so auto mode sends it in one sync call)."""
    alphabet = string.ascii_letters + string.digits
    lines = ["extended_id,batch,intended_market"]
    for i in range(rows):
        code = "".join(rnd.choices(alphabet, k=12))
        lines.append(f"{code},L{rnd.randrange(10**8):08d}{i:03d},de")
    return "\r\n".join(lines) + "\r\n"


def log_tail(root: Path) -> str:
    path = root / "service.log"
    return path.read_text(encoding="utf-8", errors="replace")[-3000:] if path.exists() else ""


def wait_ready(root: Path, process: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait until the service logged service_started and its inbox watcher; seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited {process.returncode} before it was ready\n{log_tail(root)}")
        text = (root / "service.log").read_text(encoding="utf-8", errors="replace")
        if '"service_started"' in text and any(event in text for event in READY_EVENTS):
            return time.monotonic() - started
        time.sleep(0.02)
    raise RuntimeError(f"the service was not ready within {timeout} s\n{log_tail(root)}")


def drop(root: Path, name: str, content: str, timeout: float) -> tuple[float, dict[str, Any]]:
    """Drop a file atomically into the inbox; seconds from the rename to its summary, and the summary."""
    hidden = root / "inbox" / f".{name}.part"
    hidden.write_text(content, encoding="utf-8")
    summary = root / "outbox" / f"{Path(name).stem}.summary.json"
    renamed = time.monotonic()
    hidden.rename(root / "inbox" / name)
    while not summary.exists():
        if time.monotonic() - renamed > timeout:
            raise RuntimeError(f"no {summary.name} within {timeout} s of the drop\n{log_tail(root)}")
        time.sleep(POLL)
    elapsed = time.monotonic() - renamed
    return elapsed, json.loads(summary.read_text(encoding="utf-8"))


def stop(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    """SIGTERM and wait; None (after a SIGKILL) if it did not exit in time."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)
        return None


@contextlib.contextmanager
def service(root: Path, config: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The service as a child process, its output in service.log; never left running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCM_")}
    env.update({"SCM_API__TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"})
    with (root / "service.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "-c", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=env,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=15)


@dataclass(frozen=True)
class Measurement:
    """What the drops took, and how the service ended."""

    ready: float  # seconds from the service's start to its watching the inbox
    drops: list[tuple[str, float, dict[str, Any]]]  # name, seconds from rename to summary, the summary
    exit_code: int | None  # after SIGTERM; None if it had to be killed
    throttled: int


def measure(args: argparse.Namespace) -> Measurement:
    """Run the emulator and the service in a temporary folder, drop the files one by one, stop the service."""
    rnd = random.Random(5)
    drops: list[tuple[str, float, dict[str, Any]]] = []
    emulator = Emulator(EmulatorConfig(token=TOKEN, rate_limit=args.limit or None, latency=0.0))
    emulator.start(host="127.0.0.1")
    with tempfile.TemporaryDirectory(prefix="scm-bench-latency-") as scratch, emulator:
        root = Path(scratch)
        config = write_config(root, emulator.base_url, args.settle)
        with service(root, config) as process:
            ready = wait_ready(root, process, args.timeout)
            for k in range(1, args.drops + 1):
                # A gap lets the previous file's move to archive/ leave the watcher's event queue first: watchdog
                # holds an unpaired move-out 0.5 s, and events behind it wait too (see --gap 0).
                time.sleep(args.gap if k > 1 else 0)
                name = f"drop-{k}.csv"
                elapsed, summary = drop(root, name, small_file(args.rows, rnd), args.timeout + args.settle)
                drops.append((name, elapsed, summary))
            exit_code = stop(process, timeout=30)
        if exit_code != 0:
            print(log_tail(root), file=sys.stderr)
        return Measurement(ready, drops, exit_code, emulator.stats().throttled)


def report(args: argparse.Namespace, m: Measurement) -> list[str]:
    """Print the figures; return the budget lines missed."""
    times = [elapsed for _, elapsed, _ in m.drops]
    median = statistics.median(times)
    over = median - args.settle
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print("service: SCM_API__TOKEN=sandbox-token python -m daemon run -c CONFIG (a temporary deployment)")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}"
    )
    limit = f"{args.limit:g}/s" if args.limit else "none"
    print(f"emulator: latency 0 s, rate_limit {limit}; service ready {m.ready:.2f} s after start")
    print(f"settle_seconds in force: {args.settle:g}; {args.gap:g} s between a report and the next drop")
    for name, elapsed, summary in m.drops:
        rows = summary.get("rows", {})
        print(
            f"{name}: {elapsed:.3f} s = settle + {elapsed - args.settle:.3f} s "
            f"(status {summary.get('status')}, {rows.get('uploaded')}/{rows.get('total')} uploaded, "
            f"{summary.get('api_calls')} API call)"
        )
    print(f"median: {median:.3f} s = settle time + {over:.3f} s (budget: settle time + under {BUDGET:g} s)")
    print(f"worst: {max(times):.3f} s = settle time + {max(times) - args.settle:.3f} s")
    print(f"429s seen: {m.throttled}; SIGTERM: exit {m.exit_code}")
    missed = []
    if over >= BUDGET:
        missed.append(f"median is settle + {over:.3f} s, not under {BUDGET:g} s")
    if m.exit_code != 0:
        missed.append(f"the service exited {m.exit_code} after SIGTERM (None: killed)")
    bad = [n for n, _, s in m.drops if s.get("status") != "completed" or s.get("rows", {}).get("uploaded") != args.rows]
    if bad:
        missed.append(f"not completed with every row uploaded: {', '.join(bad)}")
    if m.throttled:
        missed.append(f"{m.throttled} requests were throttled (429)")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drops", type=int, default=5, help="files dropped one after the other")
    parser.add_argument("--rows", type=int, default=10, help="rows per file")
    parser.add_argument("--settle", type=float, default=2.0, help="watch.settle_seconds (the default is 2)")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between a report and the next drop")
    parser.add_argument("--limit", type=float, default=10.0, help="the emulator's rate limit per second; 0 = none")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a drop (or the start) may take")
    args = parser.parse_args()
    if args.drops < 1 or args.rows < 1 or args.settle < 0 or args.gap < 0:
        parser.error("--drops and --rows must be positive, --settle and --gap >= 0")
    missed = report(args, measure(args))
    print(f"budget: {'met' if not missed else 'MISSED'}")
    for line in missed:
        print(f"  missed: {line}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
