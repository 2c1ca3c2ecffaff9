"""End to end through the real CLI in a subprocess, against the emulator on a loopback socket."""

import sqlite3
from pathlib import Path

import pytest
from support import Project, csv_text, make_project

from daemon.sandbox import Emulator

pytestmark = pytest.mark.slow  # the real CLI as a subprocess: the full suite runs these, the fast tier does not

MARKETS = ("cn", "de", "fr", "us")


def code(i: int) -> str:
    return f"CODE{i:08d}"


@pytest.fixture
def project(tmp_path: Path, emulator: Emulator) -> Project:
    return make_project(tmp_path / "site", emulator.base_url)


def thousand_rows() -> tuple[str, dict[int, tuple[str, str, str]]]:
    """1,000 data rows: 980 plain, 10 unknown codes, a row without a key, a conflicting and an identical repeat."""
    rows: dict[int, tuple[str, str, str]] = {}  # spreadsheet row -> (extended_id, market, batch)
    line = 2
    for i in range(996):
        rows[line] = (code(i), MARKETS[i % 4], f"B{i % 7}")
        line += 1
    rows[line] = ("", "de", "B1")  # no key
    line += 1
    rows[line] = (code(5), "us", "B9")  # conflicts with row 7 (code 5: market de)
    line += 1
    rows[line] = (code(6), MARKETS[6 % 4], "B6")  # identical to row 8
    line += 1
    rows[line] = (code(7), "fr", "B0")  # conflicts with row 9
    assert len(rows) == 1000
    return csv_text(["extended_id", "intended_market", "batch"], rows.values()), rows


def test_a_dropped_csv_is_uploaded_and_reported_row_by_row(project: Project, emulator: Emulator) -> None:
    unknown = {code(i) for i in range(900, 910)}
    known = frozenset(code(i) for i in range(996)) - unknown
    emulator.configure(known_codes=known)
    text, rows = thousand_rows()
    project.drop("orders.csv", text)

    done = project.cli("run", "--once")
    assert done.returncode == 0, done.stderr + done.stdout

    # The emulator holds exactly the data of the valid rows, code by code.
    conflicting = {code(5), code(7)}
    expected = {
        code(i): {"intended_market": MARKETS[i % 4], "batch": f"B{i % 7}"}
        for i in range(996)
        if code(i) not in unknown and code(i) not in conflicting
    }
    assert emulator.all_data("extended_id") == expected
    assert all(emulator.transactions("extended_id", c) == 1 for c in expected)

    summary = project.summary("orders")
    assert summary["source"] == "orders.csv"
    assert summary["status"] == "completed_with_errors"
    assert summary["rows"] == {
        "total": 1000,
        "uploaded": 984,
        "not_affected": 10,
        "skipped": 1,
        "rejected": 5,
        "failed": 0,
    }
    assert summary["batches"] == 10  # 994 rows to send, 100 a call
    assert summary["api_calls"] == 10
    assert emulator.stats().sync_calls == 10
    assert summary["reports"] == {
        "report_csv": "orders.report.csv",
        "report_xlsx": None,
        "rejected_csv": "orders.rejected.csv",
        "rejected_xlsx": None,
    }

    report = project.report("orders")
    assert [int(r["row"]) for r in report] == list(rows)
    by_row = {int(r["row"]): r for r in report}
    for line, (key, _market, _batch) in rows.items():
        r = by_row[line]
        assert r["extended_id"] == key
        if line == 998:
            assert (r["status"], r["detail"]) == ("rejected", "no extended_id")
        elif key in conflicting:
            other = {code(5): {7, 999}, code(7): {9, 1001}}[key] - {line}
            assert r["status"] == "rejected"
            assert r["detail"] == f"{key} has different values in row {other.pop()} of this file; make them agree"
            assert r["batch"] == ""
        elif line == 1000:
            assert (r["status"], r["detail"]) == ("skipped", "same data as row 8 of this file")
        elif key in unknown:
            assert r["status"] == "not_affected"
            assert "unknown code" in r["detail"]
        else:
            assert (r["status"], r["detail"]) == ("uploaded", "")
            assert 1 <= int(r["batch"]) <= 10
        assert r["task_id"] == ""

    rejected = project.report("orders", "rejected")
    assert [(r["extended_id"], r["intended_market"], r["batch"]) for r in rejected] == [
        rows[7],
        rows[9],
        rows[998],
        rows[999],
        rows[1001],
    ]
    assert rejected[2]["error"] == "no extended_id"

    assert (project.archive / "orders.csv").read_bytes() == text.encode()
    assert [p.name for p in project.inbox.iterdir()] == [".processing"]  # claimed files were moved on


def test_the_same_bytes_under_another_name_are_a_duplicate(project: Project, emulator: Emulator) -> None:
    text = csv_text(["extended_id", "intended_market"], [(code(i), "cn") for i in range(30)])
    project.drop("monday.csv", text)
    assert project.cli("run", "--once").returncode == 0
    before = emulator.stats().data_requests

    project.drop("monday-copy.csv", text)
    done = project.cli("run", "--once")
    assert done.returncode == 0, done.stderr

    assert emulator.stats().data_requests == before  # not one request
    summary = project.summary("monday-copy")
    assert summary["status"] == "duplicate"
    assert "monday.csv" in summary["error"]
    assert (project.archive / "monday-copy.csv").exists()
    assert project.report("monday-copy") == []


