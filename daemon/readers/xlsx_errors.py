"""Finding the error cells (#N/A, #DIV/0!, ...) of an .xlsx sheet, which python-calamine reads as empty."""

from __future__ import annotations

import posixpath
import re

# The XML comes from a workbook someone dropped in the inbox. Python's expat fetches no external entities
# and, since expat 2.4.1 (bundled with Python 3.11), refuses exponential entity expansion: it is safe here.
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import structlog

from daemon.readers.table import CellError, error_value

log = structlog.get_logger(__name__)

ErrorCells = dict[int, dict[int, CellError]]  # 0-based row -> 0-based column -> error

_CHUNK = 1 << 20
_ERROR_ATTRIBUTE = re.compile(rb"""\st=["']e["']""")
_REFERENCE = re.compile(r"([A-Z]+)(\d+)")  # no nested quantifier: linear


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


def _mentions_errors(archive: zipfile.ZipFile, member: str) -> bool:
    """Whether any cell of the sheet XML has type "e"; a byte scan, far cheaper than parsing."""
    with archive.open(member) as stream:
        tail = b""
        while chunk := stream.read(_CHUNK):
            if _ERROR_ATTRIBUTE.search(tail + chunk):
                return True
            tail = chunk[-8:]
    return False


def _column(reference: str) -> int:
    """0-based column index of a cell reference such as "AB12"."""
    match = _REFERENCE.fullmatch(reference)
    letters = match.group(1) if match else ""
    index = 0
    for letter in letters:
        index = index * 26 + ord(letter) - 64
    return index - 1


def _parse(archive: zipfile.ZipFile, member: str) -> ErrorCells:
    """Error cells of a sheet XML; rows and cells without a reference follow the previous one."""
    errors: ErrorCells = {}
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
            elif tag == "c" and element.get("t") == "e":
                text = next((child.text or "" for child in element if _local(child.tag) == "v"), "").strip()
                errors.setdefault(row, {})[col] = error_value(text)
            elif tag == "row":
                element.clear()
    return errors


def error_cells(path: Path, sheet: str) -> ErrorCells:
    """Error cells of the named sheet of an .xlsx/.xlsm file; {} when there are none or cannot be found."""
    try:
        with zipfile.ZipFile(path) as archive:
            if "xl/workbook.xml" not in archive.namelist():
                return {}  # an OpenDocument workbook
            member = _sheet_member(archive, sheet)
            if member is None or not _mentions_errors(archive, member):
                return {}
            # One streaming XML pass (linear in the sheet's size, unlike the regular expression it replaces, which
            # backtracked on crafted XML); a later pass over cell styles can ride along in _parse.
            return _parse(archive, member)
    except (zipfile.BadZipFile, KeyError, ET.ParseError, OSError, ValueError) as exc:
        # Calamine read the sheet already; without this scan errors read as empty, which is no reason to fail.
        log.warning("xlsx_error_scan_failed", file=path.name, sheet=sheet, error=str(exc))
        return {}
