"""Cheap checks of a workbook's declared size before python-calamine reads it, and the limits they apply.

A workbook someone dropped in the inbox can declare a cell at XFD1048576 (calamine then allocates the dense
range and aborts the process) or repeat one cell over 16,384 columns and thousands of rows (.ods). These checks
read only the zip directory and stream the sheet XML once, so a bomb is refused with a reason, fast.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path

from daemon.readers.table import UnreadableFile

_CHUNK = 1 << 20
_CELL_REF = re.compile(rb"""\sr=["']([A-Z]{1,3})([0-9]{1,7})["']""")  # no nested quantifier: linear
_MAX_RATIO = 200  # a zip member expanding more than this is a compression bomb (real sheets stay under ~30)
_RATIO_FLOOR = 16 << 20  # members smaller than this expanded are never refused for their ratio
_ODS = "urn:oasis:names:tc:opendocument:xmlns:table:1.0"
_OFFICE = "urn:oasis:names:tc:opendocument:xmlns:office:1.0"


@dataclass(frozen=True)
class ReadLimits:
    """intake.max_rows, max_columns, max_cell_chars, max_file_mb; and for the workbook reader process,
    max_reader_memory_mb (its address space) and max_read_seconds (the time the service waits for it)."""

    max_rows: int = 1_048_576
    max_columns: int = 1024
    max_cell_chars: int = 32_767
    max_file_mb: int = 512
    max_reader_memory_mb: int = 1024
    max_read_seconds: float = 600.0


def _column(letters: bytes) -> int:
    index = 0
    for letter in letters:
        index = index * 26 + letter - 64
    return index


def _refuse_size(path: Path, rows: int, columns: int, limits: ReadLimits, where: str) -> None:
    if columns > limits.max_columns:
        raise UnreadableFile(
            f"{path.name}: {where} reaches column {columns}, beyond the limit of {limits.max_columns} columns "
            "(intake.max_columns); delete the stray cells far right and save it again"
        )
    if rows > limits.max_rows:
        raise UnreadableFile(
            f"{path.name}: {where} reaches row {rows}, beyond the limit of {limits.max_rows} rows "
            "(intake.max_rows); delete the stray cells far below and save it again"
        )


def check_workbook(path: Path, limits: ReadLimits) -> None:
    """Raise UnreadableFile when a zip workbook (.xlsx/.ods) is larger than the limits say; OLE2 files pass."""
    if path.stat().st_size > limits.max_file_mb << 20:
        raise UnreadableFile(f"{path.name} is larger than {limits.max_file_mb} MB (intake.max_file_mb)")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        return  # not a zip (an .xls) or corrupt: calamine says what it is
    with archive:
        total = 0
        for member in archive.infolist():
            total += member.file_size
            if member.file_size > _RATIO_FLOOR and member.file_size > _MAX_RATIO * max(member.compress_size, 1):
                raise UnreadableFile(
                    f"{path.name}: {member.filename} expands {member.file_size // max(member.compress_size, 1)}"
                    " times; a workbook this compressed is a zip bomb, not a table"
                )
        if total > 4 * (limits.max_file_mb << 20):
            raise UnreadableFile(
                f"{path.name} expands to {total >> 20} MB, beyond 4 x intake.max_file_mb ({limits.max_file_mb} MB)"
            )
        names = archive.namelist()
        for name in names:
            if name.startswith("xl/worksheets/") and name.endswith(".xml"):
                _check_xlsx_sheet(path, archive, name, limits)
        if "content.xml" in names and "xl/workbook.xml" not in names:
            _check_ods(path, archive, limits)


def _column_letters(index: int) -> str:
    letters = ""
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _far_references(limits: ReadLimits) -> re.Pattern[bytes]:
    """Cell references with as many column letters or row digits as the limits, or more: the only candidates.

    Ordinary sheets have no such reference, so the Python loop sees almost no matches (the 200k-row ingest
    stays fast); each alternative is a flat run, so the scan is linear.
    """
    letters, digits = len(_column_letters(limits.max_columns)), len(str(limits.max_rows))
    # Starting with the literal `r=` lets the regex engine skip ahead to it (a leading `\s` made it try every
    # blank: 3x slower); that the attribute is `r` itself, not `xr`, is checked on the rare match.
    return re.compile(rb"""r=["']([A-Z]{%d,}[0-9]+|[A-Z]+[0-9]{%d,})["']""" % (letters, digits))


def _check_xlsx_sheet(path: Path, archive: zipfile.ZipFile, member: str, limits: ReadLimits) -> None:
    """The furthest cell reference of a sheet, streamed (the <dimension> alone may lie or be missing)."""
    rows = columns = 0
    tail = b""
    far = _far_references(limits)
    with archive.open(member) as stream:
        while chunk := stream.read(_CHUNK):
            text = tail + chunk
            for match in far.finditer(text):
                if match.start() == 0 or text[match.start() - 1] not in b" \t\r\n":
                    continue  # another attribute ending in r, such as xr="..."
                reference = _CELL_REF.fullmatch(b' r="' + match.group(1) + b'"')
                if reference is not None:
                    columns = max(columns, _column(reference.group(1)))
                    rows = max(rows, int(reference.group(2)))
            tail = text[-24:]
    _refuse_size(path, rows, columns, limits, f"sheet {member.rsplit('/', 1)[-1]}")


def _check_ods(path: Path, archive: zipfile.ZipFile, limits: ReadLimits) -> None:
    """Rows x repeated columns of an .ods, counting only cells that hold something (empty runs are normal)."""
    row_tag, cell_tags = f"{{{_ODS}}}table-row", (f"{{{_ODS}}}table-cell", f"{{{_ODS}}}covered-table-cell")
    cols_attr, rows_attr = f"{{{_ODS}}}number-columns-repeated", f"{{{_ODS}}}number-rows-repeated"
    value_attr, table_tag = f"{{{_OFFICE}}}value-type", f"{{{_ODS}}}table"
    rows = width = pending = 0
    try:
        with archive.open("content.xml") as stream:
            for _event, element in ET.iterparse(stream, events=("end",)):  # noqa: S314
                tag = element.tag
                if tag in cell_tags:
                    repeat = int(element.get(cols_attr, "1") or 1)
                    if element.get(value_attr) is not None or len(element):
                        width += pending + repeat
                        pending = 0
                    else:
                        pending += repeat
                    element.clear()
                elif tag == row_tag:
                    repeat = int(element.get(rows_attr, "1") or 1)
                    if width:
                        _refuse_size(path, rows + repeat, width, limits, "the sheet")
                        rows += repeat
                    else:
                        rows += repeat if rows else 0
                    width = pending = 0
                    element.clear()
                elif tag == table_tag:
                    rows = 0
                    element.clear()
    except (ET.ParseError, ValueError, KeyError):
        return  # calamine says what is wrong with it
