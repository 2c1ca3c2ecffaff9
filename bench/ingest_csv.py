"""Benchmark: ingest a generated CSV into a fresh ledger (hash, parse, normalize, insert, in-file dedup).

Usage: .venv/bin/python bench/ingest_csv.py [--rows 1000000] [--keep DIR]
Prints rows/s and the process's peak RSS. The budget: >= 100,000 rows/s, peak RSS <= 200 MB.
"""

import random
import string
import sys
from pathlib import Path

import ingest_common

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
    return ingest_common.run(__doc__ or "", suffix=".csv", default_rows=1_000_000, generate=generate)


if __name__ == "__main__":
    sys.exit(main())
