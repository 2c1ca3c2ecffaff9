"""Spreadsheets as people send them, through the whole pipeline: the real CLI, then what the emulator received.

The corpus is generated here: workbooks with xlsxwriter and openpyxl, an OpenDocument file by hand, and CSV
files in the dialects and encodings Excel and production lines write.
"""

import codecs
import datetime as dt
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import xlsxwriter
from support import Project, csv_text, make_project

from daemon.sandbox import Emulator


def naive(*parts: int) -> dt.datetime:
    """A date-time without a zone, as spreadsheets hold them."""
    return dt.datetime(*parts)  # noqa: DTZ001


def code(i: int) -> str:
    return f"CODE{i:08d}"


def workbook_bytes(tmp_path: Path, build: Callable[[xlsxwriter.Workbook], None]) -> bytes:
    """An .xlsx file written by xlsxwriter; `build(workbook)` adds the sheets."""
    path = tmp_path / f"build-{len(list(tmp_path.iterdir()))}.xlsx"
    workbook = xlsxwriter.Workbook(str(path))
    build(workbook)
    workbook.close()
    return path.read_bytes()


def ods_bytes(rows: list[list[tuple[str, str, str]]]) -> bytes:
    """A minimal .ods: each cell is (office:value-type, value attributes, shown text)."""
    body = "".join(
        "<table:table-row>"
        + "".join(
            f'<table:table-cell office:value-type="{kind}" {attributes}><text:p>{text}</text:p></table:table-cell>'
            if kind
            else "<table:table-cell/>"
            for kind, attributes, text in row
        )
        + "</table:table-row>"
        for row in rows
    )
    content = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0"'
        ' xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0"'
        ' xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2">'
        f'<office:body><office:spreadsheet><table:table table:name="Codes">{body}</table:table>'
        "</office:spreadsheet></office:body></office:document-content>"
    )
    manifest = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0">'
        '<manifest:file-entry manifest:full-path="/"'
        ' manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/>'
        '<manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>'
        "</manifest:manifest>"
    )
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet")
        archive.writestr("META-INF/manifest.xml", manifest)
        archive.writestr("content.xml", content)
    return buffer.getvalue()


def by_row(project: Project, stem: str) -> dict[int, dict[str, str]]:
    return {int(r["row"]): r for r in project.report(stem)}


def run_once(project: Project) -> None:
    done = project.cli("run", "--once")
    assert done.returncode == 0, done.stderr + done.stdout


# ---------------------------------------------------------------- values, Excel and OpenDocument


def values_workbook(wb: xlsxwriter.Workbook) -> None:
    """Every kind of cell value, one per column, row 2 to 5; row 6 holds an error cell, row 7 an empty field."""
    ws = wb.add_worksheet("Codes")
    date = wb.add_format({"num_format": "yyyy-mm-dd"})
    german_date = wb.add_format({"num_format": "dd.mm.yyyy"})
    stamp = wb.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
    headers = ["extended_id", "qty", "ratio", "made", "stamp", "ok", "doubled", "lot", "note"]
    ws.write_row(0, 0, headers)
    ws.write_string(1, 0, code(1))
    ws.write_number(1, 1, 3.0)  # an integer: "3", never "3.0"
    ws.write_formula(1, 2, "=0.1+0.2", None, 0.30000000000000004)  # a formula: its cached value as Excel shows it
    ws.write_datetime(1, 3, naive(2024, 3, 5), date)
    ws.write_datetime(1, 4, naive(2024, 3, 5, 13, 4, 5), stamp)
    ws.write_boolean(1, 5, True)
    ws.write_formula(1, 6, "=B2*2", None, 6)
    ws.write_string(1, 7, "  000123 ")  # text keeps its leading zeros; trimmed
    ws.write_string(1, 8, "a, b; c")
    ws.write_string(2, 0, f" {code(2)} ")
    ws.write_number(2, 1, 1234567.0)
    ws.write_number(2, 2, -42.5)
    ws.write_datetime(2, 3, naive(1999, 12, 31), german_date)  # shown as 31.12.1999, sent as YYYY-MM-DD
    ws.write_datetime(2, 4, naive(2024, 3, 5), stamp)  # midnight: a date
    ws.write_boolean(2, 5, False)
    ws.write_formula(2, 6, '="L"&"7"', None, "L7")
    ws.write_string(2, 7, "007")
    ws.write_number(3, 2, 1.5e-7)  # a row without a key: rejected
    ws.write_string(4, 0, code(4))
    ws.write_number(4, 1, 123456789012.0)
    ws.write_string(5, 0, code(5))
    ws.write_number(5, 1, 5)
    ws.write_formula(5, 6, "=1/0", None, "#DIV/0!")  # an error cell rejects the row
    ws.write_string(6, 0, code(6))
    ws.write_number(6, 1, 6)  # the other fields empty: left alone (upload.empty_cells = skip)
    ws.write_formula(7, 0, "=NA()", None, "#N/A")  # a key that is an error cell
    ws.write_number(7, 1, 7)


