"""The ledger on a real SQLite file: state machines, idempotency, recovery, schema versions."""

import json
import sqlite3
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
    rows = {line: (status, detail) for line, _k, status, detail, _b in ledger.report_rows(file_id)}
    assert rows[2] == ("pending", "")
    assert rows[4] == ("skipped", "same data as row 2 of this file")
    assert rows[7] == ("skipped", "same data as row 2 of this file")
    assert rows[5] == ("rejected", "C has different values in row 6 of this file; make them agree")
    assert rows[6] == ("rejected", "C has different values in row 5 of this file; make them agree")


def test_a_code_uploaded_before_is_seen_by_the_planner(ledger: Ledger) -> None:
    first = add_file(ledger, "1" * 64)
    add_rows(ledger, first, [("A", "h1"), ("B", "h2")])
    ledger.transition_file(first, FileState.ACTIVE)
    ledger.add_batches(first, "sync", [[2, 3]])
    batch, rows = ledger.start_sending(ledger.due_batches(now=0, limit=10)[0])
    assert [key for _, key, _ in rows] == ["A", "B"]
    ledger.complete_sync(batch, "extended_id", changed={"A"})

    second = add_file(ledger, "2" * 64)
    add_rows(ledger, second, [("A", "h1"), ("B", "h2"), ("A2", "h1")])
    plan_rows = {r.key: r.uploaded_hash for r in ledger.plannable_rows(second, "extended_id")}
    assert plan_rows == {"A": "h1", "B": None, "A2": None}  # B was not affected, so not known as uploaded


def test_an_earlier_open_row_for_the_same_code_blocks_a_later_file(ledger: Ledger) -> None:
    first = add_file(ledger, "1" * 64)
    add_rows(ledger, first, [("A", "h1")])
    ledger.transition_file(first, FileState.ACTIVE)
    second = add_file(ledger, "2" * 64)
    add_rows(ledger, second, [("A", "h2"), ("B", "h2")])
    ledger.transition_file(second, FileState.ACTIVE)

    assert [r.key for r in ledger.plannable_rows(second, "extended_id")] == ["B"]
    ledger.add_batches(first, "sync", [[2]])
    batch, _ = ledger.start_sending(ledger.due_batches(now=0, limit=1)[0])
    assert [r.key for r in ledger.plannable_rows(second, "extended_id")] == ["B"]
    ledger.complete_sync(batch, "extended_id", changed={"A"})
    assert [r.key for r in ledger.plannable_rows(second, "extended_id")] == ["A", "B"]


def test_sending_is_committed_before_the_request_and_recovered_as_ambiguous(ledger: Ledger, tmp_path: Path) -> None:
    file_id = add_file(ledger)
    add_rows(ledger, file_id, [("A", "h1"), ("B", "h2")])
    ledger.transition_file(file_id, FileState.ACTIVE)
    ledger.add_batches(file_id, "sync", [[2, 3]])
    batch_id = ledger.due_batches(now=0, limit=1)[0]
    ledger.start_sending(batch_id)

    # Another connection (another process after a crash) sees the committed state.
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
        assert db.execute("SELECT state, attempts FROM batches").fetchall() == [("sending", 1)]

    with pytest.raises(StateConflict):
        ledger.start_sending(batch_id)  # never twice
    assert ledger.recover() == {"batches_requeued": 1}
    batch = ledger.batch(batch_id)
    assert (batch.state, batch.ambiguous) == (BatchState.QUEUED, True)

    batch, _ = ledger.start_sending(batch_id)
    ledger.complete_sync(batch, "extended_id", changed={"A"})
    rows = {key: (status, detail) for _l, key, status, detail, _b in ledger.report_rows(file_id)}
    assert rows["A"] == ("uploaded", "")
    assert rows["B"][0] == "uploaded"
    assert "earlier attempt" in rows["B"][1]
    assert ledger.batch_totals(file_id) == (1, 2)


def test_a_failed_batch_fails_its_rows_with_the_reason(ledger: Ledger) -> None:
    file_id = add_file(ledger)
    add_rows(ledger, file_id, [("A", "h1"), ("B", "h2")])
    ledger.transition_file(file_id, FileState.ACTIVE)
    ledger.add_batches(file_id, "sync", [[2, 3]])
    batch, _ = ledger.start_sending(ledger.due_batches(now=0, limit=1)[0])
    ledger.requeue(batch, at=100.0, error="503", ambiguous=False, count_failure=True)
    assert ledger.due_batches(now=99.0, limit=5) == []
    assert ledger.next_due() == 100.0
    batch, _ = ledger.start_sending(ledger.due_batches(now=100.0, limit=5)[0])
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
