"""Benchmark: ingest a generated XLSX into a fresh ledger (hash, read, normalize, insert, in-file dedup).

Usage: .venv/bin/python bench/ingest_xlsx.py [--rows 200000] [--keep DIR]
Prints rows/s and the process's peak RSS. The budget (DESIGN.md §3): >= 60,000 rows/s.
The workbook is what Excel users send: text codes, a number column, a date column with a date format.
"""

import argparse
import datetime as dt
import platform
import random
import resource
import string
import sys
import tempfile
import time
from pathlib import Path

import xlsxwriter

from daemon.config import Settings
from daemon.intake import take
from daemon.ledger import Ledger

MARKETS = ("cn", "de", "fr", "us", "jp", "br")


def generate(path: Path, rows: int) -> None:
    """Random 12-character codes (as Scantrust's are), market, a real date cell, batch, and a quantity number."""
    rnd = random.Random(7)
    alphabet = string.ascii_letters + string.digits
    workbook = xlsxwriter.Workbook(str(path), {"constant_memory": True})
    sheet = workbook.add_worksheet("Codes")
    date_format = workbook.add_format({"num_format": "yyyy-mm-dd"})
    sheet.write_row(0, 0, ["extended_id", "intended_market", "production_date", "batch", "quantity"])
    for i in range(rows):
        row = i + 1
        sheet.write_string(row, 0, "".join(rnd.choices(alphabet, k=12)))
        sheet.write_string(row, 1, MARKETS[i % 6])
        sheet.write_datetime(row, 2, dt.datetime(2026, 1 + i % 12, 1 + i % 28), date_format)  # noqa: DTZ001
        sheet.write_string(row, 3, f"L{i // 5000}")
        sheet.write_number(row, 4, 1 + i % 48)
    workbook.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scm-bench-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / "bench.xlsx"
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
    print(f"rows: {args.rows:,} ({size_mb:.1f} MB of XLSX)")
    print(f"statuses: {dict((str(k), v) for k, v in counts.items())}")
    print(f"ingest: {elapsed:.2f} s, {args.rows / elapsed:,.0f} rows/s")
    print(f"peak RSS: {peak_mb:.0f} MB (before ingest: {rss_before / 1024:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