EXPECTED_VALUES = {
    code(1): {
        "qty": "3",
        "ratio": "0.3",
        "made": "2024-03-05",
        "stamp": "2024-03-05T13:04:05",
        "ok": "true",
        "doubled": "6",
        "lot": "000123",
        "note": "a, b; c",
    },
    code(2): {
        "qty": "1234567",
        "ratio": "-42.5",
        "made": "1999-12-31",
        "stamp": "2024-03-05",
        "ok": "false",
        "doubled": "L7",
        "lot": "007",
    },
    code(4): {"qty": "123456789012"},
    code(6): {"qty": "6"},
}


def test_workbook_values_reach_the_api_as_a_person_sees_them(
    tmp_path: Path, emulator: Emulator, project: Project
) -> None:
    project.drop("values.xlsx", workbook_bytes(tmp_path, values_workbook))
    run_once(project)

    assert emulator.all_data("extended_id") == EXPECTED_VALUES
    summary = project.summary("values")
    assert summary["status"] == "completed_with_errors"
    assert summary["format"]["format"] == "xlsx"
    assert summary["format"]["sheet"] == "Codes"
    assert summary["rows"]["uploaded"] == 4
    assert summary["rows"]["rejected"] == 3
    rows = by_row(project, "values")
    assert rows[4]["detail"] == "no extended_id"
    assert rows[6]["detail"].startswith("cell G6: column 'doubled' is an error cell (#DIV/0!)")
    assert rows[8]["detail"].startswith("cell A8: extended_id is an error cell (#N/A)")
    rejected = project.report("values", "rejected")
    assert [r["error"] for r in rejected] == [rows[n]["detail"] for n in (4, 6, 8)]
    assert rejected[1]["doubled"] == "#DIV/0!"


def test_openpyxl_workbook_with_a_chosen_sheet_and_error_literal(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, intake={"sheet": "Batch 2"})
    wb = openpyxl.Workbook()
    first = wb.active
    assert first is not None
    first.title = "Notes"
    first.append(["not", "this", "sheet"])
    ws = wb.create_sheet("Batch 2")
    ws.append([None, None, None])  # a blank row before the header
    ws.append(["extended_id", "made", "count", "flag"])
    ws.append([code(1), dt.date(2024, 1, 2), 12, False])
    ws.append([code(2), naive(2024, 1, 2, 8, 30), 12.25, True])
    ws.append([code(3), "#N/A", 1, True])  # typed as an error value
    wb.save(tmp_path / "chosen.xlsx")
    project.drop("chosen.xlsx", (tmp_path / "chosen.xlsx").read_bytes())
    run_once(project)

    assert emulator.all_data("extended_id") == {
        code(1): {"made": "2024-01-02", "count": "12", "flag": "false"},
        code(2): {"made": "2024-01-02T08:30:00", "count": "12.25", "flag": "true"},
    }
    rows = by_row(project, "chosen")
    assert rows[5]["detail"].startswith("cell B5: column 'made' is an error cell (#N/A)")
    assert project.summary("chosen")["format"]["sheet"] == "Batch 2"


def test_opendocument_values(tmp_path: Path, emulator: Emulator, project: Project) -> None:
    s, f = "string", "float"
    rows = [
        [(s, "", "extended_id"), (s, "", "qty"), (s, "", "made"), (s, "", "share"), (s, "", "ok")],
        [
            (s, "", code(1)),
            (f, 'office:value="3"', "3"),
            ("date", 'office:date-value="2024-03-05"', "05/03/24"),
            ("percentage", 'office:value="0.25"', "25%"),
            ("boolean", 'office:boolean-value="true"', "TRUE"),
        ],
        [(s, "", code(2)), ("", "", ""), ("date", 'office:date-value="2024-03-05T13:04:05"', "x"), ("", "", "")],
        [(s, "", code(3)), (s, 'table:formula="of:=NA()"', "#N/A"), ("", "", "")],
    ]
    project.drop("sheet.ods", ods_bytes(rows))
    run_once(project)

    assert emulator.all_data("extended_id") == {
        code(1): {"qty": "3", "made": "2024-03-05", "share": "0.25", "ok": "true"},
        code(2): {"made": "2024-03-05T13:04:05"},
    }
    assert "column 'qty' is an error cell (#N/A)" in by_row(project, "sheet")[4]["detail"]
    assert project.summary("sheet")["format"]["format"] == "ods"


# ---------------------------------------------------------------- keys a spreadsheet turned into numbers


