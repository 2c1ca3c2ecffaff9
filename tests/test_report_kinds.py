"""Report files in the input's kind: delimiter and encoding of CSV inputs, text-only workbooks, report names."""

import csv
import gc
import io
import shutil
import tempfile
from pathlib import Path

import openpyxl
import pytest
import xlsxwriter

from daemon import intake
from daemon.config import ReportsSettings, Settings
from daemon.ledger import FileLayout, Ledger
from daemon.reporter import choose_base, rejected_encoding, write_reports, write_table, xlsx_table


def reported(tmp_path: Path, name: str, data: bytes, reports: ReportsSettings | None = None) -> Path:
    """Read a file into a real ledger and write its reports (nothing uploaded: valid rows stay pending)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    path = tmp_path / "in" / name
    path.write_bytes(data)
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    file_id = intake.take(path, ledger, Settings())
    assert file_id is not None
    ledger.set_file(file_id, report_base=path.stem)
    write_reports(ledger, ledger.file(file_id), tmp_path / "out", "2026-12-02T00:00:00Z", reports)
    return tmp_path / "out"


def test_a_utf16_tab_separated_input_gets_its_rejected_file_in_utf16_with_tabs(tmp_path: Path) -> None:
    text = "extended_id\tintended_market\r\nCODE00000001\tcn\r\n\tdé\r\n"  # Excel's "Unicode Text"
    out = reported(tmp_path, "lot.txt", text.encode("utf-16"))
    raw = (out / "lot.rejected.csv").read_bytes()
    assert raw.startswith(b"\xff\xfe")
    lines = list(csv.reader(io.StringIO(raw.decode("utf-16"), newline=""), delimiter="\t"))
    assert lines == [["extended_id", "intended_market", "error"], ["", "dé", "no extended_id"]]
    assert (out / "lot.report.csv").read_text(encoding="utf-8-sig").splitlines()[0] == (
        "row\textended_id\tstatus\tdetail\tbatch\ttask_id"
    )


def test_a_workbook_input_takes_the_configured_report_delimiter_and_a_comma_by_default(tmp_path: Path) -> None:
    book = tmp_path / "book.xlsx"
    workbook = xlsxwriter.Workbook(str(book))
    workbook.add_worksheet().write_row(0, 0, ["extended_id", "lot"])
    workbook.worksheets()[0].write_row(1, 0, ["CODE00000001", "L1"])
    workbook.close()
    out = reported(tmp_path, "lot.xlsx", book.read_bytes(), ReportsSettings(delimiter="|"))
    assert (out / "lot.report.csv").read_text(encoding="utf-8-sig").splitlines()[0].count("|") == 5
    assert not (out / "lot.report.xlsx").exists()
    assert ReportsSettings().delimiter == ","


@pytest.mark.parametrize(
    ("source", "written"),
    [
        ("utf-8", "utf-8-sig"),
        ("utf-8-sig", "utf-8-sig"),
        ("cp1252", "cp1252"),
        ("utf-16-le", "utf-16"),
        (None, "utf-8-sig"),
    ],
)
def test_rejected_encoding_follows_the_input(source: str | None, written: str) -> None:
    assert rejected_encoding(source) == written


def test_a_character_the_input_encoding_cannot_hold_makes_the_rejected_file_utf8_with_bom(tmp_path: Path) -> None:
    layout = FileLayout(headers=("extended_id", "lot"), encoding="cp1252", delimiter=";")
    target = tmp_path / "lot.rejected.csv"

    def rows() -> list[list[object]]:
        return [["extended_id", "lot", "error"], ["CODE00000001", "Größe", "refused: Ω is not allowed"]]

    write_table(target, layout, rows, delimiter=";", excel=False)
    assert target.read_bytes().startswith(b"\xef\xbb\xbf")
    assert target.read_text(encoding="utf-8-sig").splitlines()[1] == "CODE00000001;Größe;refused: Ω is not allowed"
    assert [p.name for p in tmp_path.iterdir()] == ["lot.rejected.csv"]  # the first attempt left nothing behind


def test_a_rejected_workbook_holds_only_text_never_a_formula(tmp_path: Path) -> None:
    layout = FileLayout(headers=("extended_id", "qty"), sheet="Codes: [2026]")
    target = tmp_path / "lot.rejected.xlsx"

    def rows() -> list[list[object]]:
        return [["extended_id", "qty", "error"], ["000123", "=1+1", "x"], ["", 7, None]]

    write_table(target, layout, rows, delimiter=",", excel=True)
    sheet = openpyxl.load_workbook(target)["Codes_ _2026_"]
    values = [[(c.value, c.data_type) for c in row] for row in sheet.iter_rows()]
    assert values[1] == [("000123", "s"), ("'=1+1", "s"), ("x", "s")]
    assert values[2][1] == ("7", "s")
    assert sheet["A3"].value is None


def test_report_names_of_every_kind_are_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "lot.rejected.xlsx").write_text("")
    assert choose_base(tmp_path, "lot") == "lot-2"
    (tmp_path / "lot-2.report.xlsx").write_text("")
    assert choose_base(tmp_path, "lot") == "lot-3"


# After a failed store XlsxWriter leaves its row file open for the garbage collector (ours is only its folder):
# harmless in the service (the folder is gone, the handle is closed at the next collection), a warning here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_workbook_that_cannot_be_stored_raises_the_file_system_error_for_the_delivery_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    target = folder / "lot.rejected.xlsx"

    def write_while_the_share_goes_away() -> None:
        with xlsx_table(target, sheet="x", width=1) as write:
            write([["a"]])
            shutil.rmtree(folder)

    with pytest.raises(FileNotFoundError):
        write_while_the_share_goes_away()
    assert list(scratch.iterdir()) == []  # XlsxWriter's row file went with our folder
    gc.collect()  # its handle is closed now, inside this test, rather than warning in whichever test runs next
