"""Reports: a file's summary.json, report.csv (and .xlsx) and rejected file, built from the ledger, written atomically.

The rejected file is of the input's own kind, so the person fixes it in the program they use and drops it back:
a CSV input gets rejected.csv with its delimiter and (where it holds every character) its encoding; a workbook
gets rejected.xlsx, every cell text, so codes keep their leading zeros. Rows are streamed from the ledger.
"""

import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from itertools import chain, islice
from pathlib import Path
from typing import IO, Any

import xlsxwriter
from xlsxwriter.exceptions import FileCreateError

from daemon.config import ReportsSettings
from daemon.ledger import FileInfo, FileLayout, Ledger
from daemon.logs import holds_secret, redact
from daemon.names import NAME_MAX, first_free, fit_name
from daemon.normalize import REJECTED_ERROR_COLUMN
from daemon.states import ERROR_ROW_STATUSES, Outcome, RowStatus

# The one home of the formula triggers: a cell starting with one of these is a formula to Excel (tab and CR too,
# which Excel drops before reading the rest). Report cells starting with them get a "'"; intake undoes it.
EXCEL_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
SAFE_CHUNK = 1000  # report rows looked at together for secrets and cells at risk (see safe_rows)
# A cell that excel_safe may change starts with a trigger or a quote: found after the NUL that starts each cell
# of a row (or of rows) joined, NUL first; a pattern led by a literal character is scanned for at C speed.
_AT_RISK = re.compile("\x00[" + re.escape("".join(EXCEL_TRIGGERS) + "'") + "]")


@cache
def _umask() -> int:
    """The process's umask (read once: reading it means setting it, which is not thread-safe)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@dataclass(frozen=True)
class ReportNames:
    """The outbox names of one file's reports."""

    summary: str
    report: str
    rejected: str  # rejected.csv, or rejected.xlsx for a workbook input
    report_xlsx: str


def names_for(base: str, *, workbook: bool = False) -> ReportNames:
    """Report names for a chosen stem; a workbook input's rejected file is an .xlsx."""
    rejected = f"{base}.rejected.xlsx" if workbook else f"{base}.rejected.csv"
    return ReportNames(f"{base}.summary.json", f"{base}.report.csv", rejected, f"{base}.report.xlsx")


def _all_names(base: str) -> tuple[str, ...]:
    """Every name a report of this stem may take, whatever the input's kind and the settings."""
    names = names_for(base)
    return (names.summary, names.report, names.rejected, names.report_xlsx, names_for(base, workbook=True).rejected)


LONGEST_REPORT_SUFFIX = "-9999999.rejected.xlsx"  # what a report stem must leave room for in a 255-byte name
TEMP_NAME_EXTRA = len(".") + len(".XXXXXXXX.tmp")  # atomic_write's temporary name around the report's name


def choose_base(outbox: Path, stem: str, reserved: Collection[str] = ()) -> str:
    """The first of `stem`, `stem-2`, `stem-3`... under which no report exists yet and that no other file has
    `reserved` for reports not yet written: nothing is ever overwritten.

    A stem too long to take the report suffixes within the file system's name limit is shortened.
    """
    short = fit_name("", stem, "", limit=NAME_MAX - len(LONGEST_REPORT_SUFFIX) - TEMP_NAME_EXTRA)

    def taken(base: str) -> bool:
        return base in reserved or any(os.path.lexists(outbox / name) for name in _all_names(base))

    return first_free(taken, short)


def excel_safe(value: str) -> str:
    """Escape a cell that Excel would run as a formula with a leading "'".

    A cell that already starts with "'"s before a trigger gets one more, so unescape gives back exactly what was
    escaped ("'=x" typed by a person is written "''=x" and read back as "'=x").
    """
    if value.startswith(EXCEL_TRIGGERS) or (value[:1] == "'" and value.lstrip("'").startswith(EXCEL_TRIGGERS)):
        return "'" + value
    return value


def unescape(cells: list[str]) -> list[str]:
    """Undo excel_safe in place, so a corrected rejected file reads back as it was (only files this daemon wrote:
    see Layout.written_by_daemon)."""
    for i, cell in enumerate(cells):
        if cell[:1] == "'" and cell.lstrip("'").startswith(EXCEL_TRIGGERS):
            cells[i] = type(cell)(cell[1:])
    return cells


def _report_row(cells: Sequence[object]) -> list[str]:
    """The single place a report row is made: every cell, whatever its source, scrubbed and Excel-safe.

    The row's cells are looked at joined, in two scans at C speed, and only a row that holds a secret or a cell
    at risk goes cell by cell: almost none does, and a report has a line per row of its file."""
    texts = ["" if cell is None else cell if type(cell) is str else str(cell) for cell in cells]
    if _needs_care(texts):
        return [excel_safe(redact(text)) for text in texts]
    return texts


