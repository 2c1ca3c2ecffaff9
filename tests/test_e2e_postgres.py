"""The real service (`run --once`, a subprocess) against the emulator with its ledger in PostgreSQL: the file is
uploaded and reported as on SQLite, `status` reads it back, a second drop of the same bytes is a duplicate, and the
ledger's password (from its file) appears in nothing the run wrote or printed."""

import json
from pathlib import Path

import pytest
from support import Project, csv_text, make_project

from daemon.ledger import Ledger
from daemon.ledger.migrate import SCHEMA_VERSION
from daemon.sandbox import Emulator

pytestmark = pytest.mark.slow  # the real CLI as a subprocess

SECRET = "pg-password-never-shown-4242"


@pytest.fixture
def project(tmp_path: Path, emulator: Emulator, pg_ledger: str) -> Project:
    (tmp_path / "ledger-password").write_text(SECRET + "\n", encoding="utf-8")
    return make_project(
        tmp_path / "site",
        emulator.base_url,
        upload={"mode": "sync"},
        paths={"ledger": pg_ledger, "ledger_password_file": str(tmp_path / "ledger-password")},
    )


def test_a_run_on_a_postgresql_ledger_uploads_reports_and_shows_its_status(
    project: Project, emulator: Emulator, pg_ledger: str
) -> None:
    codes = [f"PG{i:06d}" for i in range(250)]
    emulator.configure(known_codes=frozenset(codes[:-5]))
    rows = [(c, "de") for c in codes] + [("", "fr"), (codes[0], "us")]  # no key; a conflicting repeat
    project.drop("orders.csv", csv_text(["extended_id", "intended_market"], rows))

    done = project.cli("run", "--once", "--log-level", "debug")
    assert done.returncode == 0, done.stderr + done.stdout
    expected = {c: {"intended_market": "de"} for c in codes[1:-5]}
    assert emulator.all_data("extended_id") == expected
    summary = project.summary("orders")
    assert summary["status"] == "completed_with_errors"
    assert summary["rows"] == {
        "total": 252,
        "uploaded": 244,
        "not_affected": 5,
        "skipped": 0,
        "rejected": 3,
        "failed": 0,
    }
    assert (project.archive / "orders.csv").exists()

    status = project.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert (data["backend"], data["schema_version"]) == ("postgresql", SCHEMA_VERSION)
    assert data["files"] == {"completed_with_errors": 1}
    assert data["rows"] == {"uploaded": 244, "not_affected": 5, "rejected": 3}
    assert data["ledger"].startswith("postgresql://postgres:***@127.0.0.1:5432/")
    text = project.cli("status")
    assert f"(schema {SCHEMA_VERSION})" in text.stdout, text.stdout
    check = project.cli("check")
    assert check.returncode == 0, check.stderr
    assert "ledger: postgresql://postgres:***@127.0.0.1:5432/" in check.stdout, check.stdout
    assert f"(schema version {SCHEMA_VERSION})" in check.stdout

    # The same bytes again: the ledger in PostgreSQL remembers them.
    project.drop("orders-again.csv", (project.archive / "orders.csv").read_bytes())
    again = project.cli("run", "--once")
    assert again.returncode == 0, again.stderr + again.stdout
    assert project.summary("orders-again")["status"] == "duplicate"
    assert emulator.stats().sync_calls == 3  # 249 rows to send, 100 a call; nothing sent for the duplicate

    printed = "".join(r.stdout + r.stderr for r in (check, done, status, text, again))
    assert SECRET not in printed
    for path in project.root.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    ledger = Ledger(pg_ledger)
    try:
        assert SECRET not in json.dumps(ledger.overview())
    finally:
        ledger.close()


def test_status_says_plainly_when_the_database_server_cannot_be_reached(tmp_path: Path, emulator: Emulator) -> None:
    project = make_project(tmp_path / "site", emulator.base_url, paths={"ledger": "postgresql://scm@127.0.0.1:1/none"})
    status = project.cli("status")
    assert status.returncode == 1
    assert "cannot reach the ledger postgresql://scm@127.0.0.1:1/none" in status.stderr, status.stderr
    assert "Traceback" not in status.stderr
