"""Reports in the person's own kind of file, tried as office staff would: fix the rejected file, drop it back."""

import csv
import io
import shutil
from datetime import datetime
from pathlib import Path

import openpyxl
import pytest
import xlsxwriter
from office_corpus import SOFFICE, convert
from support import Project, make_project

from daemon.sandbox import Emulator

SERIALS = {"data_key": "serial_number", "mode": "sync"}


def serial(i: int) -> str:
    return f"{i:012d}"  # zero-padded serials, as production lines print them


@pytest.fixture
def project(tmp_path: Path, emulator: Emulator) -> Project:
    return make_project(tmp_path / "site", emulator.base_url, upload=SERIALS)


@pytest.mark.slow  # the real CLI as a subprocess
def test_a_semicolon_csv_gets_its_reports_in_columns_and_its_fixed_rejected_rows_upload(
    project: Project, emulator: Emulator
) -> None:
    # A German Excel's "CSV (Trennzeichen-getrennt)": semicolons, Windows-1252, day-first dates.
    text = (
        "serial_number;production_date;lot\r\n"
        f"{serial(1)};31.12.2026;Müller\r\n"
        f"{serial(2)};03/04/2026;L1\r\n"  # ambiguous: no intake.date_order
        ";2026-12-01;L2\r\n"  # no key
        f"{serial(4)};2026-02-30;Größe\r\n"  # no such day
        f"{serial(5)};2026-13-01;'=HYPERLINK(1)\r\n"  # no month 13; the lot typed with a quote, kept as typed
    )
    project.drop("lot.csv", text.encode("cp1252"))
    assert project.cli("run", "--once").returncode == 0

    report = (project.outbox / "lot.report.csv").read_text(encoding="utf-8-sig")
    assert report.splitlines()[0] == "row;serial_number;status;detail;batch;task_id"
    assert emulator.data("serial_number", serial(1)) == {"production_date": "2026-12-31", "lot": "Müller"}
    summary = project.summary("lot")
    assert summary["dates_rewritten"] == {"production_date": 1}
    assert summary["reports"]["rejected_csv"] == "lot.rejected.csv"

    raw = (project.outbox / "lot.rejected.csv").read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf")  # the input's own encoding: every character fits Windows-1252
    rejected = list(csv.reader(io.StringIO(raw.decode("cp1252"), newline=""), delimiter=";"))
    assert rejected[0] == ["serial_number", "production_date", "lot", "error"]
    assert [r[:3] for r in rejected[1:]] == [
        [serial(2), "03/04/2026", "L1"],
        ["", "2026-12-01", "L2"],
        [serial(4), "2026-02-30", "Größe"],
        [serial(5), "2026-13-01", "''=HYPERLINK(1)"],  # the typed quote kept, and escaped once more for Excel
    ]
    assert "2026-04-03 as day-month-year or 2026-03-04 as month-day-year" in rejected[1][3]
    assert "intake.date_order" in rejected[1][3]

    # The person fixes the cells in place, leaves the error column, saves under a new name, drops it back.
    rejected[1][1] = "2026-04-03"
    rejected[2][0] = serial(3)
    rejected[3][1] = "28.02.2026"
    rejected[4][1] = "2026-05-05"
    fixed = io.StringIO(newline="")
    csv.writer(fixed, delimiter=";").writerows(rejected)
    project.drop("lot-fixed.csv", fixed.getvalue().encode("cp1252"))
    assert project.cli("run", "--once").returncode == 0

    summary = project.summary("lot-fixed")
    assert summary["rows"]["uploaded"] == 4
    assert summary["rows"]["rejected"] == 0
    assert emulator.data("serial_number", serial(2)) == {"production_date": "2026-04-03", "lot": "L1"}
    assert emulator.data("serial_number", serial(3)) == {"production_date": "2026-12-01", "lot": "L2"}
    assert emulator.data("serial_number", serial(4)) == {"production_date": "2026-02-28", "lot": "Größe"}
    assert emulator.data("serial_number", serial(5)) == {"production_date": "2026-05-05", "lot": "'=HYPERLINK(1)"}


def serial_workbook(path: Path) -> None:
    """What a person's workbook looks like: text serials with zeros, real date cells, one typed text date."""
    workbook = xlsxwriter.Workbook(str(path))
    ws = workbook.add_worksheet("Lot 7")
    day = workbook.add_format({"num_format": "dd.mm.yyyy"})
    ws.write_row(0, 0, ["serial_number", "production_date", "note", "lot"])
    for row, i in enumerate(range(1, 5), start=1):
        ws.write_string(row, 0, serial(i))
        ws.write_datetime(row, 1, datetime(2026, 11, i), day)  # noqa: DTZ001 (spreadsheets hold no zone)
        ws.write_string(row, 3, "0042")
    ws.write_string(2, 1, "03/04/2026")  # typed as text, ambiguous
    ws.write_string(2, 2, "-5 units")  # Excel would read it as a formula if typed back unescaped
    ws.write_string(3, 0, "")  # no key
    workbook.close()


