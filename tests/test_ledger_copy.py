"""`scm-daemon ledger copy`: a whole ledger moved from SQLite to PostgreSQL (and back, or file to file) keeps every
table as it was, ids included, so that a file or code uploaded before the move is still recognised after it; a target
that holds a ledger already, or the source itself, is refused and left as it was; a failed copy leaves the target
empty; the password of a URL is never shown."""

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from old_ledgers import old_ledger
from sqlalchemy import func, select, text
from support import Project, csv_text, make_project

from daemon.folders import ledger_lock
from daemon.ledger.copy import CopyRefused, copied_tables, copy_ledger, same_ledger
from daemon.ledger.dialect import LedgerTarget, ledger_target, open_engine
from daemon.ledger.migrate import SCHEMA_VERSION
from daemon.sandbox import Emulator

SECRET = "copy-password-never-shown-7070"
HEADER = ["extended_id", "intended_market"]


def contents(target: LedgerTarget) -> dict[str, list[tuple[Any, ...]]]:
    """Every copied table's rows in primary-key order, as SQLAlchemy reads them from either backend."""
    engine = open_engine(target)
    try:
        with engine.connect() as conn:
            return {
                table.name: [
                    tuple(row)
                    for row in conn.execute(
                        select(*table.columns).order_by(*(table.primary_key.columns or table.columns))
                    )
                ]
                for table in copied_tables()
            }
    finally:
        engine.dispose()


def counts(target: LedgerTarget) -> dict[str, int]:
    engine = open_engine(target)
    try:
        with engine.connect() as conn:
            return {
                t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one()) for t in copied_tables()
            }
    finally:
        engine.dispose()