def test_a_row_already_uploaded_in_an_earlier_file_is_skipped(project: Project, emulator: Emulator) -> None:
    project.drop("first.csv", csv_text(["extended_id", "intended_market"], [(code(i), "cn") for i in range(5)]))
    assert project.cli("run", "--once").returncode == 0
    second = [(code(i), "cn") for i in range(3)] + [(code(3), "de"), (code(9), "de")]
    project.drop("second.csv", csv_text(["extended_id", "intended_market"], second))
    assert project.cli("run", "--once").returncode == 0

    statuses = [(r["extended_id"], r["status"]) for r in project.report("second")]
    assert statuses == [
        (code(0), "skipped"),
        (code(1), "skipped"),
        (code(2), "skipped"),
        (code(3), "uploaded"),
        (code(9), "uploaded"),
    ]
    assert emulator.transactions("extended_id", code(0)) == 1
    assert emulator.data("extended_id", code(3)) == {"intended_market": "de"}
    assert project.summary("second")["status"] == "completed"


def test_a_refused_token_exits_3_and_leaves_rows_pending(project: Project, emulator: Emulator) -> None:
    emulator.configure(revoked=True, faults_spare_me=True)  # refused for uploads: the start-up check passes
    project.drop("orders.csv", csv_text(["extended_id", "intended_market"], [(code(i), "cn") for i in range(150)]))

    done = project.cli("run", "--once")

    assert done.returncode == 3, done.stderr
    assert "refused the token" in done.stderr
    assert "sandbox-token" not in done.stderr + done.stdout
    assert emulator.all_data("extended_id") == {}
    assert project.reports() == []
    claimed = list((project.inbox / ".processing").iterdir())
    assert [p.name for p in claimed] == ["1-orders.csv"]  # claimed, waiting for a valid token
    with sqlite3.connect(project.ledger) as db:
        statuses = dict(db.execute("SELECT status, count(*) FROM rows GROUP BY status").fetchall())
    assert statuses == {"queued": 150}

    emulator.configure(revoked=False)
    again = project.cli("run", "--once")
    assert again.returncode == 0, again.stderr
    assert project.summary("orders")["rows"]["uploaded"] == 150
    assert all(emulator.transactions("extended_id", code(i)) == 1 for i in range(150))


def test_an_unreadable_file_is_reported_and_moved_to_failed(project: Project, emulator: Emulator) -> None:
    project.drop("notes.csv", csv_text(["code", "market"], [("X", "cn")]))
    done = project.cli("run", "--once")
    assert done.returncode == 0, done.stderr
    summary = project.summary("notes")
    assert summary["status"] == "failed"
    assert "no 'extended_id' column" in summary["error"]
    assert "'code'" in summary["error"]
    assert (project.failed / "notes.csv").exists()
    assert emulator.stats().data_requests == 0


def test_a_name_already_in_the_archive_is_never_overwritten(project: Project, emulator: Emulator) -> None:
    project.archive.mkdir()
    (project.archive / "orders.csv").write_text("older file\n")
    project.outbox.mkdir()
    (project.outbox / "orders.summary.json").write_text("{}")
    project.drop("orders.csv", csv_text(["extended_id", "intended_market"], [(code(1), "cn")]))

    assert project.cli("run", "--once").returncode == 0

    assert (project.archive / "orders.csv").read_text() == "older file\n"
    assert (project.archive / "orders-2.csv").exists()
    assert (project.outbox / "orders.summary.json").read_text() == "{}"
    assert project.summary("orders-2")["rows"]["uploaded"] == 1


def test_failed_rows_can_be_retried_and_get_new_reports(project: Project, emulator: Emulator) -> None:
    emulator.configure(fail_rate=1.0, faults_spare_me=True)
    project.drop("flaky.csv", csv_text(["extended_id", "intended_market"], [(code(i), "cn") for i in range(120)]))
    done = project.cli("run", "--once", SCM_RETRY__MAX_ATTEMPTS="2")
    assert done.returncode == 1, done.stderr  # the reports are written, and the exit code says the API kept failing
    assert "row(s) failed: the API kept failing" in done.stdout.strip().splitlines()[-1]
    first = project.summary("flaky")
    assert first["rows"]["failed"] == 120
    assert first["status"] == "completed_with_errors"
    assert len(project.report("flaky", "rejected")) == 120
    assert "gave up after 2 failed attempts" in project.report("flaky", "rejected")[0]["error"]

    emulator.configure(fail_rate=0.0)
    retried = project.cli("retry", "flaky.csv")
    assert retried.returncode == 0, retried.stderr
    assert "120 failed row(s) back in the queue" in retried.stdout
    done = project.cli("run", "--once")
    assert done.returncode == 0, done.stderr

    second = project.summary("flaky-2")
    assert second["status"] == "completed"
    assert second["rows"]["uploaded"] == 120
    assert project.summary("flaky")["rows"]["failed"] == 120  # the first report stays as it was
    assert all(emulator.data("extended_id", code(i)) == {"intended_market": "cn"} for i in range(120))
    assert project.cli("retry").returncode == 2
