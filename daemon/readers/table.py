"""The value types every reader returns: cell text, table description, the open table."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType

Row = tuple[int, list[str]]


class Number(str):
    """Text of a cell the spreadsheet stored as a number (callers can spot keys Excel turned into numbers)."""

    __slots__ = ()


class Imprecise(Number):
    """A number of more than 15 digits: a spreadsheet keeps 15, so the rest is lost (rejected in any field)."""

    __slots__ = ()


class CellError(str):
    """An error cell such as '#N/A' or '#DIV/0!'; the str value is the error text, which always starts with "#"."""

    __slots__ = ()


class UnreadableFile(Exception):
    """A file that cannot be read as a table; the message names the file, the problem and the fix if known."""


def cannot_open(name: str, exc: OSError) -> UnreadableFile:
    """The UnreadableFile for a file that is missing, a folder or not ours to read."""
    return UnreadableFile(f"{name} cannot be opened: {exc.strerror}")


@dataclass(frozen=True)
class TableInfo:
    """How a file was read: its format, text encoding and delimiter or sheet, and where the header is."""

    format: str  # "csv" | "tsv" | "txt" | "xlsx" | "xlsm" | "xls" | "ods"
    encoding: str | None  # csv family: "utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "cp1252"
    delimiter: str | None  # csv family
    sheet: str | None  # excel family: the sheet read
    header_row: int  # spreadsheet row number of the header (1 unless blank rows precede it)
    column_offset: int = 0  # sheet columns left of the first cell of each row (workbooks start at the first used)


# Excel shows these as error values, whether computed by a formula or typed (or read from a CSV) as text.
ERROR_TEXTS: dict[str, CellError] = {
    text: CellError(text)
    for text in (
        "#NULL!",
        "#DIV/0!",
        "#VALUE!",
        "#REF!",
        "#NAME?",
        "#NUM!",
        "#N/A",
        "#GETTING_DATA",
        "#SPILL!",
        "#CALC!",
        "#FIELD!",
        "#BLOCKED!",
        "#CONNECT!",
        "#BUSY!",
        "#UNKNOWN!",
    )
}


def error_value(text: str) -> CellError:
    """The CellError for an error cell's text, "#"-prefixed whatever a writer put there (callers test for "#")."""
    text = text.strip()
    return ERROR_TEXTS.get(text.upper()) or CellError(text if text.startswith("#") else f"#{text or 'ERROR'}")


def mark_errors(cells: list[str]) -> None:
    """Replace, in place, cells whose text is an Excel error literal by CellError."""
    for i, cell in enumerate(cells):
        if cell[:1] == "#":
            error = ERROR_TEXTS.get(cell.upper())
            if error is not None:
                cells[i] = error


def fit(cells: list[str], width: int) -> list[str]:
    """Pad a row to `width` cells; drop cells beyond it only while they are empty."""
    if len(cells) < width:
        cells.extend([""] * (width - len(cells)))
    else:
        while len(cells) > width and not cells[-1]:
            cells.pop()
    return cells


def header_cells(cells: list[str]) -> list[str]:
    """The header row as callers see it: trimmed cells, trailing empty ones dropped."""
    headers = [str(cell).strip() for cell in cells]
    while headers and not headers[-1]:
        headers.pop()
    return headers


class Table:
    """An open table: its header row and a one-pass stream of data rows; close it (or use `with`)."""

    def __init__(
        self,
        info: TableInfo,
        headers: list[str],
        rows: Iterator[Row],
        close: Callable[[], None],
    ) -> None:
        self.info = info
        self.headers = headers
        self._rows: Iterator[Row] | None = rows
        self._close = close
        self._closed = False

    def rows(self) -> Iterator[Row]:
        """Data rows after the header as (spreadsheet row number, cells); can be iterated once.

        Every row has at least len(headers) cells (short rows are padded with ""); a row is longer only when
        it holds non-empty cells beyond the last header, so the caller can reject it. Rows whose cells are all
        empty are skipped. A CSV file that breaks down part way raises UnreadableFile from the iteration.
        """
        if self._rows is None:
            raise RuntimeError("Table.rows() can be iterated only once; open the file again")
        rows, self._rows = self._rows, None
        return rows

    def close(self) -> None:
        """Release the open file; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._rows = None
            self._close()

    def __enter__(self) -> Table:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Table({self.info!r}, headers={self.headers!r})"
