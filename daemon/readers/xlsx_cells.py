"""What python-calamine does not tell of an .xlsx sheet: its error cells (read as empty) and each number's format.

One streaming pass over the sheet XML collects both, in a thread that runs while calamine parses the sheet:
- chunks in the usual shape (every cell tag starting `<c r="A1"`, as Excel, LibreOffice, openpyxl and
  xlsxwriter write them) without error cells: a linear regular expression picks out the cells whose style has a
  number format; a chunk formatted by column (the common case) becomes one run of rows by tuple comparisons,
  so a 200,000-row sheet with a format on every cell keeps its speed;
- from the first chunk in any other shape (error cells, cells without a reference, other quotes): the XML
  parser, which reads any well-formed sheet, into a table of the marked cells.
The number formats themselves come from xl/styles.xml (cellXfs -> numFmtId -> format code).
"""

from __future__ import annotations

import posixpath
import queue
import re
import threading

# The XML comes from a workbook someone dropped in the inbox. Python's expat fetches no external entities
# and, since expat 2.4.1 (bundled with Python 3.11), refuses exponential entity expansion: it is safe here.
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from daemon.readers import events
from daemon.readers.numfmt import BUILTIN_FORMATS, GENERAL, TEXT, NumberFormat, parse
from daemon.readers.table import CellError, error_value

log = events.logger(__name__)

Mark = CellError | NumberFormat  # what a cell carries beyond calamine's value
Marks = dict[int, Mark]  # 0-based column -> mark
ErrorCells = dict[int, dict[int, CellError]]  # 0-based row -> 0-based column -> error

_CHUNK = 1 << 20
_ERROR_ATTRIBUTE = re.compile(rb"""\st=["']e["']""")
_REFERENCE = re.compile(r"([A-Z]+)(\d+)")  # no nested quantifier: linear
_PREFIX = re.compile(rb"<([A-Za-z_][\w.-]{0,30}:)?sheetData[\s/>]")


def _local(tag: str) -> str:
    """An XML tag without its namespace."""
    return tag.rpartition("}")[2]


def _sheet_member(archive: zipfile.ZipFile, sheet: str) -> str | None:
    """The archive member holding the named sheet's XML, from the workbook and its relationships."""
    workbook = ET.fromstring(archive.read("xl/workbook.xml"))  # noqa: S314
    relation_id = None
    for element in workbook.iter():
        if _local(element.tag) == "sheet" and element.get("name") == sheet:
            relation_id = next((v for k, v in element.attrib.items() if _local(k) == "id"), None)
    if relation_id is None:
        return None
    relations = ET.fromstring(archive.read("xl/_rels/workbook.xml.rels"))  # noqa: S314
    for element in relations.iter():
        if _local(element.tag) == "Relationship" and element.get("Id") == relation_id:
            target = element.get("Target", "")
            return target.lstrip("/") if target.startswith("/") else posixpath.normpath(f"xl/{target}")
    return None


def style_formats(archive: zipfile.ZipFile) -> dict[int, NumberFormat]:
    """The number format of each cell style (cellXfs index) that changes how a number reads; General ones left out."""
    try:
        root = ET.fromstring(archive.read("xl/styles.xml"))  # noqa: S314
    except KeyError:
        return {}
    codes = {number: code for number, code in BUILTIN_FORMATS.items()}
    for element in root.iter():
        if _local(element.tag) == "numFmt":
            number = element.get("numFmtId", "")
            if number.isascii() and number.isdigit():
                codes[int(number)] = element.get("formatCode", "General")
    formats: dict[int, NumberFormat] = {}
    for holder in root:
        if _local(holder.tag) != "cellXfs":
            continue
        for index, xf in enumerate(x for x in holder if _local(x.tag) == "xf"):
            number = xf.get("numFmtId", "0")
            code = codes.get(int(number), "General") if number.isascii() and number.isdigit() else "General"
            fmt = parse(code)
            if any(section.kind not in (GENERAL, TEXT) for section in fmt.sections):
                formats[index] = fmt
    return formats


