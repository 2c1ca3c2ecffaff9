"""Readers: turn a CSV or Excel file into a header row and a stream of rows of cell text as Excel shows them.

    open_table(path) -> Table            a context manager holding the open file
        .info: TableInfo                 format, encoding/delimiter or sheet, header row number
        .headers: list[str]              trimmed header cells, trailing empty ones dropped
        .rows() -> (row number, cells)   streamed; cells are str, Number (stored as a number), Imprecise
                                         (a number beyond 15 digits) or CellError

Exceptions: UnreadableFile (not a table at all, with a message for a person); nothing else for bad content.

Workbooks are read in a reader process under intake.max_reader_memory_mb and max_read_seconds
(daemon/readers/isolated.py, worker.py): this process never loads python-calamine, and a workbook that crashes
it, exhausts its memory or makes it loop is UnreadableFile with the reason.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from daemon.readers.limits import ReadLimits, check_workbook
from daemon.readers.table import CellError, Imprecise, Number, Row, Table, TableInfo, UnreadableFile, cannot_open
from daemon.readers.values import cell_text, number_text

__all__ = [
    "SUPPORTED_SUFFIXES",
    "CellError",
    "Imprecise",
    "Number",
    "ReadLimits",
    "Row",
    "Table",
    "TableInfo",
    "UnreadableFile",
    "cell_text",
    "number_text",
    "open_table",
]

TEXT_SUFFIXES = frozenset({".csv", ".tsv", ".txt"})
EXCEL_SUFFIXES = frozenset({".xlsx", ".xlsm", ".xls", ".ods"})
SUPPORTED_SUFFIXES: frozenset[str] = TEXT_SUFFIXES | EXCEL_SUFFIXES


def open_table(path: Path, *, sheet: str | None = None, limits: ReadLimits | None = None) -> Table:
    """Open a table file for reading by its suffix; `sheet` picks an Excel sheet ("" or None: the first one).

    Raises UnreadableFile when the file is missing, of an unsupported type, not what its suffix says, empty,
    encrypted or corrupt.
    """
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        supported = " ".join(sorted(SUPPORTED_SUFFIXES))
        raise UnreadableFile(f"{path.name} is not a supported table file; use one of: {supported}")
    # Here, not at the top: the reader process imports this package, and its start-up is its imports (these
    # load structlog and subprocess, which it has no use for).
    from daemon.readers.isolated import open_isolated_table  # noqa: PLC0415
    from daemon.readers.text import open_text_table  # noqa: PLC0415

    limits = limits or ReadLimits()
    try:
        if suffix in TEXT_SUFFIXES:
            return open_text_table(path, suffix[1:], limits)
        # The limits pre-check runs while the reader process starts: a refusal ends it.
        return open_isolated_table(path, suffix[1:], sheet or None, limits, partial(check_workbook, path, limits))
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise cannot_open(path.name, exc) from exc
