"""`scm-daemon validate FILE`: how a file was read, its header mapping, rows by outcome, problems, exit code."""

import json
import subprocess
import sys
from pathlib import Path

import xlsxwriter
from support import Project, make_project

from daemon.config import Settings, UploadSettings
from daemon.validate import render_validation, validate_file


def validate(project: Project, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "validate", str(path), "-c", str(project.config), *args],
        capture_output=True,
        text=True,
        check=False,
        env=project.env(),
        timeout=60,
    )


def serial_workbook(path: Path) -> Path:
    """Serials on sheet "Lot 7" from column B: a number key before the zero-padded text ones, an error cell."""
    workbook = xlsxwriter.Workbook(str(path))
    workbook.add_worksheet("Cover").write(0, 0, "see the next sheet")
    ws = workbook.add_worksheet("Lot 7")
    ws.write_row(0, 1, ["Serial No.", " Intended market", "lot"])
    ws.write_number(1, 1, 1236)  # seen before the text keys that show the width: needs the second pass
    ws.write_row(2, 1, ["0001234", "de", "L7"])
    ws.write_row(3, 1, ["0001235", "fr"])
    ws.write_string(4, 1, "0001237")
    ws.write_formula(4, 3, "=1/0", None, "#DIV/0!")
    ws.write_row(1, 2, ["cn", "L7"])
    ws.activate()
    workbook.close()
    return path


def test_validate_explains_a_workbook_and_exits_1_when_rows_would_be_rejected(tmp_path: Path) -> None:
    project = make_project(
        tmp_path / "site",
        "http://127.0.0.1:9",
        upload={"data_key": "serial_number", "fields": ["intended_market", "lot"]},
        intake={"sheet": "Lot 7"},
        columns={'"Serial No."': "serial_number"},
    )
    path = serial_workbook(tmp_path / "serials.xlsx")

    out = validate(project, path, "--json")
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is False
    assert report["format"] == {
        "format": "xlsx",
        "encoding": None,
        "delimiter": None,
        "sheet": "Lot 7",
        "header_row": 1,
    }
    assert report["key_column"] == "Serial No."
    assert report["columns"] == {"Intended market": "intended_market", "lot": "lot"}
    assert any("'Intended market' read as 'intended_market'" in w for w in report["warnings"])
    assert report["rows"] == {"total": 4, "to_upload": 2, "skipped": 0, "rejected": 2}
    first, second = report["problems"]
    assert (first["row"], first["column"], first["cell"], first["status"]) == (2, "Serial No.", "B2", "rejected")
    assert first["detail"].startswith("cell B2: serial_number 1236 was stored as a number of 4 digits")
    assert (second["row"], second["column"], second["cell"]) == (5, "lot", "D5")
    assert "column 'lot' is an error cell (#DIV/0!)" in second["detail"]

    text = validate(project, path)
    assert text.returncode == 1
    assert "format 'xlsx', sheet 'Lot 7', header_row 1" in text.stdout
    assert "key:      column 'Serial No.' as serial_number" in text.stdout
    assert "'Intended market' -> intended_market, 'lot' -> lot" in text.stdout
    assert "rows:     4 in all: 2 to upload, 0 repeated in the file, 2 rejected" in text.stdout
    assert "  row 2: cell B2: serial_number 1236" in text.stdout
    assert "  row 5: cell D5: column 'lot' is an error cell (#DIV/0!)" in text.stdout


def test_validate_of_a_clean_csv_shows_encoding_and_delimiter_and_exits_0(tmp_path: Path) -> None:
    project = make_project(tmp_path / "site", "http://127.0.0.1:9")
    path = tmp_path / "clean.csv"
    path.write_bytes("extended_id;Markt\r\nCODE00000001;Köln\r\nCODE00000001;Köln\r\n".encode("cp1252"))
    out = validate(project, path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "format 'csv', encoding 'cp1252', delimiter ';', header_row 1" in out.stdout
    assert "rows:     2 in all: 1 to upload, 1 repeated in the file, 0 rejected" in out.stdout


def test_validate_of_an_unusable_file_exits_1_and_lists_the_columns(tmp_path: Path) -> None:
    project = make_project(tmp_path / "site", "http://127.0.0.1:9")
    path = tmp_path / "nokey.csv"
    path.write_text("code,market\nA,de\n", encoding="utf-8")
    out = validate(project, path)
    assert out.returncode == 1
    assert "cannot be read" in out.stdout
    assert "columns found: 'code', 'market'" in out.stdout
    missing = validate(project, tmp_path / "gone.csv", "--json")  # bad usage, not a bad file (issue 12)
    assert missing.returncode == 2
    assert f"file {tmp_path / 'gone.csv'} does not exist" in missing.stderr


def test_validate_reports_problem_columns_of_many_rejected_rows(tmp_path: Path) -> None:
    path = tmp_path / "many.csv"
    lines = ["extended_id,market,batch"]
    lines += [f"CODE{i:08d},#N/A,B1" for i in range(30)]
    lines += ["1.23457E+11,de,B1", ",de,B1", "CODE99999999,de,B1,extra"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = validate_file(path, Settings(upload=UploadSettings()))
    assert report["rows"]["rejected"] == 33
    assert len(report["problems"]) == 20
    assert {(p["column"], p["cell"][0]) for p in report["problems"]} == {("market", "B")}
    assert "... and 13 more rejected row(s)" in render_validation(report)

    path.write_text("\n".join(lines[:1] + lines[-3:]) + "\n", encoding="utf-8")
    problems = validate_file(path, Settings(upload=UploadSettings()))["problems"]
    assert [(p["row"], p["column"], p["cell"]) for p in problems] == [
        (2, "extended_id", "A2"),
        (3, "extended_id", "A3"),  # no key: the key column, the detail needs no cell name
        (4, None, "D4"),  # a cell beyond the header has no heading
    ]
    assert problems[1]["detail"] == "no extended_id"
    assert problems[2]["detail"] == "cell D4: the row has 1 more cell than the header has columns"
