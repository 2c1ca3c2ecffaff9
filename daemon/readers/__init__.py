"""Readers: turn a CSV or Excel file into a header row and a stream of rows of cell text as Excel shows them.

    open_table(path) -> Table            a context manager holding the open file
        .info: TableInfo                 format, encoding/delimiter or sheet, header row number
        .headers: list[str]              trimmed header cells, trailing empty ones dropped
        .rows() -> (row number, cells)   streamed; cells are str, Number (stored as a number), Imprecise
                                         (a number beyond 15 digits) or CellError

Exceptions: UnreadableFile (not a table at all, with a message for a person); nothing else for bad content.
"""

from __future__ import annotations

from pathlib import Path

from daemon.readers.excel import cell_text, number_text, open_excel_table
from daemon.readers.limits import ReadLimits, check_workbook
from daemon.readers.table import CellError, Imprecise, Number, Row, Table, TableInfo, UnreadableFile
from daemon.readers.text import DELIMITERS, detect_encoding, open_text_table, sniff_delimiter

__all__ = [
    "DELIMITERS",
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
    "detect_encoding",
    "number_text",
    "open_table",
    "sniff_delimiter",
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
    limits = limits or ReadLimits()
    try:
        if suffix in TEXT_SUFFIXES:
            return open_text_table(path, suffix[1:], limits)
        check_workbook(path, limits)
        return open_excel_table(path, suffix[1:], sheet or None)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise UnreadableFile(f"{path.name} cannot be opened: {exc.strerror}") from exc
