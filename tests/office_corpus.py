"""The office corpus: one workbook holding each display case, written by xlsxwriter and openpyxl and saved again
by LibreOffice (xlsx, xls, ods), as files that people save differ from the ones libraries write.

Session-scoped fixtures, each built once under pytest's tmp dir: `library_corpus` ("xlsxwriter", "openpyxl")
and `libreoffice_corpus` ("xlsx", "xls", "ods": the xlsxwriter file saved by LibreOffice headless; skipped
with the reason where soffice is missing; some 5 s, so its tests are in the slow tier).
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import openpyxl
import pytest
import xlsxwriter

Value = int | float | bool | dt.datetime | dt.time

# (header, value, number format or None for General); the display strings are in the tests, written out.
CASES: list[tuple[str, Value, str | None]] = [
    ("extended_id", 7, "000000000000"),  # a serial number kept as a number, its zeros shown by the format
    ("zip", 123, "00000"),
    ("fixed", 3.14159, "0.00"),
    ("share", 0.25, "0%"),
    ("share1", 0.255, "0.0%"),
    ("count", 1234567, "#,##0"),
    ("amount", 1234.5, "#,##0.00"),
    ("as_text", 42, "@"),
    ("made", dt.datetime(2026, 11, 2, 14, 30), "dd.mm.yyyy"),  # noqa: DTZ001 - spreadsheet times have no zone
    ("at", dt.time(14, 30), "hh:mm"),
    ("stamp", dt.datetime(2026, 11, 2, 14, 30), "yyyy-mm-dd hh:mm"),  # noqa: DTZ001
    ("ok", True, None),
    ("sn", 42, '"SN-"0000'),
    ("owed", -5, "#,##0;(#,##0)"),
    ("red", -1.5, "[Red]0.00"),
    ("locale", 1.25, "[$-409]0.00"),
    ("huge", 12345678901234567, None),  # 17 digits: Excel keeps 15
]
HEADERS = [name for name, _, _ in CASES]
SOFFICE = shutil.which("soffice") or shutil.which("libreoffice")


def write_xlsxwriter(path: Path) -> Path:
    workbook = xlsxwriter.Workbook(str(path))
    sheet = workbook.add_worksheet("Data")
    for column, (name, value, code) in enumerate(CASES):
        sheet.write_string(0, column, name)
        fmt = workbook.add_format({"num_format": code}) if code else None
        if isinstance(value, (dt.datetime, dt.time)):
            sheet.write_datetime(1, column, value, fmt)
        elif isinstance(value, bool):
            sheet.write_boolean(1, column, value, fmt)
        else:
            sheet.write_number(1, column, value, fmt)
    workbook.close()
    return path


def write_openpyxl(path: Path) -> Path:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.title = "Data"
    sheet.append(HEADERS)
    sheet.append([value for _, value, _ in CASES])
    for column, (_, _, code) in enumerate(CASES, start=1):
        if code:
            sheet.cell(row=2, column=column).number_format = code
    workbook.save(path)
    return path


def convert(source: Path, kind: str, folder: Path, profile: Path) -> Path:
    """The workbook saved again by LibreOffice headless as `kind` (its own profile: parallel runs do not clash)."""
    target = folder / kind
    target.mkdir(parents=True, exist_ok=True)
    assert SOFFICE is not None
    subprocess.run(
        [
            SOFFICE,
            f"-env:UserInstallation={profile.as_uri()}",
            "--headless",
            "--convert-to",
            kind,
            "--outdir",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    converted = target / f"{source.stem}.{kind}"
    assert converted.is_file(), f"LibreOffice wrote no {converted.name}"
    return converted


@pytest.fixture(scope="session")
def library_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The corpus workbook as xlsxwriter and as openpyxl write it."""
    folder = tmp_path_factory.mktemp("office_corpus")
    return {
        "xlsxwriter": write_xlsxwriter(folder / "xlsxwriter.xlsx"),
        "openpyxl": write_openpyxl(folder / "openpyxl.xlsx"),
    }


@pytest.fixture(scope="session")
def libreoffice_corpus(tmp_path_factory: pytest.TempPathFactory, library_corpus: dict[str, Path]) -> dict[str, Path]:
    """The xlsxwriter workbook opened and saved by LibreOffice as xlsx, xls and ods; skipped without soffice."""
    if SOFFICE is None:
        pytest.skip("LibreOffice (soffice) is not installed: apt-get install libreoffice-calc (.ci/run does)")
    folder = tmp_path_factory.mktemp("office_corpus_saved")
    profile = tmp_path_factory.mktemp("libreoffice-profile")
    return {kind: convert(library_corpus["xlsxwriter"], kind, folder, profile) for kind in ("xlsx", "xls", "ods")}
