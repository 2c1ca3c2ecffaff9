"""Workbooks read value by value against what Excel shows, as libraries write them and as LibreOffice saves them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import xlsxwriter
from office_corpus import HEADERS, SOFFICE, convert, library_corpus, libreoffice_corpus
from support import make_project

from daemon.config import Settings, UploadSettings
from daemon.intake import take
from daemon.ledger import Ledger
from daemon.readers import Imprecise, Number, open_table
from daemon.sandbox import Emulator

__all__ = ["library_corpus", "libreoffice_corpus"]  # the fixtures, imported for pytest to find them

# What Excel shows in each cell (dates and times as the ISO text the API takes; never a thousands separator:
# Excel shows 1,234,567 for `#,##0`, or 1.234.567 in a German Excel).
EXCEL_SHOWS = {
    "extended_id": "000000000007",
    "zip": "00123",
    "fixed": "3.14",
    "share": "25%",
    "share1": "25.5%",
    "count": "1234567",
    "amount": "1234.50",
    "as_text": "42",
    "made": "2026-11-02",
    "at": "14:30:00",
    "stamp": "2026-11-02T14:30:00",
    "ok": "TRUE",
    "sn": "SN-0042",
    "owed": "(5)",
    "red": "-1.50",
    "locale": "1.25",
    "huge": "12345678901234600",
}
# .xls and .ods through python-calamine: values without their formats (README: "Cells as Excel shows them").
VALUES_ONLY = {
    **EXCEL_SHOWS,
    "extended_id": "7",
    "zip": "123",
    "fixed": "3.14159",
    "share": "0.25",
    "share1": "0.255",
    "amount": "1234.5",
    "made": "2026-11-02T14:30:00",
    "sn": "42",
    "owed": "-5",
    "red": "-1.5",
}
NUMBERS = {"extended_id", "zip", "fixed", "share", "share1", "count", "amount", "as_text", "sn", "owed", "red"}


def cells_of(path: Path) -> dict[str, str]:
    with open_table(path) as table:
        assert table.headers == HEADERS
        rows = list(table.rows())
    assert [line for line, _ in rows] == [2]
    return dict(zip(HEADERS, rows[0][1], strict=True))


def check_types(cells: dict[str, str]) -> None:
    for name in NUMBERS:
        assert type(cells[name]) is Number, name  # still a number: key rules for numbers apply
    assert type(cells["huge"]) is Imprecise
    assert type(cells["made"]) is str


@pytest.mark.parametrize("writer", ["xlsxwriter", "openpyxl"])
def test_library_workbooks_read_as_excel_shows_them(library_corpus: dict[str, Path], writer: str) -> None:
    cells = cells_of(library_corpus[writer])
    assert cells == EXCEL_SHOWS
    check_types(cells)


@pytest.mark.slow
def test_a_workbook_saved_by_libreoffice_reads_as_excel_shows_it(libreoffice_corpus: dict[str, Path]) -> None:
    cells = cells_of(libreoffice_corpus["xlsx"])
    assert cells == EXCEL_SHOWS
    check_types(cells)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "expected"),
    [("xls", VALUES_ONLY), ("ods", {**VALUES_ONLY, "ok": "1"})],  # LibreOffice's .ods: a boolean is a 1
)
def test_xls_and_ods_saved_by_libreoffice_read_their_values(
    libreoffice_corpus: dict[str, Path], kind: str, expected: dict[str, str]
) -> None:
    cells = cells_of(libreoffice_corpus[kind])
    assert cells == expected
    assert type(cells["huge"]) is Imprecise


def serials_workbook(path: Path) -> Path:
    """Zero-padded serials stored as numbers, a date-time shown as a date, one 17-digit number in a field."""
    workbook = xlsxwriter.Workbook(str(path))
    sheet = workbook.add_worksheet("Codes")
    padded = workbook.add_format({"num_format": "000000000000"})
    grouped = workbook.add_format({"num_format": "#,##0"})
    day = workbook.add_format({"num_format": "dd.mm.yyyy"})
    sheet.write_row(0, 0, ["serial_number", "lot", "production_date"])
    sheet.write_number(1, 0, 7, padded)
    sheet.write_number(1, 1, 1234567, grouped)
    sheet.write_number(2, 0, 12345678, grouped)  # no separator in the key, and still 4 zeros short
    sheet.write_number(2, 1, 5)
    sheet.write_string(3, 0, "000000000009")
    sheet.write_number(3, 1, 12345678901234567)
    for row in (1, 2, 3):
        sheet.write_datetime(row, 2, dt.datetime(2026, 11, 2, 14, 30), day)  # noqa: DTZ001
    workbook.close()
    return path


def test_padded_serials_are_taken_short_ones_and_numbers_beyond_15_digits_rejected(tmp_path: Path) -> None:
    source = serials_workbook(tmp_path / "serials.xlsx")
    settings = Settings(upload=UploadSettings(data_key="serial_number"))
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    file_id = take(source, ledger, settings)
    assert file_id is not None
    rows = {line: (key, status, detail) for line, key, status, detail, _, _ in ledger.report_rows(file_id)}
    cells = {line: cells for line, cells, _, _ in ledger.error_rows(file_id)}
    ledger.close()
    assert rows[2] == ("000000000007", "pending", "")
    assert rows[3] == (
        "12345678",
        "rejected",
        "cell A3: serial_number 12345678 was stored as a number of 8 digits while the column's codes have 12: "
        "its leading zeros were dropped (was it 000012345678?); format the column as Text and export it again",
    )
    assert rows[4] == (
        "000000000009",
        "rejected",
        "cell B4: column 'lot': '12345678901234600' was stored as a number of 17 digits, but a spreadsheet keeps "
        "only 15, so its last digits are lost; format the column as Text and type the values again",
    )
    assert cells[4] == ["000000000009", "12345678901234600", "2026-11-02"]


def staff_workbook(path: Path) -> Path:
    """What office staff make: serials typed as numbers in a `000000000000` column, dates shown as dd.mm.yyyy
    (one typed with a time), a share in percent, a flag."""
    workbook = xlsxwriter.Workbook(str(path))
    sheet = workbook.add_worksheet("Lot 7")
    padded = workbook.add_format({"num_format": "000000000000"})
    day = workbook.add_format({"num_format": "dd.mm.yyyy"})
    share = workbook.add_format({"num_format": "0%"})
    sheet.write_row(0, 0, ["serial_number", "production_date", "yield", "checked"])
    for row, serial in enumerate((7, 8, 1234567), start=1):
        sheet.write_number(row, 0, serial, padded)
        sheet.write_datetime(row, 1, dt.datetime(2026, 11, row, 14 if row == 1 else 0, 30), day)  # noqa: DTZ001
        sheet.write_number(row, 2, 0.25 * row, share)
        sheet.write_boolean(row, 3, row != 2)
    workbook.close()
    return path


STAFF_UPLOADED = {
    "000000000007": {"production_date": "2026-11-01", "yield": "25%", "checked": "TRUE"},
    "000000000008": {"production_date": "2026-11-02", "yield": "50%", "checked": "FALSE"},
    "000001234567": {"production_date": "2026-11-03", "yield": "75%", "checked": "TRUE"},
}


def upload_through_the_service(tmp_path: Path, emulator: Emulator, source: Path) -> dict[str, dict[str, str]]:
    project = make_project(tmp_path / "site", emulator.base_url, upload={"data_key": "serial_number"})
    project.drop(source.name, source.read_bytes())
    done = project.cli("run", "--once")
    assert done.returncode == 0, done.stderr + done.stdout
    assert project.summary(source.stem)["status"] == "completed"
    return emulator.all_data("serial_number")


def test_zero_padded_serials_and_dates_go_through_as_shown(tmp_path: Path, emulator: Emulator) -> None:
    source = staff_workbook(tmp_path / "lot7.xlsx")
    assert upload_through_the_service(tmp_path, emulator, source) == STAFF_UPLOADED


@pytest.mark.slow
def test_the_same_workbook_saved_by_libreoffice_goes_through_as_shown(tmp_path: Path, emulator: Emulator) -> None:
    if SOFFICE is None:
        pytest.skip("LibreOffice (soffice) is not installed: apt-get install libreoffice-calc (.ci/run does)")
    (tmp_path / "made").mkdir()
    made = staff_workbook(tmp_path / "made" / "lot7.xlsx")
    saved = convert(made, "xlsx", tmp_path / "saved", tmp_path / "profile")
    assert upload_through_the_service(tmp_path, emulator, saved) == STAFF_UPLOADED
