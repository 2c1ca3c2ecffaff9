"""Benchmark: ingest a generated XLSX into a fresh ledger (hash, read, normalize, insert, in-file dedup).

Usage: .venv/bin/python bench/ingest_xlsx.py [--rows 200000] [--keep DIR] [--formats]
Prints rows/s and the process's peak RSS. The budget: >= 60,000 rows/s, with --formats too.
The workbook is what Excel users send: text codes, a number column, a date column with a date format.
--formats puts a number format on every cell, each rendered as Excel shows it: numeric codes in
`000000000000`, text in `@`, a date-time in `dd.mm.yyyy` (shown as the date), quantities in `#,##0.00`.
"""

import argparse
import datetime as dt
import random
import string
import sys
from pathlib import Path

import ingest_common
import xlsxwriter

MARKETS = ("cn", "de", "fr", "us", "jp", "br")


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--formats", action="store_true", help="a number format on every cell (numeric codes)")


def generate(path: Path, rows: int) -> None:
    """The plain workbook, or with --formats the one with a number format on every cell."""
    if getattr(ingest_common.ARGS, "formats", False):
        generate_formatted(path, rows)
    else:
        generate_plain(path, rows)


def generate_formatted(path: Path, rows: int) -> None:
    """Numeric 12-digit codes shown with their zeros, formatted text, date-times shown as dates, quantities."""
    workbook = xlsxwriter.Workbook(str(path), {"constant_memory": True})
    sheet = workbook.add_worksheet("Codes")
    padded = workbook.add_format({"num_format": "000000000000"})
    text = workbook.add_format({"num_format": "@"})
    day = workbook.add_format({"num_format": "dd.mm.yyyy"})
    amount = workbook.add_format({"num_format": "#,##0.00"})
    sheet.write_row(0, 0, ["extended_id", "intended_market", "production_date", "batch", "quantity"])
    for i in range(rows):
        row = i + 1
        sheet.write_number(row, 0, 10_000_000 + i * 7919, padded)  # 8 digits, shown as 12 with leading zeros
        sheet.write_string(row, 1, MARKETS[i % 6], text)
        sheet.write_datetime(row, 2, dt.datetime(2026, 1 + i % 12, 1 + i % 28, 14, 30), day)  # noqa: DTZ001
        sheet.write_string(row, 3, f"L{i // 5000}", text)
        sheet.write_number(row, 4, 1000 + i % 48 + 0.5, amount)
    workbook.close()


def generate_plain(path: Path, rows: int) -> None:
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
    return ingest_common.run(__doc__ or "", suffix=".xlsx", default_rows=200_000, generate=generate, options=options)


if __name__ == "__main__":
    sys.exit(main())