def _column(reference: str) -> int:
    """0-based column index of a cell reference such as "AB12"."""
    match = _REFERENCE.fullmatch(reference)
    letters = match.group(1) if match else ""
    index = 0
    for letter in letters:
        index = index * 26 + ord(letter) - 64
    return index - 1


Run = list[Any]  # [first row, last row, marks]: consecutive rows with equal marks, 0-based
_AHEAD = 64  # chunks of runs the scanning thread may read ahead of the reader


class SheetMarks:
    """The marked cells of a sheet, asked for row by row in increasing order (`row(index)`, 0-based).

    Given a stream, a thread reads it ahead while calamine parses the sheet (calamine releases the GIL, so the
    two take turns on two cores instead of one after the other), at most _AHEAD chunks of runs ahead.
    """

    def __init__(
        self, table: dict[int, Marks] | None = None, stream: Iterator[tuple[int, int, Marks]] | None = None
    ) -> None:
        self._table = table or {}
        self._queue: queue.Queue[list[Run] | None] | None = None
        self._stop = threading.Event()
        self._runs: list[Run] = []
        self._at = 0
        self.thread: threading.Thread | None = None  # the scanning thread, if any
        if stream is not None:
            self._queue = queue.Queue(maxsize=_AHEAD)
            self.thread = threading.Thread(target=self._read_ahead, args=(stream,), daemon=True, name="xlsx-scan")
            self.thread.start()

    def _read_ahead(self, stream: Iterator[tuple[int, int, Marks]]) -> None:
        """The scanning thread: runs of rows, a list per chunk of the sheet, then None."""
        assert self._queue is not None
        batch: list[Run] = []
        try:
            for first, last, marks in stream:
                if batch and batch[-1][1] == first - 1 and batch[-1][2] == marks:
                    batch[-1][1] = last
                    continue
                batch.append([first, last, marks])
                if len(batch) >= 4096:
                    if not self._put(batch):
                        return
                    batch = []
        except Exception as exc:  # the reader must not wait for a thread that died: logged, the rest unmarked
            log.warning("xlsx_cell_scan_failed", error=str(exc))
        if batch and not self._put(batch):
            return
        self._put(None)

    def _put(self, item: list[Run] | None) -> bool:
        """Hand a batch to the reader; False once the reader has closed the table."""
        assert self._queue is not None
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def row(self, index: int) -> Marks | None:
        """The marks of one row, or None; rows must be asked for in increasing order."""
        if self._queue is None:
            return self._table.get(index)
        while True:
            if self._at < len(self._runs):
                first, last, marks = self._runs[self._at]
                if index > last:
                    self._at += 1
                    continue
                return marks if index >= first else None
            batch = self._queue.get()
            if batch is None:
                self._queue = None  # the sheet's end: no more marks
                self._table = {}
                return None
            self._runs, self._at = batch, 0

    def close(self) -> None:
        """Stop the scanning thread (the table was closed before its end)."""
        self._stop.set()

    def error_table(self) -> ErrorCells:
        """All the error cells, row by row; reads the rest of a streamed sheet (for tests and tools)."""
        table = dict(self._table)
        while self._queue is not None:
            batch = self._queue.get()
            if batch is None:
                break
            for first, last, marks in batch:
                for row in range(first, last + 1):
                    table[row] = marks
        self._queue = None
        return {
            row: errors
            for row, marks in table.items()
            if (errors := {col: mark for col, mark in marks.items() if isinstance(mark, CellError)})
        }


NO_MARKS = SheetMarks()


def _mentions_errors(archive: zipfile.ZipFile, member: str) -> bool:
    """Whether any cell of the sheet XML has type "e"; a byte scan, far cheaper than parsing."""
    with archive.open(member) as stream:
        tail = b""
        while chunk := stream.read(_CHUNK):
            if _ERROR_ATTRIBUTE.search(tail + chunk):
                return True
            tail = chunk[-8:]
    return False


