"""Benchmark: ingest a generated CSV into a fresh ledger (hash, parse, normalize, insert, in-file dedup).

Usage: .venv/bin/python bench/ingest_csv.py [--rows 1000000] [--keep DIR]
Prints rows/s and the process's peak RSS. The budget (DESIGN.md §3): >= 100,000 rows/s, peak RSS <= 200 MB.
"""

import argparse
import platform
import random
import resource
import string
import sys
import tempfile
import time
from pathlib import Path

from daemon.config import Settings
from daemon.intake import take
from daemon.ledger import Ledger

MARKETS = ("cn", "de", "fr", "us", "jp", "br")


def generate(path: Path, rows: int) -> None:
    """A production-line export: random 12-character codes (as Scantrust's are), market, date, batch, order."""
    rnd = random.Random(7)
    alphabet = string.ascii_letters + string.digits
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("extended_id,intended_market,production_date,batch,purchase_number\r\n")
        for i in range(rows):
            code = "".join(rnd.choices(alphabet, k=12))
            f.write(f"{code},{MARKETS[i % 6]},2026-{1 + i % 12:02d}-{1 + i % 28:02d},L{i // 5000},PO{i // 20000}\r\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scm-bench-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / "bench.csv"
        generate(source, args.rows)
        size_mb = source.stat().st_size / 1e6
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ledger = Ledger(folder / "bench.sqlite3")
        started = time.perf_counter()
        file_id = take(source, ledger, Settings())
        elapsed = time.perf_counter() - started
        counts = ledger.row_counts(file_id) if file_id else {}
        ledger.close()
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    print(f"rows: {args.rows:,} ({size_mb:.0f} MB of CSV)")
    print(f"statuses: {dict((str(k), v) for k, v in counts.items())}")
    print(f"ingest: {elapsed:.2f} s, {args.rows / elapsed:,.0f} rows/s")
    print(f"peak RSS: {peak_mb:.0f} MB (before ingest: {rss_before / 1024:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