@pytest.mark.slow  # the real CLI as a subprocess
def test_a_workbook_gets_rejected_xlsx_of_text_cells_that_uploads_with_its_zeros_once_fixed(
    tmp_path: Path, emulator: Emulator
) -> None:
    reports = {"delimiter": ";", "xlsx": True}
    project = make_project(tmp_path / "site", emulator.base_url, upload=SERIALS, reports=reports)
    serial_workbook(project.inbox / ".lot.xlsx.part")
    (project.inbox / ".lot.xlsx.part").rename(project.inbox / "lot.xlsx")
    assert project.cli("run", "--once").returncode == 0

    assert emulator.data("serial_number", serial(1)) == {"production_date": "2026-11-01", "lot": "0042"}
    summary = project.summary("lot")
    assert summary["reports"] == {
        "report_csv": "lot.report.csv",
        "report_xlsx": "lot.report.xlsx",
        "rejected_csv": None,
        "rejected_xlsx": "lot.rejected.xlsx",
    }
    report = (project.outbox / "lot.report.csv").read_text(encoding="utf-8-sig").splitlines()
    assert report[0] == "row;serial_number;status;detail;batch;task_id"  # reports.delimiter for a workbook
    report_sheet = openpyxl.load_workbook(project.outbox / "lot.report.xlsx").active
    assert report_sheet is not None
    assert [c.value for c in report_sheet[2]][:3] == ["2", serial(1), "uploaded"]

    book = openpyxl.load_workbook(project.outbox / "lot.rejected.xlsx")
    assert book.sheetnames == ["Lot 7"]  # the input's sheet: intake.sheet still finds it
    sheet = book["Lot 7"]
    cells = [list(row) for row in sheet.iter_rows(min_row=1, max_row=3)]
    assert [c.value for c in cells[0]] == ["serial_number", "production_date", "note", "lot", "error"]
    assert [c.value for c in cells[1][:4]] == [serial(2), "03/04/2026", "'-5 units", "0042"]
    assert [c.value for c in cells[2][:4]] == [None, "2026-11-03", None, "0042"]
    assert all(c.data_type == "s" and c.number_format == "@" for c in cells[1] if c.value is not None)
    assert "is ambiguous" in str(cells[1][4].value)

    # Fixed in place as a person would: the date typed again, the missing serial typed with its zeros.
    sheet["B2"] = "2026-04-03"
    sheet["A3"] = serial(3)
    book.save(project.inbox / ".fixed.part")
    (project.inbox / ".fixed.part").rename(project.inbox / "lot-fixed.xlsx")
    assert project.cli("run", "--once").returncode == 0

    summary = project.summary("lot-fixed")
    assert summary["rows"]["uploaded"] == 2
    assert "column 'error' (added by scm-daemon to rejected.csv) is not uploaded" in summary["warnings"]
    assert emulator.data("serial_number", serial(2)) == {
        "production_date": "2026-04-03",
        "note": "-5 units",  # the escape this daemon added is undone
        "lot": "0042",
    }
    assert emulator.data("serial_number", serial(3)) == {"production_date": "2026-11-03", "lot": "0042"}


@pytest.mark.slow
@pytest.mark.skipif(SOFFICE is None, reason="LibreOffice (soffice) is not installed; .ci/run installs it")
def test_a_rejected_xlsx_saved_again_by_an_office_suite_keeps_its_zeros(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, upload=SERIALS)
    serial_workbook(project.inbox / ".lot.xlsx.part")
    (project.inbox / ".lot.xlsx.part").rename(project.inbox / "lot.xlsx")
    assert project.cli("run", "--once").returncode == 0

    book = openpyxl.load_workbook(project.outbox / "lot.rejected.xlsx")
    book["Lot 7"]["B2"] = "2026-04-03"
    book["Lot 7"]["A3"] = serial(3)
    edited = tmp_path / "edited" / "lot-fixed.xlsx"
    edited.parent.mkdir()
    book.save(edited)
    # Opened and saved by LibreOffice, as a person on Linux would: files office suites write differ from ours.
    converted = convert(edited, "xlsx", tmp_path / "saved", tmp_path / "lo-profile")
    shutil.copy(converted, project.inbox / ".lot-fixed.part")
    (project.inbox / ".lot-fixed.part").rename(project.inbox / "lot-fixed.xlsx")
    assert project.cli("run", "--once").returncode == 0

    summary = project.summary("lot-fixed")
    assert summary["rows"]["uploaded"] == 2, summary
    assert emulator.data("serial_number", serial(2)) == {
        "production_date": "2026-04-03",
        "note": "-5 units",
        "lot": "0042",
    }
    assert emulator.data("serial_number", serial(3)) == {"production_date": "2026-11-03", "lot": "0042"}