def serial_workbook(wb: xlsxwriter.Workbook) -> None:
    """A serial column mixing text serials with leading zeros and serials Excel stored as numbers."""
    ws = wb.add_worksheet()
    ws.write_row(0, 0, ["serial_number", "intended_market"])
    ws.write_string(1, 0, "0001234")  # text: kept as it is
    ws.write_string(2, 0, "0001235")
    ws.write_number(3, 0, 1236)  # was 0001236: its zeros are gone
    ws.write_number(4, 0, 1237.5)  # not a whole number
    ws.write_number(5, 0, 12345678901234567890)  # more digits than a spreadsheet number holds
    ws.write_number(6, 0, 9876543)  # as long as the text serials: nothing lost
    ws.write_string(7, 0, "1.23457E+11")  # what Excel shows for a long number, typed into a text cell
    for row in range(1, 8):
        ws.write_string(row, 1, "de")


def test_serials_that_lost_digits_are_rejected_never_uploaded_as_another_code(
    tmp_path: Path, emulator: Emulator
) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, upload={"data_key": "serial_number"})
    project.drop("serials.xlsx", workbook_bytes(tmp_path, serial_workbook))
    project.drop("serials.csv", csv_text(["serial_number", "intended_market"], [("1.23457E+11", "fr"), ("42", "fr")]))
    run_once(project)

    assert emulator.all_data("serial_number") == {
        "0001234": {"intended_market": "de"},
        "0001235": {"intended_market": "de"},
        "9876543": {"intended_market": "de"},
        "42": {"intended_market": "fr"},
    }
    rows = by_row(project, "serials")  # the .xlsx report: the .csv file's gets "serials-2"
    if rows[2]["serial_number"] != "0001234":
        rows = by_row(project, "serials-2")
    assert rows[4]["status"] == "rejected"
    assert rows[4]["detail"].startswith("cell A4: serial_number 1236 was stored as a number of 4 digits")
    assert "leading zeros were dropped (was it 0001236?)" in rows[4]["detail"]
    assert "stored as a number, so digits may be lost" in rows[5]["detail"]
    assert "only 15" in rows[6]["detail"]
    assert rows[7]["status"] == "uploaded"
    assert "reformatted" in rows[8]["detail"]


def test_number_keys_are_trusted_when_no_text_key_shows_a_width(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, upload={"data_key": "serial_number"})

    def build(wb: xlsxwriter.Workbook) -> None:
        ws = wb.add_worksheet()
        ws.write_row(0, 0, ["serial_number", "batch"])
        for i, serial in enumerate([5, 123456, 100000000000001]):
            ws.write_number(i + 1, 0, serial)
            ws.write_string(i + 1, 1, "B1")

    project.drop("numbers.xlsx", workbook_bytes(tmp_path, build))
    run_once(project)
    assert sorted(emulator.all_data("serial_number")) == ["100000000000001", "123456", "5"]


# ---------------------------------------------------------------- CSV as Excel and production lines write it


CSV_CASES: dict[str, bytes] = {
    # Excel in a German locale: semicolons, Windows-1252, decimal commas, a trailing empty column
    "german.csv": "extended_id;Markt;Menge;;\r\nCODE00000001;Köln;1,5;;\r\nCODE00000002;Düsseldorf;2;;\r\n".encode(
        "cp1252"
    ),
    # Excel's "Unicode text": UTF-16 with a BOM, tab separated
    "unicode.txt": codecs.BOM_UTF16_LE + "extended_id\tMarkt\r\nCODE00000003\t東京\r\n".encode("utf-16-le"),
    # CSV UTF-8 with a BOM, a quoted field holding a newline and the delimiter, blank lines and a sep= line
    "quoted.csv": codecs.BOM_UTF8 + b'sep=,\r\n\r\nextended_id,Markt\r\nCODE00000004,"a\nb, c"\r\n\r\n',
    # a production line: pipes, leading blank rows, an error literal
    "line.txt": b"\n\nextended_id|Markt\nCODE00000005|#N/A\nCODE00000006|ok\n",
}


def test_csv_dialects_and_encodings_reach_the_api_unchanged(emulator: Emulator, project: Project) -> None:
    for name, data in CSV_CASES.items():
        project.drop(name, data)
    run_once(project)

    assert emulator.all_data("extended_id") == {
        code(1): {"Markt": "Köln", "Menge": "1,5"},
        code(2): {"Markt": "Düsseldorf", "Menge": "2"},
        code(3): {"Markt": "東京"},
        code(4): {"Markt": "a\nb, c"},
        code(6): {"Markt": "ok"},
    }
    assert project.summary("german")["format"] == {
        "format": "csv",
        "encoding": "cp1252",
        "delimiter": ";",
        "sheet": None,
        "header_row": 1,
    }
    assert project.summary("unicode")["format"]["encoding"] == "utf-16"
    assert project.summary("quoted")["format"]["header_row"] == 2  # Excel does not show the sep= line as a row
    assert by_row(project, "line")[4]["detail"].startswith("cell B4: column 'Markt' is an error cell (#N/A)")


