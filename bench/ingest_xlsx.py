"""Benchmark: ingest a generated XLSX into a fresh ledger (hash, read, normalize, insert, in-file dedup).

Usage: .venv/bin/python bench/ingest_xlsx.py [--rows 200000] [--keep DIR]
Prints rows/s and the process's peak RSS. The budget: >= 60,000 rows/s.
The workbook is what Excel users send: text codes, a number column, a date column with a date format.
"""

import datetime as dt
import random
import string
import sys
from pathlib import Path

import ingest_common
import xlsxwriter

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
    return ingest_common.run(__doc__ or "", suffix=".xlsx", default_rows=200_000, generate=generate)


if __name__ == "__main__":
    sys.exit(main())
