"""The ledger on a real SQLite file: state machines, idempotency, recovery, schema versions."""

import json
import sqlite3
from array import array
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon import schema
from daemon.ledger import Ledger, StateConflict
from daemon.states import BATCH_TRANSITIONS, FILE_TRANSITIONS, ROW_TRANSITIONS, BatchState, FileState, RowStatus


def fixed_clock() -> datetime:
    return datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    led = Ledger(tmp_path / "ledger.sqlite3", clock=fixed_clock)
    yield led
    led.close()


def add_file(ledger: Ledger, sha: str = "a" * 64, name: str = "f.csv") -> int:
    return ledger.add_file(sha256=sha, name=name, path=f"/in/{name}", size=10, data_key="extended_id", mode="sync")


def add_rows(ledger: Ledger, file_id: int, rows: list[tuple[str | None, str | None]]) -> None:
    records = iter(
        (line, key, h, json.dumps([key or "", "v"]), "pending" if key else "rejected", "" if key else "no key")
        for line, (key, h) in enumerate(rows, start=2)
    )
    ledger.insert_rows(file_id, records)


def test_the_connection_uses_wal_foreign_keys_and_full_sync(ledger: Ledger) -> None:
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert schema.schema_version(conn) == schema.SCHEMA_VERSION


def test_a_ledger_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(schema.LedgerVersionError, match="schema version 99"):
        Ledger(path)


def test_every_state_machine_names_every_state() -> None:
    assert set(FILE_TRANSITIONS) == set(FileState)
    assert set(ROW_TRANSITIONS) == set(RowStatus)
    assert set(BATCH_TRANSITIONS) == set(BatchState)


def test_file_transitions_are_guarded(ledger: Ledger) -> None:
    file_id = add_file(ledger)
    with pytest.raises(StateConflict):
        ledger.transition_file(file_id, FileState.DONE)  # received -> done skips the steps between
    ledger.transition_file(file_id, FileState.ACTIVE)
    with pytest.raises(StateConflict):
        ledger.transition_file(file_id, FileState.ACTIVE)
    ledger.transition_file(file_id, FileState.REPORTING, outcome="completed")
    ledger.transition_file(file_id, FileState.DONE)
    f = ledger.file(file_id)
    assert (f.state, f.outcome, f.finished_at) == (FileState.DONE, "completed", "2026-01-02T03:04:05.000+00:00")


def test_repeats_within_a_file_are_skipped_and_conflicts_rejected(ledger: Ledger) -> None:
    file_id = add_file(ledger)
    add_rows(ledger, file_id, [("A", "h1"), ("B", "h2"), ("A", "h1"), ("C", "h3"), ("C", "h4"), ("A", "h1")])
    assert ledger.resolve_in_file_duplicates(file_id) == (2, 2)
    rows = {line: (status, detail) for line, _k, status, detail, _b, _t in ledger.report_rows(file_id)}
    assert rows[2] == ("pending", "")
    assert rows[4] == ("skipped", "same data as row 2 of this file")
    assert rows[7] == ("skipped", "same data as row 2 of this file")
    assert rows[5] == ("rejected", "C has different values in row 6 of this file; make them agree")
    assert rows[6] == ("rejected", "C has different values in row 5 of this file; make them agree")


def test_a_code_uploaded_before_with_the_same_data_is_skipped(ledger: Ledger) -> None:
    first = add_file(ledger, "1" * 64)
    add_rows(ledger, first, [("A", "h1"), ("B", "h2")])
    ledger.transition_file(first, FileState.ACTIVE)
    ledger.add_batches(first, [("sync", [2, 3], None)])
    batch, rows = ledger.start_sending(ledger.due_batches(now=0, limit=10)[0].id)
    assert [key for _, key, _ in rows] == ["A", "B"]
    ledger.complete_sync(batch, "extended_id", ["A", "B"], changed={"A"})

    second = add_file(ledger, "2" * 64)
    add_rows(ledger, second, [("A", "h1"), ("B", "h2"), ("A2", "h1"), ("C", "h3")])
    ledger.transition_file(second, FileState.ACTIVE)
    assert ledger.skip_uploaded(second, "extended_id") == 1  # only A: B was not affected, so not known as uploaded
    assert ledger.plannable_groups(second) == {"h2": array("q", [3]), "h1": array("q", [4]), "h3": array("q", [5])}
    rows_ = {line: (status, detail) for line, _k, status, detail, _b, _t in ledger.report_rows(second)}
    assert rows_[2] == ("skipped", "the same data was already uploaded for this code")