def _styled_pattern(prefix: bytes, styles: list[int]) -> re.Pattern[bytes]:
    """A cell tag in the usual shape whose style is one of `styles`: (column letters, row digits, style)."""
    # Only the styles that change a number are matched; past 200 of them, any, looked up in `by_style`.
    alternatives = b"|".join(str(s).encode() for s in styles) if 0 < len(styles) <= 200 else rb"[0-9]{1,6}"
    # A text cell in such a style matches too (t after s); harmless, the reader formats only numbers.
    return re.compile(
        re.escape(b"<" + prefix + b"c")
        + rb' r="([A-Z]{1,3})([0-9]{1,7})"(?: t="[a-z]{1,9}")? s="('
        + alternatives
        + rb')"'
    )


def _unusual_pattern(prefix: bytes) -> re.Pattern[bytes]:
    """A cell tag whose first attribute is not `r="` followed by a column letter (no reference, other quotes)."""
    return re.compile(re.escape(b"<" + prefix + b"c") + rb'[\s/>](?!r="[A-Z])')


def _usual(part: bytes, unusual: re.Pattern[bytes]) -> bool:
    """Whether every cell tag of a chunk starts `<c r="A` and none is an error cell: three C-speed scans."""
    return b't="e"' not in part and b"t='e'" not in part and unusual.search(part) is None


def _regular(matches: list[tuple[bytes, bytes, bytes]]) -> tuple[int, int, int] | None:
    """(first row number, last row number, cells per row) when a chunk's styled cells are the same columns and
    styles in every row of an unbroken run of rows (a sheet formatted by column); None otherwise.

    Tuple slices and comparisons only, at C speed: such a chunk costs no Python work per cell.
    """
    count = len(matches)
    if not count:
        return None
    letters, digits, styles = zip(*matches, strict=True)
    first = digits[0]
    width = digits.index(next((d for d in digits if d != first), first)) or count
    rows, rest = divmod(count, width)
    if rest or letters != letters[:width] * rows or styles != styles[:width] * rows:
        return None
    numbers = digits[::width]
    if any(digits[i::width] != numbers for i in range(1, width)):
        return None
    start = int(first)
    if list(map(int, numbers)) != list(range(start, start + rows)):
        return None
    return start, start + rows - 1, width


def _stream(
    archive: zipfile.ZipFile, member: str, prefix: bytes, formats: dict[int, NumberFormat]
) -> Iterator[tuple[int, int, Marks]]:
    """Runs (first row, last row, marks; 0-based) of marked rows, in sheet order, chunk by chunk.

    Chunks end where a row starts. The fast pattern reads chunks whose cells are all in the usual shape: a chunk
    formatted by column gives one run, any other a run per row. At the first chunk that is not in the usual shape
    (an error cell, a cell without a reference, other quotes), the XML parser reads the sheet and the rows not
    yet given follow from its table.
    """
    styled = _styled_pattern(prefix, sorted(formats))
    unusual = _unusual_pattern(prefix)
    row_start = b"<" + prefix + b"row"
    by_style: dict[bytes, Mark] = {str(index).encode(): fmt for index, fmt in formats.items()}
    columns: dict[bytes, int] = {}

    def marks_of(cells: Iterable[tuple[bytes, bytes, bytes]]) -> Marks:
        found = Marks()
        for letters, _, style in cells:
            fmt = by_style.get(style)
            if fmt is not None:  # past 200 styles the pattern matches any
                column = columns.get(letters)
                if column is None:
                    column = columns[letters] = _column(letters.decode() + "1")
                found[column] = fmt
        return found

    row, row_digits, marks = -1, b"", Marks()
    with archive.open(member) as stream:
        tail = b""
        while True:
            chunk = stream.read(_CHUNK)
            buffer = tail + chunk
            cut = len(buffer)
            if chunk:
                cut = buffer.rfind(row_start)
                cut = cut if cut > 0 else buffer.rfind(b"<")  # a row longer than a chunk: cut at a tag
            part = buffer[:cut]
            if not _usual(part, unusual):
                if marks:
                    yield row, row, marks
                done = row
                for number, found in sorted(_parse(archive, member, formats).items()):
                    if number > done:
                        yield number, number, found
                return
            matches = styled.findall(part)
            regular = _regular(matches) if matches and matches[0][1] != row_digits else None
            if regular is not None:
                if marks:
                    yield row, row, marks
                first, last, width = regular
                yield first - 1, last - 1, marks_of(matches[:width])
                row, row_digits, marks = last - 1, matches[-1][1], Marks()
                matches = []
            for match in matches:
                if match[1] != row_digits:  # compared as bytes: one int() per row, not per cell
                    if marks:
                        yield row, row, marks
                    row, row_digits, marks = int(match[1]) - 1, match[1], Marks()
                marks.update(marks_of((match,)))
            if not chunk:
                break
            tail = buffer[cut:]
    if marks:
        yield row, row, marks