# ---------------------------------------------------------------- empty cells


@pytest.mark.parametrize(("empty_cells", "batch_after"), [("skip", {"batch": "B1"}), ("clear", {})])
def test_empty_cells_follow_the_setting(
    tmp_path: Path, emulator: Emulator, empty_cells: str, batch_after: dict[str, str]
) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, upload={"empty_cells": empty_cells})
    project.drop("first.csv", csv_text(["extended_id", "market", "batch"], [(code(1), "de", "B1")]))
    run_once(project)
    assert emulator.data("extended_id", code(1)) == {"market": "de", "batch": "B1"}

    def build(wb: xlsxwriter.Workbook) -> None:
        ws = wb.add_worksheet()
        ws.write_row(0, 0, ["extended_id", "market", "batch"])
        ws.write_row(1, 0, [code(1), "fr"])  # batch left empty

    project.drop("second.xlsx", workbook_bytes(tmp_path, build))
    run_once(project)
    assert emulator.data("extended_id", code(1)) == {"market": "fr", **batch_after}


# ---------------------------------------------------------------- headers and campaign fields


def test_headers_are_trimmed_matched_loosely_and_mapped(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(
        tmp_path / "site",
        emulator.base_url,
        upload={"fields": ["intended_market", "batch", "production_date"]},
        columns={'"Lot No."': "batch"},  # written as a TOML key as is: quoted, as a user would
    )

    def build(wb: xlsxwriter.Workbook) -> None:
        ws = wb.add_worksheet()
        ws.write_row(0, 0, ["  Extended ID ", "Intended  Market", " Lot No. ", "production_date", "Colour"])
        ws.write_row(1, 0, [code(1), "cn", "L1", "2024-01-01", "red"])

    project.drop("loose.xlsx", workbook_bytes(tmp_path, build))
    run_once(project)

    # Every column is sent; Scantrust itself drops the one outside the campaign.
    assert emulator.data("extended_id", code(1)) == {
        "intended_market": "cn",
        "batch": "L1",
        "production_date": "2024-01-01",
        "Colour": "red",
    }
    summary = project.summary("loose")
    assert summary["status"] == "completed"
    warnings = "\n".join(summary["warnings"])
    assert "'Extended ID' read as 'extended_id'" in warnings
    assert "'Intended  Market' read as 'intended_market'" in warnings
    assert "'Colour' are not campaign fields and would be discarded by Scantrust" in warnings
    assert summary["columns"] == {
        "Intended  Market": "intended_market",
        "Lot No.": "batch",
        "production_date": "production_date",
        "Colour": "Colour",
    }


def test_strict_fields_refuse_the_file_before_anything_is_uploaded(tmp_path: Path, emulator: Emulator) -> None:
    template = tmp_path / "site" / "template.csv"
    template.parent.mkdir(parents=True)
    template.write_text("extended_id,intended_market,batch\n", encoding="utf-8")
    project = make_project(
        tmp_path / "site", emulator.base_url, upload={"fields_template": "template.csv", "strict_fields": True}
    )
    project.drop("strict.csv", csv_text(["extended_id", "intended_market", "colour"], [(code(1), "de", "red")]))
    run_once(project)

    assert emulator.stats().data_requests == 0
    summary = project.summary("strict")
    assert summary["status"] == "failed"
    assert "columns outside the campaign's fields: 'colour'" in summary["error"]
    assert "expected some of: batch, intended_market" in summary["error"]
    assert (project.failed / "strict.csv").exists()


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (["extended_id", "market", " Market"], "heading repeated: 'Market', 'market'"),
        (["code", "market"], "no 'extended_id' column (upload.data_key); columns found: 'code', 'market'"),
        (["serial_number", "market"], "set upload.data_key = 'serial_number'"),
    ],
)
def test_unusable_headers_fail_the_file_with_the_columns_found(
    tmp_path: Path, emulator: Emulator, project: Project, header: list[str], message: str
) -> None:
    def build(wb: xlsxwriter.Workbook) -> None:
        ws = wb.add_worksheet()
        ws.write_row(0, 0, header)
        ws.write_row(1, 0, [code(1), "de", "fr"][: len(header)])

    project.drop("bad.xlsx", workbook_bytes(tmp_path, build))
    run_once(project)
    assert emulator.stats().data_requests == 0
    summary: dict[str, Any] = project.summary("bad")
    assert summary["status"] == "failed"
    assert message in summary["error"]
    assert "columns found:" in summary["error"].lower()
    assert (project.failed / "bad.xlsx").exists()


@pytest.fixture
def project(tmp_path: Path, emulator: Emulator) -> Project:
    return make_project(tmp_path / "site", emulator.base_url)