def test_an_earlier_open_row_for_the_same_code_blocks_a_later_file(ledger: Ledger) -> None:
    first = add_file(ledger, "1" * 64)
    add_rows(ledger, first, [("A", "h1")])
    ledger.transition_file(first, FileState.ACTIVE)
    second = add_file(ledger, "2" * 64)
    add_rows(ledger, second, [("A", "h1"), ("B", "h2")])
    ledger.transition_file(second, FileState.ACTIVE)

    assert ledger.plannable_groups(second) == {"h2": array("q", [3])}
    ledger.add_batches(first, [("sync", [2], None)])
    batch, _ = ledger.start_sending(ledger.due_batches(now=0, limit=1)[0].id)
    assert ledger.skip_uploaded(second, "extended_id") == 0
    assert ledger.plannable_groups(second) == {"h2": array("q", [3])}
    ledger.complete_sync(batch, "extended_id", ["A"], changed={"A"})
    assert ledger.skip_uploaded(second, "extended_id") == 1  # same data as the upload it waited for
    assert ledger.plannable_groups(second) == {"h2": array("q", [3])}


def test_sending_is_committed_before_the_request_and_sent_again_after_a_restart(ledger: Ledger, tmp_path: Path) -> None:
    file_id = add_file(ledger)
    add_rows(ledger, file_id, [("A", "h1"), ("B", "h2")])
    ledger.transition_file(file_id, FileState.ACTIVE)
    ledger.add_batches(file_id, [("sync", [2, 3], None)])
    batch_id = ledger.due_batches(now=0, limit=1)[0].id
    ledger.start_sending(batch_id)

    # Another connection (another process after a crash) sees the committed state.
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        assert db.execute("SELECT state, attempts FROM batches").fetchall() == [("sending", 1)]

    with pytest.raises(StateConflict):
        ledger.start_sending(batch_id)  # never twice
    for restart in (1, 2, 3):  # however often: sent again, never assumed applied
        assert ledger.recover(100.0, longest_wait=60) == {"batches_requeued": 1, "schedules_clamped": 0}
        batch = ledger.batch(batch_id)
        assert (batch.state, batch.ambiguous, batch.interrupted) == (BatchState.QUEUED, False, restart)
        assert ledger.due_batches(now=100.0, limit=1)[0].id == batch_id  # at once
        ledger.start_sending(batch_id)
    batch = ledger.batch(batch_id)
    ledger.complete_sync(batch, "extended_id", ["A", "B"], changed={"A"})
    rows = {key: (status, detail) for _l, key, status, detail, _b, _t in ledger.report_rows(file_id)}
    assert rows["A"] == ("uploaded", "")
    assert rows["B"][0] == "not_affected"  # the API's word: not listed, so not claimed as uploaded
    assert "sent again after a restart" in rows["B"][1]
    assert ledger.batch_totals(file_id) == (1, 4, 3)


def test_recovery_clamps_schedules_a_clock_jump_left_far_ahead(ledger: Ledger) -> None:
    file_id = add_file(ledger)
    add_rows(ledger, file_id, [("A", "h1"), ("B", "h1")])
    ledger.transition_file(file_id, FileState.ACTIVE)
    ledger.add_batches(file_id, [("sync", [2], None), ("async", [3], "h1")])
    first, second = ledger.due_batches(now=0, limit=2)
    batch, _ = ledger.start_sending(first.id)
    ledger.requeue(batch, at=1000.0 + 86400, error="x", ambiguous=False, count_failure=True)  # a day ahead
    task, _ = ledger.start_sending(second.id)
    ledger.submit_task(task, task_id="T", submitted_at=900.0, poll_at=905.0)
    ledger.reschedule_poll(ledger.batch(task.id), at=960.0, task_state="pending", error=None, polled_at=950.0)
    # The next process's clock reads two days later: the task's age is what was measured (50 s), not the jump.
    later = 1000.0 + 2 * 86400
    assert ledger.recover(later, longest_wait=300)["schedules_clamped"] == 0
    assert ledger.batch(task.id).submitted_at == pytest.approx(later - 50)
    # A clock one day behind: the retry scheduled "a day ahead" is clamped to the longest legitimate wait.
    assert ledger.recover(1000.0, longest_wait=300)["schedules_clamped"] == 1
    with ledger.engine.connect() as conn:
        due = conn.exec_driver_sql("SELECT next_attempt_at FROM batches WHERE id=?", (first.id,)).scalar_one()
    assert due == 1300.0


