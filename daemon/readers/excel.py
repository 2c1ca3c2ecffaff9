"""Reading workbooks (.xlsx, .xlsm, .xls, .ods) through python-calamine, each cell as Excel shows it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from pathlib import Path

import python_calamine as calamine

from daemon.readers import events
from daemon.readers.numfmt import NUMBER, NumberFormat, render
from daemon.readers.table import (
    CellError,
    Number,
    Row,
    Table,
    TableInfo,
    UnreadableFile,
    fit,
    header_cells,
    mark_errors,
)
from daemon.readers.values import cell_text
from daemon.readers.xlsx_cells import NO_MARKS, SheetMarks, sheet_marks

log = events.logger(__name__)

_ZIP = b"PK\x03\x04"
_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"

CellValue = int | float | str | bool | time | date | datetime | timedelta
_UNSEEN = object()
_MEMO_SIZE = 1024  # formatted texts kept per number format (numfmt.parse keeps 256 formats)


def _kind(path: Path) -> bytes:
    """The first bytes of the file, refusing anything that is neither a zip nor an OLE2 container."""
    with path.open("rb") as f:
        head = f.read(512)
    if head.startswith((_ZIP, _OLE)):
        return head
    if not head:
        raise UnreadableFile(f"{path.name} is empty (0 bytes); export the workbook again")
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html", b"<table")):
        raise UnreadableFile(f"{path.name} is a web page (HTML) named like a workbook; save it as .xlsx or .csv")
    if head.startswith(b"%PDF"):
        raise UnreadableFile(f"{path.name} is a PDF document, not a workbook; export the data as Excel or CSV")
    raise UnreadableFile(
        f"{path.name} is not an Excel or OpenDocument workbook (perhaps a text file with the wrong suffix); "
        "if it is CSV, rename it to .csv"
    )


def _open_workbook(path: Path, fmt: str, head: bytes) -> calamine.CalamineWorkbook:
    """The workbook, read by its content (an .xlsx saved under .xls opens as Excel itself would)."""
    try:
        with path.open("rb") as f:
            return calamine.CalamineWorkbook.from_filelike(f)
    except calamine.PasswordError as exc:
        raise UnreadableFile(f"{path.name} is password-protected; save it again without a password") from exc
    except calamine.CalamineError as exc:
        if head.startswith(_OLE) and fmt != "xls":
            # An .xlsx/.ods saved with a password is an OLE2 container holding the encrypted package.
            raise UnreadableFile(
                f"{path.name} is password-protected (encrypted) or corrupt; save it again without a password"
            ) from exc
        raise UnreadableFile(
            f"{path.name} is a corrupt or unsupported workbook ({exc}); open it in Excel and save it again"
        ) from exc


def _sheet_name(path: Path, workbook: calamine.CalamineWorkbook, wanted: str | None) -> str:
    """The sheet to read: the named one, else the first visible worksheet."""
    names = workbook.sheet_names
    if not names:
        raise UnreadableFile(f"{path.name} has no sheets")
    if wanted:
        if wanted in names:
            return wanted
        folded = [name for name in names if name.strip().casefold() == wanted.strip().casefold()]
        if len(folded) == 1:
            return folded[0]
        listed = ", ".join(repr(name) for name in names)
        raise UnreadableFile(
            f"{path.name} has no sheet named {wanted!r}; its sheets are {listed}; set intake.sheet to one of them"
        )
    for meta in workbook.sheets_metadata:
        if meta.typ == calamine.SheetTypeEnum.WorkSheet and meta.visible == calamine.SheetVisibleEnum.Visible:
            return meta.name
    return names[0]


def open_excel_table(path: Path, fmt: str, sheet: str | None) -> Table:
    """Open a workbook and read its sheet up to the header row."""
    head = _kind(path)
    workbook = _open_workbook(path, fmt, head)
    marks = NO_MARKS

    def close() -> None:
        marks.close()
        workbook.close()

    try:
        name = _sheet_name(path, workbook, sheet)
        # Started first: its thread scans the sheet XML while calamine parses it.
        marks = sheet_marks(path, name) if head.startswith(_ZIP) else NO_MARKS
        try:
            data = workbook.get_sheet_by_name(name)
        except calamine.CalamineError as exc:
            raise UnreadableFile(f"{path.name}: sheet {name!r} cannot be read ({exc}); save it again") from exc
        start_col = data.start[1] if data.start else 0
        records = _cells(data.iter_rows(), marks, start_col)
        for number, cells in records:
            if any(cells):
                header_row, headers = number, header_cells(cells)
                break
        else:
            raise UnreadableFile(f"{path.name} has no header row: sheet {name!r} is empty")
    except BaseException:
        close()
        raise
    info = TableInfo(
        format=fmt, encoding=None, delimiter=None, sheet=name, header_row=header_row, column_offset=start_col
    )
    log.debug("table_opened", file=path.name, format=fmt, sheet=name, cell_scan=marks is not NO_MARKS)
    return Table(info, headers, _rows(records, len(headers)), close)


def formatted(fmt: NumberFormat, value: CellValue) -> CellValue:
    """A number or date cell's text through its number format (Number while it reads as a number), or the value
    itself where the format shows it as General would, or it is text, a boolean or a number beyond 15 digits."""
    kind = type(value)
    if kind is str or kind is bool:
        return value
    memo = fmt.memo
    done = memo.get(value, _UNSEEN)
    if done is not _UNSEEN:
        return value if done is None else done  # type: ignore[return-value]
    if kind is float or kind is int:
        if not -1e15 < value < 1e15:  # type: ignore[operator]
            return value  # Imprecise, rejected whatever its format
        text = render(fmt, value)  # type: ignore[arg-type]
        cell: str | None = None if text is None else (Number(text) if fmt.kind == NUMBER else text)
    else:
        cell = render(fmt, value)  # type: ignore[arg-type]
    if len(memo) >= _MEMO_SIZE:
        memo.clear()
    memo[value] = cell
    return value if cell is None else cell


def _cells(rows: Iterator[list[CellValue]], marks: SheetMarks, start_col: int) -> Iterator[Row]:
    """Every sheet row, empty ones too, as (row number, cell texts).

    python-calamine's iter_rows starts at the sheet's row 1 (even when it is empty) but at the first used
    column, so the row number is the position while marked cells shift by the first used column. A number
    format turns the value into its text before the row's texts are made, so no cell is made twice.
    """
    join = "".join
    streamed = marks is not NO_MARKS
    for number, raw in enumerate(rows, start=1):
        marked = marks.row(number - 1) if streamed else None
        errors = None
        if marked is not None:
            width = len(raw)
            for col, mark in marked.items():
                i = col - start_col
                if 0 <= i < width:
                    if type(mark) is CellError:
                        errors = errors or []
                        errors.append((i, mark))
                    else:
                        value = raw[i]
                        # The memo first, inline: most formatted cells repeat a value (never a bool: True == 1).
                        done = mark.memo.get(value, _UNSEEN) if type(value) is not bool else _UNSEEN  # type: ignore[union-attr]
                        if done is _UNSEEN:
                            raw[i] = formatted(mark, value)  # type: ignore[arg-type]
                        elif done is not None:
                            raw[i] = done  # type: ignore[assignment]
        cells = [
            value.strip() if type(value) is str else (value if type(value) is Number else cell_text(value))
            for value in raw
        ]
        if "#" in join(cells):
            mark_errors(cells)
        if errors:
            for i, error in errors:
                cells[i] = error
        yield number, cells


def _rows(records: Iterator[Row], width: int) -> Iterator[Row]:
    """Fitted, non-empty data rows."""
    for number, cells in records:
        if not any(cells):
            continue
        yield number, (cells if len(cells) == width else fit(cells, width))
