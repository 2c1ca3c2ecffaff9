"""Intake of date fields and of the report's formula escape, through a real SQLite ledger."""

import json
from datetime import datetime
from pathlib import Path

import pytest
import xlsxwriter

from daemon import intake
from daemon.config import IntakeSettings, Settings, UploadSettings
from daemon.dates import DateSettings
from daemon.ledger import Ledger
from daemon.normalize import scm_data

HEADER = "extended_id;production_date;expiry_date;lot\r\n"


def settings_with(**intake_keys: object) -> Settings:
    return Settings(intake=IntakeSettings(**intake_keys))  # type: ignore[arg-type]


def take(tmp_path: Path, name: str, text: str, settings: Settings) -> tuple[Ledger, int]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    file_id = intake.take(path, ledger, settings)
    assert file_id is not None
    return ledger, file_id


def rows_of(ledger: Ledger, file_id: int) -> dict[int, tuple[str, list[str]]]:
    status = {line: (s, d) for line, _key, s, d, _seq, _task in ledger.report_rows(file_id)}
    cells = {line: c for line, c, _s, _d in ledger.error_rows(file_id)}
    return {line: (s if s != "rejected" else f"rejected: {d}", cells.get(line, [])) for line, (s, d) in status.items()}


def test_text_dates_become_iso_and_are_counted_in_the_layout(tmp_path: Path) -> None:
    text = HEADER + "CODE00000001;31/12/2026;2027.01.31;L1\r\nCODE00000002;2026-12-30;;L1\r\n"
    text += "CODE00000003;12/31/2026;;L2\r\n"
    ledger, file_id = take(tmp_path, "lot.csv", text, Settings())
    f = ledger.file(file_id)
    assert f.layout.dates_rewritten == {"production_date": 2, "expiry_date": 1}
    assert "2 values of 'production_date' rewritten as YYYY-MM-DD, as the API wants dates" in f.layout.warnings
    groups = {tuple(sorted(data.items())) for data, *_ in _uploads(ledger, file_id)}
    assert groups == {
        (("expiry_date", "2027-01-31"), ("lot", "L1"), ("production_date", "2026-12-31")),
        (("lot", "L1"), ("production_date", "2026-12-30")),
        (("lot", "L2"), ("production_date", "2026-12-31")),
    }


def _uploads(ledger: Ledger, file_id: int) -> list[tuple[dict[str, str], str]]:
    """What the uploader would send: each pending row's SCM data, read back from the ledger's cells."""
    f = ledger.file(file_id)
    layout = f.layout.mapping()
    with ledger.connect() as conn:
        rows = conn.exec_driver_sql("SELECT key, cells FROM rows WHERE file_id=? AND status='pending'", (file_id,))
        return [(scm_data(json.loads(cells), layout, clear_empty=False), key) for key, cells in rows]


def test_an_ambiguous_date_is_rejected_naming_both_readings_and_the_setting(tmp_path: Path) -> None:
    text = HEADER + "CODE00000001;03/04/2026;;L1\r\nCODE00000002;2026-02-30;;L1\r\nCODE00000003;13/04/2026;;L1\r\n"
    ledger, file_id = take(tmp_path, "lot.csv", text, Settings())
    got = rows_of(ledger, file_id)
    assert got[2][0] == (
        "rejected: cell B2: column 'production_date' (upload.date_fields): '03/04/2026' is ambiguous: 2026-04-03 as "
        "day-month-year or 2026-03-04 as month-day-year (intake.date_order is not set); write it as YYYY-MM-DD or "
        "set intake.date_order to 'DMY' or 'MDY'"
    )
    assert got[2][1] == ["CODE00000001", "03/04/2026", "", "L1"]  # the rejected file gets the cell as typed
    assert "there is no day 30 in month 2 of 2026" in got[3][0]
    assert got[4][0] == "pending"


def test_the_configured_order_reads_ambiguous_dates(tmp_path: Path) -> None:
    text = HEADER + "CODE00000001;03/04/2026;;L1\r\nCODE00000002;12/31/2026;;L1\r\n"
    ledger, file_id = take(tmp_path, "lot.csv", text, settings_with(date_order="DMY"))
    got = rows_of(ledger, file_id)
    assert got[2][0] == "pending"
    assert "as month-day-year it would be 2026-12-31: check the file's date order" in got[3][0]
    assert [data["production_date"] for data, _ in _uploads(ledger, file_id)] == ["2026-04-03"]


