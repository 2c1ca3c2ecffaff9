"""Benchmark: plan 1,000,000 rows, in the pure planner and through the ledger (skip, group, create batches).

Usage: .venv/bin/python bench/plan.py [--rows 1000000] [--groups 2000]
Budget: planning 1,000,000 rows < 5 s.
"""

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

from daemon.ledger import Ledger
from daemon.planner import plan
from daemon.states import FileState


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--groups", type=int, default=2000, help="distinct sets of SCM data among the rows")
    parser.add_argument("--mode", default="auto", choices=["sync", "async", "auto"])
    args = parser.parse_args()
    rnd = random.Random(3)
    # Production lots of very different sizes: a few huge, many small, like real exports.
    weights = [1 / (g + 1) for g in range(args.groups)]
    hashes = [f"{g:032x}" for g in range(args.groups)]
    assignment = rnd.choices(range(args.groups), weights=weights, k=args.rows)

    groups: dict[str, list[int]] = {}
    for line, g in enumerate(assignment, start=2):
        groups.setdefault(hashes[g], []).append(line)
    started = time.perf_counter()
    p = plan(groups, mode=args.mode, sync_batch_size=100, async_batch_size=1000)
    pure = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="scm-bench-") as scratch:
        ledger = Ledger(Path(scratch) / "plan.sqlite3")
        file_id = ledger.add_file(
            sha256="0" * 64, name="plan.csv", path="plan.csv", size=0, data_key="extended_id", mode=args.mode
        )
        records = (
            (line, f"CODE{line:010d}", hashes[g], json.dumps([f"CODE{line:010d}", "x"]), "pending", "")
            for line, g in enumerate(assignment, start=2)
        )
        ledger.insert_rows(file_id, records)
        ledger.transition_file(file_id, FileState.ACTIVE)
        started = time.perf_counter()
        ledger.skip_uploaded(file_id, "extended_id")
        found = ledger.plannable_groups(file_id)
        p2 = plan(found, mode=args.mode, sync_batch_size=100, async_batch_size=1000)
        ledger.add_batches(file_id, [(b.kind, b.lines, b.data_hash) for b in p2.batches])
        through_ledger = time.perf_counter() - started
        ledger.close()

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    print(f"rows: {args.rows:,} in {p.groups:,} groups, mode {args.mode}")
    print(
        f"plan: {p.async_jobs:,} async jobs + {p.sync_calls:,} sync calls = {p.api_calls:,} calls "
        f"(sync alone: {p.sync_only_calls:,})"
    )
    print(f"pure planner: {pure:.2f} s")
    print(f"through the ledger (skip, group, plan, create batches, queue rows): {through_ledger:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