def test_a_failed_batch_fails_its_rows_with_the_reason(ledger: Ledger) -> None:
    file_id = add_file(ledger)
    add_rows(ledger, file_id, [("A", "h1"), ("B", "h2")])
    ledger.transition_file(file_id, FileState.ACTIVE)
    ledger.add_batches(file_id, [("sync", [2, 3], None)])
    batch, _ = ledger.start_sending(ledger.due_batches(now=0, limit=1)[0].id)
    ledger.requeue(batch, at=100.0, error="503", ambiguous=False, count_failure=True)
    assert ledger.due_batches(now=99.0, limit=5) == []
    assert ledger.next_due() == 100.0
    batch, _ = ledger.start_sending(ledger.due_batches(now=100.0, limit=5)[0].id)
    assert batch.failures == 1
    ledger.fail_batch(batch, status=RowStatus.FAILED, detail="gave up: 503")
    assert ledger.row_counts(file_id) == {RowStatus.FAILED: 2}
    assert [(line, cells, detail) for line, cells, _s, detail in ledger.error_rows(file_id)] == [
        (2, ["A", "v"], "gave up: 503"),
        (3, ["B", "v"], "gave up: 503"),
    ]


def test_a_file_caught_mid_intake_is_forgotten_whole(ledger: Ledger) -> None:
    file_id = add_file(ledger)
    add_rows(ledger, file_id, [("A", "h1")])
    ledger.forget_file(file_id)
    assert ledger.files(list(FileState)) == []
    assert ledger.row_counts(file_id) == {}


def test_a_large_file_is_inserted_in_chunks(ledger: Ledger) -> None:
    file_id = add_file(ledger)
    n = 45_000
    records = ((line, f"K{line}", "h", "[]", "pending", "") for line in range(2, n + 2))
    assert ledger.insert_rows(file_id, records) == n
    assert ledger.row_counts(file_id) == {RowStatus.PENDING: n}


def test_processed_content_ignores_failed_and_duplicate_files(ledger: Ledger) -> None:
    failed = add_file(ledger, "f" * 64, "bad.csv")
    ledger.transition_file(failed, FileState.REPORTING, outcome="failed")
    again = add_file(ledger, "f" * 64, "bad-fixed-config.csv")
    assert ledger.processed("f" * 64, other_than=again) is None
    ledger.transition_file(again, FileState.ACTIVE)
    third = add_file(ledger, "f" * 64, "third.csv")
    found = ledger.processed("f" * 64, other_than=third)
    assert found is not None
    assert found.name == "bad-fixed-config.csv"


