"""Benchmark: `scm-daemon status` on a ledger of 10,000,000 rows (budget: under 1 s).

Usage: .venv/bin/python bench/status.py [--rows 10000000] [--keep DIR]
Builds the ledger once (ten done files of a million rows and one file at work), then times the real command.
With --keep DIR the ledger is kept there and reused by the next run.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from daemon.ledger import Ledger
from daemon.states import FileState

PER_FILE = 1_000_000


def build(path: Path, rows: int) -> None:
    """Files of PER_FILE rows, all done, plus one active file of 100,000 rows."""
    ledger = Ledger(path)
    cells = json.dumps(["CODE", "cn", "2026-11-01", "L1"])
    for n in range(-(-rows // PER_FILE) + 1):
        size = min(PER_FILE, rows - n * PER_FILE) if n * PER_FILE < rows else 100_000
        file_id = ledger.add_file(
            sha256=f"{n:064x}", name=f"f{n}.csv", path=f"/in/f{n}.csv", size=0, data_key="extended_id", mode="auto"
        )
        status = "uploaded" if n * PER_FILE < rows else "queued"
        ledger.insert_rows(
            file_id, ((line, f"C{n:03d}{line:09d}", "h" * 32, cells, status, "") for line in range(2, size + 2))
        )
        if status == "uploaded":
            ledger.transition_file(file_id, FileState.REPORTING, outcome="completed")
            ledger.transition_file(file_id, FileState.DONE)
        else:
            ledger.transition_file(file_id, FileState.ACTIVE)
        print(f"  built file {n}: {size:,} rows", flush=True)
    ledger.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows in done files")
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the ledger in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scm-bench-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        ledger_path = folder / f"status-{args.rows}.sqlite3"
        if not ledger_path.exists():
            started = time.perf_counter()
            build(ledger_path, args.rows)
            print(
                f"built the ledger in {time.perf_counter() - started:.0f} s ({ledger_path.stat().st_size / 1e9:.1f} GB)"
            )
        env = {**os.environ, "SCM_PATHS__LEDGER": str(ledger_path), "SCM_PATHS__INBOX": str(folder)}
        command = [sys.executable, "-m", "daemon", "status", "--json"]
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=folder, check=True)
            timings.append(time.perf_counter() - started)
        rows = json.loads(out.stdout)["rows"]
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    print(f"ledger rows: {sum(rows.values()):,} {rows}")
    print(
        f"`scm-daemon status --json`: {', '.join(f'{t:.2f}' for t in timings)} s (whole process, Python start included)"
    )
    return 0 if min(timings) < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