def _needs_care(texts: Iterable[str]) -> bool:
    """Whether any of the cells holds a secret or starts with a formula trigger or quote: looked at joined, each
    cell after a NUL (two scans at C speed; a false alarm only costs the cell-by-cell way)."""
    joined = "\x00" + "\x00".join(texts)
    return holds_secret(joined) or _AT_RISK.search(joined) is not None


def safe_chunks(rows: Iterable[Sequence[object]]) -> Iterator[Sequence[Sequence[object]]]:
    """Rows as a report may hold them, SAFE_CHUNK at a time: a chunk in which no cell holds a secret or is at risk
    (the same two scans as _report_row, over the chunk's cells joined) is given as it is, the rows of any other
    chunk as _report_row makes them. Its cells are then what _report_row gives once None is read as "" and the
    rest as str() — as csv.writer writes them; a million-row report is seconds faster than row by row."""
    source = iter(rows)
    while chunk := list(islice(source, SAFE_CHUNK)):
        # str(None) is "None": neither at risk nor (unless a secret is part of it) a reason for the slow path.
        yield [_report_row(cells) for cells in chunk] if _needs_care(map(str, chain.from_iterable(chunk))) else chunk


def safe_rows(rows: Iterable[Sequence[object]]) -> Iterator[Sequence[object]]:
    """The rows of safe_chunks one after the other."""
    return chain.from_iterable(safe_chunks(rows))


def outcome_for(counts: Mapping[RowStatus, int]) -> Outcome:
    """A finished file's status from its row counts."""
    return Outcome.COMPLETED_WITH_ERRORS if any(counts.get(s) for s in ERROR_ROW_STATUSES) else Outcome.COMPLETED


def build_summary(
    file: FileInfo,
    counts: Mapping[RowStatus, int],
    *,
    batches: int,
    api_calls: int,
    extra_calls: int,
    names: ReportNames,
    rejected_written: bool,
    finished_at: str,
    report_xlsx: bool = False,
    tasks: list[dict[str, Any]],
) -> dict[str, Any]:
    """The summary.json document of a file."""
    rows = {str(s): counts.get(s, 0) for s in RowStatus if s not in (RowStatus.PENDING, RowStatus.QUEUED)}
    layout = file.layout
    return {
        "source": file.name,
        "sha256": file.sha256,
        "status": str(file.outcome),
        "mode": file.mode,
        "data_key": file.data_key,
        "rows": {"total": sum(counts.values()), **rows},
        "batches": batches,
        "api_calls": api_calls,
        "extra_calls": extra_calls,  # calls beyond the plan: retries, and splitting refused or timing-out batches
        "tasks": tasks,
        "started_at": file.received_at,
        "finished_at": finished_at,
        "error": file.error,
        "warnings": list(layout.warnings),
        "dates_rewritten": dict(layout.dates_rewritten),  # per field: date cells sent as YYYY-MM-DD
        "format": layout.format_record(),
        "columns": layout.columns(),
        "reports": {
            "report_csv": names.report,
            "report_xlsx": names.report_xlsx if report_xlsx else None,
            "rejected_csv": names.rejected if rejected_written and names.rejected.endswith(".csv") else None,
            "rejected_xlsx": names.rejected if rejected_written and names.rejected.endswith(".xlsx") else None,
        },
    }


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path in the same folder to write `path` under; renamed into place (durably) when all went well."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # TEMP_NAME_EXTRA
    try:
        # mkstemp makes the file 0600; reports are for the people on the share: the usual mode under the umask.
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(path: Path, *, encoding: str = "utf-8-sig") -> Iterator[IO[str]]:
    """Write a text file under a temporary name in the same folder, then rename it: a reader never sees half."""
    with atomic_path(path) as tmp, tmp.open("w", encoding=encoding, newline="") as f:
        yield f


RowsWriter = Callable[[Iterable[Sequence[object]]], None]  # writes rows, each one made safe (see safe_rows)


@contextmanager
def csv_table(path: Path, *, delimiter: str = ",", encoding: str = "utf-8-sig") -> Iterator[RowsWriter]:
    """A report CSV being written: each row given is scrubbed and made Excel-safe (UnicodeEncodeError when the
    encoding cannot hold a character; nothing is left behind then)."""
    with atomic_write(path, encoding=encoding) as f:
        buffer = io.StringIO()  # a chunk of rows at a time into the file: encoding row by row is 0.6 s a million
        writer = csv.writer(buffer, delimiter=delimiter)

        def write(rows: Iterable[Sequence[object]]) -> None:
            for chunk in safe_chunks(rows):
                writer.writerows(chunk)
                f.write(buffer.getvalue())
                buffer.seek(0)
                buffer.truncate()

        yield write