def test_date_fields_are_configurable_and_others_are_left_as_typed(tmp_path: Path) -> None:
    text = "extended_id;packed_on;production_date\r\nCODE00000001;31/12/2026;03/04/2026\r\n"
    settings = Settings(upload=UploadSettings(date_fields=["packed_on"]))
    ledger, file_id = take(tmp_path, "lot.csv", text, settings)
    assert _uploads(ledger, file_id) == [({"packed_on": "2026-12-31", "production_date": "03/04/2026"}, "CODE00000001")]


def test_workbook_date_cells_and_date_times_in_date_fields_are_sent_as_the_date(tmp_path: Path) -> None:
    path = tmp_path / "lot.xlsx"
    workbook = xlsxwriter.Workbook(str(path))
    ws = workbook.add_worksheet()
    ws.write_row(0, 0, ["extended_id", "production_date", "lot"])
    stamp = workbook.add_format({"num_format": "dd.mm.yyyy hh:mm"})
    ws.write_row(1, 0, ["CODE00000001"])
    ws.write_datetime(1, 1, datetime(2026, 11, 2, 14, 30), stamp)  # noqa: DTZ001 (spreadsheets hold no zone)
    ws.write_row(1, 2, ["L1"])
    ws.write_row(2, 0, ["CODE00000002", "31.12.2026", "L1"])
    workbook.close()
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    file_id = intake.take(path, ledger, Settings())
    assert file_id is not None
    got = sorted(data["production_date"] for data, _ in _uploads(ledger, file_id))
    assert got == ["2026-11-02", "2026-12-31"]


def test_the_formula_escape_is_undone_only_in_a_rejected_file_this_daemon_wrote(tmp_path: Path) -> None:
    typed = "extended_id,note\r\nCODE00000001,'=SUM(A1)\r\nCODE00000002,'-5\r\n"
    ledger, file_id = take(tmp_path, "theirs.csv", typed, Settings())
    assert not ledger.file(file_id).layout.written_by_daemon
    assert sorted(d["note"] for d, _ in _uploads(ledger, file_id)) == ["'-5", "'=SUM(A1)"]  # as the person typed

    ours = "extended_id,note,error\r\nCODE00000003,'=SUM(A1),the API refused it\r\nCODE00000004,'-5,x\r\n"
    ledger, file_id = take(tmp_path, "lot.rejected.csv", ours, Settings())
    assert ledger.file(file_id).layout.written_by_daemon
    assert sorted(d["note"] for d, _ in _uploads(ledger, file_id)) == ["-5", "=SUM(A1)"]  # our escape undone

    not_last = "extended_id,error,note\r\nCODE00000005,x,'+1\r\n"
    ledger, file_id = take(tmp_path, "other.csv", not_last, Settings())
    assert [d["note"] for d, _ in _uploads(ledger, file_id)] == ["'+1"]


def test_date_and_report_settings_load_from_the_file_and_the_environment(tmp_path: Path) -> None:
    from daemon.config import ConfigError, load_settings

    config = tmp_path / "config.toml"
    config.write_text('[upload]\ndate_fields = ["packed_on"]\n[intake]\ndate_order = "MDY"\n[reports]\nxlsx = true\n')
    s = load_settings(config, env={"SCM_REPORTS__DELIMITER": ";"})
    assert s.upload.dates(s.intake.date_order) == DateSettings(("packed_on",), "MDY")
    assert (s.reports.delimiter, s.reports.xlsx) == (";", True)
    assert load_settings(None, env={"SCM_UPLOAD__DATE_FIELDS": '["best_before"]'}).upload.date_fields == ["best_before"]
    config.write_text('[intake]\ndate_order = "DD.MM.YYYY"\n')
    with pytest.raises(ConfigError, match="date_order"):
        load_settings(config, env={})


def test_a_date_field_holding_an_error_cell_or_text_starting_with_a_hash_is_rejected_for_what_it_is(
    tmp_path: Path,
) -> None:
    text = "extended_id,production_date\r\nCODE00000001,#N/A\r\nCODE00000002,#12\r\n"
    ledger, file_id = take(tmp_path, "lot.csv", text, Settings())
    got = rows_of(ledger, file_id)
    assert "is an error cell (#N/A)" in got[2][0]
    assert "'#12' is not a date" in got[3][0]
