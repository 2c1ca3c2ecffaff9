"""Reports: a file's summary.json, report.csv and rejected.csv, built from the ledger and written atomically."""

import csv
import json
import os
import tempfile
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, Any

from daemon.ledger import FileInfo, Ledger
from daemon.logs import redact
from daemon.names import NAME_MAX, first_free, fit_name
from daemon.states import ERROR_ROW_STATUSES, Outcome, RowStatus

# The one home of the formula triggers: a cell starting with one of these is a formula to Excel (tab and CR too,
# which Excel drops before reading the rest). Report cells starting with them get a "'"; intake undoes it.
EXCEL_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


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
    rejected: str


def names_for(base: str) -> ReportNames:
    """Report names for a chosen stem."""
    return ReportNames(f"{base}.summary.json", f"{base}.report.csv", f"{base}.rejected.csv")


LONGEST_REPORT_SUFFIX = "-9999999.rejected.csv"  # what a report stem must leave room for in a 255-byte name
TEMP_NAME_EXTRA = len(".") + len(".XXXXXXXX.tmp")  # atomic_write's temporary name around the report's name


def choose_base(outbox: Path, stem: str, reserved: Collection[str] = ()) -> str:
    """The first of `stem`, `stem-2`, `stem-3`... under which no report exists yet and that no other file has
    `reserved` for reports not yet written: nothing is ever overwritten.

    A stem too long to take the report suffixes within the file system's name limit is shortened.
    """
    short = fit_name("", stem, "", limit=NAME_MAX - len(LONGEST_REPORT_SUFFIX) - TEMP_NAME_EXTRA)

    def taken(base: str) -> bool:
        names = names_for(base)
        return base in reserved or any(
            os.path.lexists(outbox / name) for name in (names.summary, names.report, names.rejected)
        )

    return first_free(taken, short)


def excel_safe(value: str) -> str:
    """Escape a cell that Excel would run as a formula."""
    return "'" + value if value.startswith(EXCEL_TRIGGERS) else value


def unescape(cells: list[str]) -> list[str]:
    """Undo excel_safe in place, so a corrected rejected.csv reads back as it was."""
    for i, cell in enumerate(cells):
        if len(cell) > 1 and cell[0] == "'" and cell[1:2] in EXCEL_TRIGGERS:
            cells[i] = type(cell)(cell[1:])
    return cells


def _report_row(cells: list[object]) -> list[str]:
    """The single place a report row is made: every cell, whatever its source, scrubbed and Excel-safe."""
    return [excel_safe(redact("" if cell is None else str(cell))) for cell in cells]


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
        "warnings": layout.get("warnings", []),
        "format": {k: layout[k] for k in ("format", "encoding", "delimiter", "sheet", "header_row") if k in layout},
        "columns": {layout["headers"][i]: f for i, f in layout.get("fields", [])},
        "reports": {"report_csv": names.report, "rejected_csv": names.rejected if rejected_written else None},
    }


@contextmanager
def atomic_write(path: Path, *, encoding: str = "utf-8-sig") -> Iterator[IO[str]]:
    """Write a file under a temporary name in the same folder, then rename it: a reader never sees half of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # TEMP_NAME_EXTRA
    try:
        # mkstemp makes the file 0600; reports are for the people on the share: the usual mode under the umask.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding=encoding, newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_reports(ledger: Ledger, file: FileInfo, outbox: Path, finished_at: str) -> ReportNames:
    """Write the three reports of a file under its chosen stem (report_base), rejected.csv only when needed."""
    assert file.report_base is not None
    names = names_for(file.report_base)
    data_key = file.data_key
    with atomic_write(outbox / names.report) as f:
        writer = csv.writer(f)
        writer.writerow(_report_row(["row", data_key, "status", "detail", "batch", "task_id"]))
        for line, key, status, detail, seq, task_id in ledger.report_rows(file.id):
            writer.writerow(_report_row([line, key, status, detail, seq, task_id]))

    counts = ledger.row_counts(file.id)
    rejected_written = any(counts.get(s) for s in ERROR_ROW_STATUSES)
    if rejected_written:
        headers = file.layout.get("headers", [])
        with atomic_write(outbox / names.rejected) as f:
            writer = csv.writer(f)
            writer.writerow(_report_row([*headers, "error"]))
            for _line, cells, _status, detail in ledger.error_rows(file.id):
                writer.writerow(_report_row([*cells, detail]))

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
    )
    with atomic_write(outbox / names.summary, encoding="utf-8") as f:
        f.write(redact(json.dumps(summary, indent=2, ensure_ascii=False)))
        f.write("\n")
    return names