def test_the_migrations_build_exactly_the_schema_of_the_models(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, inspect
    from sqlmodel import SQLModel

    migrated = Ledger(tmp_path / "migrated.sqlite3")
    modelled = create_engine(f"sqlite:///{tmp_path / 'modelled.sqlite3'}")
    SQLModel.metadata.create_all(modelled)

    def shape(engine: object) -> dict[str, object]:
        insp = inspect(engine)
        return {
            table: (
                sorted((c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)),
                sorted(i["name"] for i in insp.get_indexes(table)),
                insp.get_pk_constraint(table)["constrained_columns"],
            )
            for table in sorted(insp.get_table_names())
        }

    assert shape(migrated.engine) == shape(modelled)
    migrated.close()
    modelled.dispose()


def test_a_version_1_ledger_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        for statement in schema._V1:
            db.execute(statement)
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute(
            "INSERT INTO files (sha256, name, path, size, state, data_key, mode, layout, received_at) "
            "VALUES ('ab', 'old.csv', '/in/old.csv', 1, 'done', 'extended_id', 'sync', '{}', 'then')"
        )
    ledger = Ledger(path)
    with ledger.engine.connect() as conn:
        assert schema.schema_version(conn) == schema.SCHEMA_VERSION
    assert [f.name for f in ledger.files([FileState.DONE])] == ["old.csv"]
    ledger.close()


def test_an_async_batch_keeps_its_task_and_is_polled_not_resent(ledger: Ledger) -> None:
    file_id = add_file(ledger)
    add_rows(ledger, file_id, [("A", "h1"), ("B", "h1")])
    ledger.transition_file(file_id, FileState.ACTIVE)
    ledger.add_batches(file_id, [("async", [2, 3], "h1")])
    batch, _ = ledger.start_sending(ledger.due_batches(now=0, limit=1)[0].id)
    assert batch.reference == "scm-daemon f.csv batch 1 sha256:aaaaaaaaaaaa"
    ledger.submit_task(batch, task_id="T1", submitted_at=10.0, poll_at=15.0)

    assert ledger.recover(10.0, longest_wait=60) == {"batches_requeued": 0, "schedules_clamped": 0}
    assert ledger.due_batches(now=14.0, limit=5) == []
    due = ledger.due_batches(now=15.0, limit=5)
    assert [(b.state, b.task_id) for b in due] == [(BatchState.SUBMITTED, "T1")]
    assert ledger.due_batches(now=15.0, limit=5, exclude={due[0].id}) == []
    with pytest.raises(StateConflict):
        ledger.start_sending(due[0].id)

    ledger.reschedule_poll(due[0], at=20.0, task_state="in-progress", error=None, polled_at=15.0)
    polled = ledger.due_batches(now=20.0, limit=5)[0]
    ledger.complete_task(polled, "extended_id", task_state="complete", codes_affected=2)
    assert ledger.row_counts(file_id) == {RowStatus.UPLOADED: 2}
    assert ledger.tasks(file_id) == [
        {
            "batch": 1,
            "task_id": "T1",
            "state": "complete",
            "codes_affected": 2,
            "codes_sent": 2,
            "batch_state": "done",
            "reference": "scm-daemon f.csv batch 1 sha256:aaaaaaaaaaaa",
        }
    ]
    assert [t for *_, t in ledger.report_rows(file_id)] == ["T1", "T1"]


def test_retry_puts_failed_rows_back_and_reopens_the_file(ledger: Ledger) -> None:
    file_id = add_file(ledger)
    add_rows(ledger, file_id, [("A", "h1"), ("B", "h2"), (None, None)])
    ledger.transition_file(file_id, FileState.ACTIVE)
    ledger.add_batches(file_id, [("sync", [2], None), ("sync", [3], None)])
    first, _ = ledger.start_sending(ledger.due_batches(now=0, limit=2)[0].id)
    ledger.complete_sync(first, "extended_id", ["A"], changed={"A"})
    second, _ = ledger.start_sending(ledger.due_batches(now=0, limit=2)[0].id)
    ledger.fail_batch(second, status=RowStatus.FAILED, detail="gave up")
    ledger.transition_file(file_id, FileState.REPORTING, outcome="completed_with_errors")
    ledger.set_file(file_id, report_base="f")
    ledger.transition_file(file_id, FileState.DONE)

    assert ledger.retry_failed(file_id) == 1
    f = ledger.file(file_id)
    assert (f.state, f.outcome, f.report_base) == (FileState.ACTIVE, None, None)
    assert ledger.row_counts(file_id) == {RowStatus.UPLOADED: 1, RowStatus.PENDING: 1, RowStatus.REJECTED: 1}
    assert ledger.retry_failed(file_id) == 0


def test_prune_drops_old_rows_but_keeps_counts_hashes_and_uploaded_codes(tmp_path: Path) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    ledger = Ledger(tmp_path / "ledger.sqlite3", clock=lambda: now[0])
    old = add_file(ledger, "1" * 64, "old.csv")
    add_rows(ledger, old, [("A", "h1"), (None, None)])
    ledger.transition_file(old, FileState.ACTIVE)
    ledger.add_batches(old, [("sync", [2], None)])
    batch, _ = ledger.start_sending(ledger.due_batches(now=0, limit=1)[0].id)
    ledger.complete_sync(batch, "extended_id", ["A"], changed={"A"})
    ledger.transition_file(old, FileState.REPORTING, outcome="completed_with_errors")
    ledger.transition_file(old, FileState.DONE)
    now[0] = datetime(2026, 3, 1, tzinfo=UTC)
    recent = add_file(ledger, "2" * 64, "recent.csv")
    add_rows(ledger, recent, [("B", "h2")])
    ledger.transition_file(recent, FileState.REPORTING, outcome="failed")
    ledger.transition_file(recent, FileState.DONE)
    before = ledger.overview()["rows"]

    assert ledger.prune("2026-02-01T00:00:00") == (1, 2)
    assert ledger.prune("2026-02-01T00:00:00") == (0, 0)
    assert ledger.row_counts(old) == {}
    assert ledger.row_counts(recent) == {RowStatus.PENDING: 1}
    assert ledger.overview()["rows"] == before == {"uploaded": 1, "rejected": 1, "pending": 1}
    assert ledger.processed("1" * 64, other_than=999) is not None  # the same bytes are still a duplicate
    third = add_file(ledger, "3" * 64, "again.csv")
    add_rows(ledger, third, [("A", "h1")])
    ledger.transition_file(third, FileState.ACTIVE)
    assert ledger.skip_uploaded(third, "extended_id") == 1  # and the same data for A is still skipped
    ledger.close()