def copy_cli(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """`scm-daemon ledger copy ARGS`, the real command line."""
    return subprocess.run(
        [sys.executable, "-m", "daemon", "ledger", "copy", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=project.env(),
        cwd=project.root,
        check=False,
    )


@pytest.fixture
def uploaded(tmp_path: Path, emulator: Emulator) -> Project:
    """A project whose SQLite ledger holds a real run: a file of 300 rows, uploaded, rejected, not affected."""
    project = make_project(tmp_path / "site", emulator.base_url, upload={"mode": "sync"})
    codes = [f"CP{i:06d}" for i in range(300)]
    emulator.configure(known_codes=frozenset(codes[:-4]))
    rows = [(c, "de") for c in codes] + [("", "fr"), (codes[0], "us")]  # no key; a conflicting repeat
    project.drop("orders.csv", csv_text(HEADER, rows))
    done = project.cli("run", "--once")
    assert done.returncode == 0, done.stderr + done.stdout
    assert project.summary("orders")["rows"]["uploaded"] == 295
    return project


@pytest.mark.slow  # the real service and the command line as subprocesses
def test_a_sqlite_ledger_moved_to_postgresql_still_knows_what_was_uploaded(
    uploaded: Project, emulator: Emulator, pg_ledger: str, tmp_path: Path
) -> None:
    project = uploaded
    source = ledger_target(project.ledger)
    (tmp_path / "pg-password").write_text(SECRET + "\n", encoding="utf-8")
    target = ledger_target(pg_ledger, tmp_path / "pg-password")
    before = contents(source)
    assert all(before[name] for name in ("files", "rows", "batches", "batch_rows", "codes"))

    copied = copy_cli(project, "--from", str(project.ledger), "--to", pg_ledger, "--to-password-file", "../pg-password")
    assert copied.returncode == 0, copied.stderr + copied.stdout
    assert f"to {target.shown}" in copied.stdout
    assert "postgres:***@127.0.0.1" in copied.stdout
    assert f"  rows: {len(before['rows'])} rows" in copied.stdout, copied.stdout
    assert f"  codes: {len(before['codes'])} rows" in copied.stdout
    assert "rows/s" in copied.stdout
    assert contents(target) == before  # table by table, every column, ids included
    assert contents(source) == before  # the source was read, not written

    # PostgreSQL back to a file: the same again.
    back = tmp_path / "back.sqlite3"
    again = copy_cli(project, "--from", pg_ledger, "--from-password-file", "../pg-password", "--to", str(back))
    assert again.returncode == 0, again.stderr + again.stdout
    assert contents(ledger_target(back)) == before

    # A second copy onto the filled target: refused, naming it (no password), and nothing changed.
    refused = copy_cli(
        project, "--from", str(project.ledger), "--to", pg_ledger, "--to-password-file", "../pg-password"
    )
    assert refused.returncode == 2, refused.stderr + refused.stdout
    assert f"the target ledger {target.shown} is not empty" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert contents(target) == before

    # The service on the PostgreSQL ledger: the same bytes are a duplicate, and a new file with the same codes
    # uploads only its new ones.
    make_project(
        project.root,
        emulator.base_url,
        upload={"mode": "sync"},
        paths={"ledger": pg_ledger, "ledger_password_file": str(tmp_path / "pg-password")},
    )
    sent_before = emulator.stats().sync_calls
    data_before = emulator.all_data("extended_id")
    project.drop("orders-again.csv", (project.archive / "orders.csv").read_bytes())
    codes = [f"CP{i:06d}" for i in range(300)]
    fresh = [f"NEWCODE{i:03d}" for i in range(3)]
    emulator.configure(known_codes=frozenset(codes[:-4] + fresh))
    project.drop("orders-more.csv", csv_text(HEADER, [(c, "de") for c in codes[1:-4] + fresh]))
    run = project.cli("run", "--once")
    assert run.returncode == 0, run.stderr + run.stdout
    assert project.summary("orders-again")["status"] == "duplicate"
    more = project.summary("orders-more")["rows"]
    assert (more["uploaded"], more["skipped"]) == (3, 295), more
    assert emulator.stats().sync_calls == sent_before + 1  # one call: the three new codes
    assert emulator.all_data("extended_id") == {**data_before, **{c: {"intended_market": "de"} for c in fresh}}

    # The sequences went on after the copied ids: the new files and batches got the next ones.
    after = contents(target)
    old_files, old_batches = max(r[0] for r in before["files"]), max(r[0] for r in before["batches"])
    assert [r[0] for r in after["files"][len(before["files"]) :]] == [old_files + 1, old_files + 2]
    assert min(r[0] for r in after["batches"][len(before["batches"]) :]) == old_batches + 1

    printed = "".join(r.stdout + r.stderr for r in (copied, again, refused, run))
    assert SECRET not in printed


@pytest.mark.slow
def test_a_copy_between_files_is_whole_streamed_in_chunks_and_the_source_stays_as_it_was(uploaded: Project) -> None:
    source = ledger_target(project_ledger := uploaded.ledger)
    before = contents(source)
    target = ledger_target(project_ledger.with_name("copy.sqlite3"))
    seen: list[tuple[str, int]] = []
    result = copy_ledger(source, target, chunk_rows=7, on_table=lambda name, rows: seen.append((name, rows)))
    assert contents(target) == before
    assert seen == list(result.counts.items())
    assert result.counts == {name: len(rows) for name, rows in before.items() if name != "meta"} | {
        "meta": result.counts["meta"]
    }
    order = [name for name, _ in seen]
    assert order.index("files") < min(order.index("rows"), order.index("batches"))  # parents before children
    assert result.total == sum(result.counts.values()) > 0
    assert result.rows_per_second > 0


@pytest.mark.slow
def test_a_failed_copy_leaves_the_target_empty(uploaded: Project, pg_ledger: str) -> None:
    source = ledger_target(uploaded.ledger)
    target = ledger_target(pg_ledger)

    def fail_after_rows(name: str, _rows: int) -> None:
        if name == "rows":
            raise RuntimeError("the disk filled")

    with pytest.raises(RuntimeError, match="the disk filled"):
        copy_ledger(source, target, chunk_rows=50, on_table=fail_after_rows)
    assert {name: n for name, n in counts(target).items() if name != "meta"} == dict.fromkeys(
        [t.name for t in copied_tables() if t.name != "meta"], 0
    )
    copy_ledger(source, target)  # still empty: a copy goes through now
    assert contents(target) == contents(source)


def test_the_same_ledger_is_refused_as_source_and_target(tmp_path: Path, pg_ledger: str) -> None:
    path = tmp_path / "ledger.sqlite3"
    sqlite3.connect(path).close()
    assert same_ledger(ledger_target(path), ledger_target(tmp_path / "." / "ledger.sqlite3"))
    assert same_ledger(ledger_target(pg_ledger), ledger_target(pg_ledger.replace("127.0.0.1:5432", "127.0.0.1")))
    assert not same_ledger(ledger_target(pg_ledger), ledger_target(pg_ledger.partition("?")[0]))  # another schema
    with pytest.raises(CopyRefused, match="the same ledger"):
        copy_ledger(ledger_target(path), ledger_target(tmp_path / "." / "ledger.sqlite3"))
    with pytest.raises(CopyRefused, match="no ledger at"):
        copy_ledger(ledger_target(tmp_path / "none.sqlite3"), ledger_target(tmp_path / "new.sqlite3"))
    assert not (tmp_path / "none.sqlite3").exists()
    project = make_project(tmp_path / "site", "http://127.0.0.1:1")
    same = copy_cli(project, "--from", str(path), "--to", "../ledger.sqlite3")
    assert same.returncode == 2, same.stderr
    assert f"the source and the target are the same ledger ({path})" in same.stderr


@pytest.mark.slow
def test_a_ledger_in_use_by_a_service_is_not_copied(uploaded: Project, tmp_path: Path) -> None:
    target = tmp_path / "new.sqlite3"
    with ledger_lock(ledger_target(uploaded.ledger)):  # as a running service holds it
        busy = copy_cli(uploaded, "--from", str(uploaded.ledger), "--to", str(target))
    assert busy.returncode == 2, busy.stderr
    assert "another scm-daemon" in busy.stderr
    assert "already running with the ledger" in busy.stderr
    assert not target.exists()


@pytest.mark.slow  # three runs of the command line: near 5 s on a busy machine
def test_the_command_line_refuses_a_password_in_a_url_a_missing_source_and_a_newer_source(tmp_path: Path) -> None:
    project = make_project(tmp_path / "site", "http://127.0.0.1:1")
    with_password = copy_cli(project, "--from", "x.sqlite3", "--to", f"postgresql://scm:{SECRET}@127.0.0.1/db")
    assert with_password.returncode == 2
    assert "--to must not contain the password" in with_password.stderr
    assert SECRET not in with_password.stderr + with_password.stdout

    missing = copy_cli(project, "--from", "nothing.sqlite3", "--to", "new.sqlite3")
    assert missing.returncode == 2
    assert f"no ledger at {project.root / 'nothing.sqlite3'} to copy" in missing.stderr

    newer = tmp_path / "newer.sqlite3"
    old_ledger(newer, 3)
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.close()
    refused = copy_cli(project, "--from", str(newer), "--to", "new.sqlite3")
    assert refused.returncode == 2, refused.stderr
    assert "newer than this scm-daemon knows" in refused.stderr
    assert not (project.root / "new.sqlite3").exists()  # refused before the target was made


def test_an_older_source_is_migrated_first_and_copied_whole(tmp_path: Path, pg_ledger: str) -> None:
    path = tmp_path / "old.sqlite3"
    old_ledger(path, 1)
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO files (id, sha256, name, path, size, state, outcome, data_key, mode, layout, received_at) "
            "VALUES (41, 'ab', 'old.csv', 'inbox/old.csv', 10, 'done', 'completed', 'extended_id', 'sync', '{}', "
            "'2025-01-01T00:00:00.000+00:00')"
        )
        db.execute("INSERT INTO codes VALUES ('extended_id', 'OLD1', 'h1', 41, 2, '2025-01-01T00:00:01.000+00:00')")
    db.close()
    result = copy_ledger(ledger_target(path), ledger_target(pg_ledger))
    assert result.source_migrated_from == 1
    got = contents(ledger_target(pg_ledger))
    assert [r[0] for r in got["files"]] == [1, 41]  # old_ledger's own file, and this one
    assert got["codes"] == [("extended_id", "OLD1", "h1", 41, 2, "2025-01-01T00:00:01.000+00:00")]
    assert dict(got["meta"])["schema_version"] == str(SCHEMA_VERSION)
    engine = open_engine(ledger_target(pg_ledger))
    try:
        with engine.begin() as conn:
            new_id = conn.execute(
                text(
                    "INSERT INTO files (sha256, name, path, size, state, data_key, mode, layout, received_at) "
                    "VALUES ('cd', 'n.csv', 'p', 1, 'done', 'extended_id', 'sync', '{}', 'now') RETURNING id"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    assert new_id == 42  # the sequence goes on after the copied id


def test_a_postgresql_ledger_a_service_works_on_is_not_copied(pg_ledger: str, tmp_path: Path) -> None:
    from daemon.lease import WORK, Instance
    from daemon.ledger import Ledger

    ledger = Ledger(pg_ledger)
    try:
        ledger.take_lease(WORK, Instance("elsewhere", 7, 1.0), 30.0, alive=lambda pid: True)
    finally:
        ledger.close()
    target = tmp_path / "new.sqlite3"
    with pytest.raises(CopyRefused, match=r"a service \(elsewhere:7:1.000\) is working on the ledger"):
        copy_ledger(ledger_target(pg_ledger), ledger_target(target))
    assert not target.exists()  # refused before anything was made