def _parse(archive: zipfile.ZipFile, member: str, formats: dict[int, NumberFormat]) -> dict[int, Marks]:
    """Error cells and styled number cells of a sheet XML; rows and cells without a reference follow the previous."""
    table: dict[int, Marks] = {}
    row = col = -1
    with archive.open(member) as stream:
        for event, element in ET.iterparse(stream, events=("start", "end")):  # noqa: S314
            tag = _local(element.tag)
            if event == "start":
                if tag == "row":
                    number = element.get("r")
                    row, col = (int(number) - 1 if number else row + 1), -1
                elif tag == "c":
                    reference = element.get("r")
                    col = _column(reference) if reference else col + 1
            elif tag == "c":
                kind = element.get("t", "n")
                if kind == "e":
                    text = next((child.text or "" for child in element if _local(child.tag) == "v"), "").strip()
                    table.setdefault(row, {})[col] = error_value(text)
                elif kind == "n" and formats:
                    style = element.get("s", "0")
                    fmt = formats.get(int(style)) if style.isascii() and style.isdigit() else None
                    if fmt is not None:
                        table.setdefault(row, {})[col] = fmt
            elif tag == "row":
                element.clear()
    return table


def sheet_marks(path: Path, sheet: str) -> SheetMarks:
    """The error cells and number formats of the named sheet of an .xlsx/.xlsm file (none when it has neither)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        log.warning("xlsx_cell_scan_failed", file=path.name, sheet=sheet, error=str(exc))
        return NO_MARKS
    try:
        if "xl/workbook.xml" not in archive.namelist():
            archive.close()
            return NO_MARKS  # an OpenDocument workbook
        member = _sheet_member(archive, sheet)
        if member is None:
            archive.close()
            return NO_MARKS
        formats = style_formats(archive)
        with archive.open(member) as stream:
            head = stream.read(1 << 16)
        found = _PREFIX.search(head)
        prefix = (found.group(1) or b"") if found else b""
        if not formats and not _mentions_errors(archive, member):
            archive.close()
            return NO_MARKS  # no number format to apply and no error cell: nothing to scan for
        return SheetMarks(stream=_guarded(archive, _stream(archive, member, prefix, formats), path.name))
    except (zipfile.BadZipFile, KeyError, ET.ParseError, OSError, ValueError) as exc:
        # Calamine read the sheet already; without this scan errors read as empty and numbers as General.
        archive.close()
        log.warning("xlsx_cell_scan_failed", file=path.name, sheet=sheet, error=str(exc))
        return NO_MARKS


def _guarded(
    archive: zipfile.ZipFile, rows: Iterator[tuple[int, int, Marks]], name: str
) -> Iterator[tuple[int, int, Marks]]:
    """The stream of marks, closing the archive at its end; a read failure ends it with a warning."""
    try:
        with archive:
            yield from rows
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        log.warning("xlsx_cell_scan_failed", file=name, error=str(exc))


def error_cells(path: Path, sheet: str) -> ErrorCells:
    """Only the error cells of the named sheet (for tests and tools; the reader takes sheet_marks)."""
    return sheet_marks(path, sheet).error_table()