@contextmanager
def xlsx_table(path: Path, *, sheet: str, width: int) -> Iterator[RowsWriter]:
    """A report workbook being written, streamed (constant memory): every cell a string in a Text-formatted
    column, so leading zeros survive and a value typed over one stays text; never a formula."""
    # XlsxWriter streams rows into a temporary file of its own, which it leaves behind when storing the workbook
    # fails (disk full): a folder of ours holds it, removed whatever happens.
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory(prefix="scm-daemon-xlsx-") as scratch:
        options = {"constant_memory": True, "strings_to_formulas": False, "tmpdir": scratch}
        workbook = xlsxwriter.Workbook(str(tmp), options)
        try:
            worksheet = workbook.add_worksheet(_sheet_name(sheet))
            text = workbook.add_format({"num_format": "@"})
            worksheet.set_column(0, max(width, 1) - 1, 18, text)
            row = 0

            def write(rows: Iterable[Sequence[object]]) -> None:
                nonlocal row
                for cells in safe_rows(rows):
                    for column, cell in enumerate(cells):
                        if cell is not None and cell != "":  # an empty cell stays blank (its column is Text)
                            worksheet.write_string(row, column, str(cell), text)
                    row += 1

            yield write
        except BaseException:
            with suppress(Exception):  # only to release its temporary files; the first error is the one to tell
                workbook.close()
            raise
        try:
            workbook.close()
        except FileCreateError as exc:
            # XlsxWriter wraps the file system's error (disk full, folder gone): the caller retries OSErrors.
            cause = exc.args[0] if exc.args and isinstance(exc.args[0], OSError) else OSError(str(exc))
            raise cause from exc


def _sheet_name(name: str) -> str:
    """A name Excel accepts for a sheet (at most 31 characters, none of []:*?/\\)."""
    cleaned = "".join("_" if c in "[]:*?/\\" else c for c in name).strip("'")[:31]
    return cleaned or "Sheet1"


def rejected_encoding(source: str | None) -> str:
    """The encoding of a CSV input's rejected file: its own, with a BOM where it has one (Excel needs it)."""
    if source in ("utf-16", "utf-16-le", "utf-16-be"):
        return "utf-16"  # with a BOM, little-endian: Excel's "Unicode Text"
    if source == "cp1252":
        return "cp1252"
    return "utf-8-sig"


def write_table(
    path: Path, layout: FileLayout, rows: Callable[[], Iterable[Sequence[object]]], *, delimiter: str, excel: bool
) -> None:
    """One table of a report in the chosen kind: an .xlsx, or a CSV in the input's encoding (UTF-8 with a BOM
    when a character does not fit it)."""
    if excel:
        with xlsx_table(path, sheet=layout.sheet or "Sheet1", width=len(layout.headers) + 1) as write:
            write(rows())
        return
    encoding = rejected_encoding(layout.encoding)
    try:
        with csv_table(path, delimiter=delimiter, encoding=encoding) as write:
            write(rows())
    except UnicodeEncodeError:
        with csv_table(path, delimiter=delimiter) as write:
            write(rows())


def write_reports(
    ledger: Ledger, file: FileInfo, outbox: Path, finished_at: str, reports: ReportsSettings | None = None
) -> ReportNames:
    """Write the reports of a file under its chosen stem (report_base), the rejected file only when needed."""
    assert file.report_base is not None
    reports = reports or ReportsSettings()
    layout = file.layout
    # Only delimited text inputs have a delimiter; workbooks (and files never read) get the configured one.
    text_delimiter = layout.delimiter
    workbook = layout.read and not text_delimiter
    delimiter = text_delimiter or reports.delimiter
    names = names_for(file.report_base, workbook=workbook)
    data_key = file.data_key

    def report_rows() -> Iterator[Sequence[object]]:
        yield ["row", data_key, "status", "detail", "batch", "task_id"]
        yield from ledger.report_rows(file.id)  # line, key, status, detail, batch number, task id

    with csv_table(outbox / names.report, delimiter=delimiter) as write:
        write(report_rows())
    if reports.xlsx:
        with xlsx_table(outbox / names.report_xlsx, sheet="report", width=6) as write:
            write(report_rows())

    def rejected_rows() -> Iterator[Sequence[object]]:
        yield [*layout.headers, REJECTED_ERROR_COLUMN]
        for _line, cells, _status, detail in ledger.error_rows(file.id):
            yield [*cells, detail]

    counts = ledger.row_counts(file.id)
    rejected_written = any(counts.get(s) for s in ERROR_ROW_STATUSES)
    if rejected_written:
        write_table(outbox / names.rejected, layout, rejected_rows, delimiter=delimiter, excel=workbook)

    batches, api_calls, extra_calls = ledger.batch_totals(file.id)
    summary = build_summary(
        file,
        counts,
        batches=batches,
        api_calls=api_calls,
        extra_calls=extra_calls,
        names=names,
        rejected_written=rejected_written,
        finished_at=finished_at,
        tasks=ledger.tasks(file.id),
        report_xlsx=reports.xlsx,
    )
    with atomic_write(outbox / names.summary, encoding="utf-8") as f:
        f.write(redact(json.dumps(summary, indent=2, ensure_ascii=False)))
        f.write("\n")
    return names
