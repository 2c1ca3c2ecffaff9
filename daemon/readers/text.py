"""Reading delimited text files (.csv, .tsv, .txt): encoding, delimiter and a streaming row reader."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import structlog

from daemon.readers.limits import ReadLimits
from daemon.readers.table import Row, Table, TableInfo, UnreadableFile, fit, header_cells, mark_errors

log = structlog.get_logger(__name__)

DELIMITERS = (",", ";", "\t", "|")
_CHUNK = 1 << 20
_SAMPLE_CHARS = 64 * 1024
_SAMPLE_RECORDS = 50
# Bytes that Windows-1252 leaves undefined: a file holding them is in some other encoding.
_CP1252_UNDEFINED = re.compile(rb"[\x81\x8d\x8f\x90\x9d]")
_SEP_LINE = re.compile(r"sep=(.)(?:\r\n|\n|\r|\Z)")
_BINARY_KINDS = (
    (b"PK\x03\x04", "a zip archive (an .xlsx or .ods workbook?)", "give it its real suffix"),
    (b"PK\x05\x06", "an empty zip archive", "export the table again"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an OLE2 file (an old .xls workbook?)", "give it its real suffix"),
    (b"%PDF", "a PDF document, not a table", "export the data as CSV or Excel"),
)


def _refuse_binary(path: Path, head: bytes) -> None:
    """Raise UnreadableFile when the first bytes show a known binary format."""
    for magic, kind, fix in _BINARY_KINDS:
        if head.startswith(magic):
            raise UnreadableFile(f"{path.name} is {kind}; {fix}")


def _bomless_utf16(head: bytes) -> str | None:
    """utf-16-le/-be when NUL bytes sit on one side of every code unit, as in UTF-16 text without a BOM."""
    even, odd = head[0::2].count(0), head[1::2].count(0)
    units = len(head) // 2
    if units and odd > units // 3 and even == 0:
        return "utf-16-le"
    if units and even > units // 3 and odd == 0:
        return "utf-16-be"
    return None


def detect_encoding(path: Path) -> str:
    """The text encoding of a file, checked over all its bytes in chunks; UnreadableFile if it is not text."""
    with path.open("rb") as f:
        head = f.read(_CHUNK)
        _refuse_binary(path, head)
        if head.startswith(codecs.BOM_UTF8):
            encoding = "utf-8-sig"
        elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            encoding = "utf-16"
        elif b"\x00" in head:
            found = _bomless_utf16(head)
            if found is None:
                raise UnreadableFile(
                    f"{path.name} holds binary data (NUL bytes), not text; export the table as CSV or Excel"
                )
            encoding = found
        else:
            encoding = "utf-8"
        text_only = encoding in ("utf-8", "utf-8-sig")
        may_fall_back = encoding == "utf-8"
        decoder = codecs.getincrementaldecoder(encoding)("strict")
        valid, cp1252_valid, offset, chunk = True, True, 0, head
        while chunk:
            if text_only and b"\x00" in chunk:
                raise UnreadableFile(
                    f"{path.name} holds binary data (NUL bytes), not text; export the table as CSV or Excel"
                )
            if valid:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    valid, bad_at = False, offset + exc.start
            if may_fall_back and cp1252_valid and _CP1252_UNDEFINED.search(chunk):
                cp1252_valid = False
            offset += len(chunk)
            chunk = f.read(_CHUNK)
        if valid:
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                valid, bad_at = False, offset
    if valid:
        return encoding
    if may_fall_back and cp1252_valid:
        return "cp1252"
    if may_fall_back:
        raise UnreadableFile(
            f"{path.name} is neither UTF-8 nor Windows-1252 text (first bad byte at offset {bad_at}); "
            "save it as 'CSV UTF-8'"
        )
    raise UnreadableFile(
        f"{path.name} starts like {encoding} text but is not valid {encoding} (at byte offset {bad_at}); "
        "save it again as 'CSV UTF-8'"
    )


def sniff_delimiter(sample: str, *, complete: bool, default: str = ",") -> str:
    """The delimiter among , ; tab | that splits the first records of `sample` into steady columns.

    `complete` says whether the sample is the whole file (else its last, perhaps cut, record is ignored). The
    header fixes the column count: a candidate must split it into at least two cells. The candidate whose
    records most often match that count wins; on a tie, the one leaving fewer cells with a stray quote (a
    quote only survives parsing when the delimiter is wrong, e.g. '"a,1";"b"' split at the comma), then the
    one giving more columns, then `default`, then the order of DELIMITERS. With no candidate (a one-column
    file) the answer is `default`.
    """
    best: tuple[float, int, int, int] | None = None
    choice = default
    order = (default, *(d for d in DELIMITERS if d != default))
    for rank, delimiter in enumerate(order):
        reader = csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter)
        try:
            records = [record for record in reader if any(cell.strip() for cell in record)]
        except csv.Error:
            continue  # e.g. a field beyond csv's size limit: not this delimiter
        if not complete and len(records) > 1:
            records.pop()
        records = records[:_SAMPLE_RECORDS]
        if not records or len(records[0]) < 2:
            continue
        width = len(records[0])
        # A record matches when it has the header's width, give or take trailing empty cells beyond it.
        steady = sum(len(r) >= width and not "".join(r[width:]).strip() for r in records) / len(records)
        stray_quotes = sum('"' in cell for record in records for cell in record)
        score = (steady, -stray_quotes, width, -rank)
        if best is None or score > best:
            best, choice = score, delimiter
    return choice


def _read_sample(path: Path, encoding: str) -> tuple[str, bool]:
    """The first characters of the file and whether they are all of it."""
    with path.open(encoding=encoding, newline="") as f:
        sample = f.read(_SAMPLE_CHARS)
        return sample, f.read(1) == ""


def open_text_table(path: Path, fmt: str, limits: ReadLimits | None = None) -> Table:
    """Open a delimited text file: detect encoding and delimiter, read up to the header row."""
    encoding = detect_encoding(path)
    sample, complete = _read_sample(path, encoding)
    sep_line = _SEP_LINE.match(sample)
    if sep_line:
        # Excel's own hint: a first line "sep=;" names the delimiter and is not shown as a row.
        delimiter = sep_line.group(1)
    else:
        delimiter = sniff_delimiter(sample, complete=complete, default="\t" if fmt == "tsv" else ",")
    f = path.open(encoding=encoding, newline="")
    try:
        if sep_line:
            f.readline()
        records = enumerate(csv.reader(f, delimiter=delimiter), start=1)
        header_row, headers = _find_header(path, records)
    except BaseException:
        f.close()
        raise
    info = TableInfo(format=fmt, encoding=encoding, delimiter=delimiter, sheet=None, header_row=header_row)
    log.debug("table_opened", file=path.name, format=fmt, encoding=encoding, delimiter=delimiter)
    return Table(info, headers, _rows(path, f, records, len(headers), limits or ReadLimits()), f.close)


def _find_header(path: Path, records: Iterator[tuple[int, list[str]]]) -> tuple[int, list[str]]:
    """The first row with a non-empty cell: its row number and header cells."""
    try:
        for number, record in records:
            if any(cell.strip() for cell in record):
                return number, header_cells(record)
    except csv.Error as exc:
        raise UnreadableFile(f"{path.name} is not a readable delimited text file: {exc}") from exc
    raise UnreadableFile(f"{path.name} has no header row: the file is empty")


def _rows(
    path: Path, f: TextIO, records: Iterator[tuple[int, list[str]]], width: int, limits: ReadLimits
) -> Iterator[Row]:
    """Trimmed, fitted, non-empty data rows; the hot loop of a million-row ingest, so kept plain."""
    strip, join = str.strip, "".join
    max_rows, max_columns, max_chars = limits.max_rows, limits.max_columns, limits.max_cell_chars
    number = 0
    try:
        for number, record in records:
            if number > max_rows:
                raise UnreadableFile(
                    f"{path.name}: row {number} is beyond the limit of {max_rows} rows (intake.max_rows)"
                )
            if len(record) > max_columns:
                raise UnreadableFile(
                    f"{path.name}: row {number} has {len(record)} columns, beyond the limit of {max_columns} "
                    "(intake.max_columns)"
                )
            if len(join(record)) > max_chars:
                for index, cell in enumerate(record):
                    if len(cell) > max_chars:
                        raise UnreadableFile(
                            f"{path.name}: row {number}, column {index + 1} holds {len(cell)} characters, beyond the "
                            f"limit of {max_chars} (intake.max_cell_chars)"
                        )
            cells = list(map(strip, record))
            if not any(cells):
                continue
            if len(cells) != width:
                cells = fit(cells, width)
            if "#" in join(cells):
                mark_errors(cells)
            yield number, cells
    except csv.Error as exc:
        raise UnreadableFile(f"{path.name}: unreadable text after row {number}: {exc}") from exc
    finally:
        f.close()
