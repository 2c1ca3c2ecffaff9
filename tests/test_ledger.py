"""The storage contract: the ledger's tests, run on a real SQLite file and on a real PostgreSQL database (one class,
one fixture per backend); then what only SQLite has (its connection settings, ledgers from before Alembic)."""

import json
import random
import string
from array import array
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from hypothesis import given
from hypothesis import strategies as st
from old_ledgers import old_ledger
from sqlalchemy import create_engine, event, text

from daemon import intake, schema
from daemon.config import Settings
from daemon.ledger import FileLayout, Ledger, StateConflict
from daemon.ledger import codes as codes_module
from daemon.ledger.dialect import ledger_target, line_runs, open_engine
from daemon.ledger.migrate import HEAD, SCHEMA_VERSION, LedgerVersionError, migration_config, schema_version
from daemon.states import BATCH_TRANSITIONS, FILE_TRANSITIONS, ROW_TRANSITIONS, BatchState, FileState, RowStatus


def fixed_clock() -> datetime:
    return datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def ledger(ledger_location: Path | str) -> Iterator[Ledger]:
    led = Ledger(ledger_location, clock=fixed_clock)
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


def test_every_state_machine_names_every_state() -> None:
    assert set(FILE_TRANSITIONS) == set(FileState)
    assert set(ROW_TRANSITIONS) == set(RowStatus)
    assert set(BATCH_TRANSITIONS) == set(BatchState)


class TestStorageContract:
    """What the service relies on from its ledger, whichever database holds it."""

    def test_file_transitions_are_guarded(self, ledger: Ledger) -> None:
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

    def test_the_counts_taken_when_its_rows_are_final_are_kept_to_the_end(self, ledger: Ledger) -> None:
        """Counted once (a pass over a million rows costs a good part of a second on the loop's thread): kept with
        the record from `reporting` on, not counted again when the file is done; a file done without them is."""
        file_id = add_file(ledger)
        add_rows(ledger, file_id, [("A", "h1"), (None, None)])
        ledger.transition_file(file_id, FileState.ACTIVE)
        ledger.add_batches(file_id, [("sync", [2], None)])
        batch, _ = ledger.start_sending(ledger.due_batches(now=0, limit=1)[0].id)
        ledger.complete_sync(batch, "extended_id", ["A"], changed={"A"})
        counts = ledger.row_counts(file_id)
        assert counts == {RowStatus.UPLOADED: 1, RowStatus.REJECTED: 1}
        counted: list[str] = []
        event.listen(
            ledger.engine,
            "before_cursor_execute",
            lambda *a: counted.append(a[2]) if "GROUP BY status" in a[2] else None,
        )
        ledger.transition_file(file_id, FileState.REPORTING, outcome="completed_with_errors", counts=counts)
        ledger.transition_file(file_id, FileState.DONE)
        assert counted == []
        assert ledger.file_counts(file_id) == {"uploaded": 1, "rejected": 1}
        other = add_file(ledger, "b" * 64, "other.csv")
        add_rows(ledger, other, [(None, None)])
        ledger.transition_file(other, FileState.REPORTING, outcome="completed_with_errors")
        ledger.transition_file(other, FileState.DONE)
        assert len(counted) == 1
        assert ledger.file_counts(other) == {"rejected": 1}

    def test_repeats_within_a_file_are_skipped_and_conflicts_rejected(self, ledger: Ledger) -> None:
        file_id = add_file(ledger)
        add_rows(ledger, file_id, [("A", "h1"), ("B", "h2"), ("A", "h1"), ("C", "h3"), ("C", "h4"), ("A", "h1")])
        assert ledger.resolve_in_file_duplicates(file_id) == (2, 2)
        rows = {line: (status, detail) for line, _k, status, detail, _b, _t in ledger.report_rows(file_id)}
        assert rows[2] == ("pending", "")
        assert rows[4] == ("skipped", "same data as row 2 of this file")
        assert rows[7] == ("skipped", "same data as row 2 of this file")
        assert rows[5] == ("rejected", "C has different values in row 6 of this file; make them agree")
        assert rows[6] == ("rejected", "C has different values in row 5 of this file; make them agree")

    def test_a_code_uploaded_before_with_the_same_data_is_skipped(self, ledger: Ledger) -> None:
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

    @pytest.mark.parametrize(("merge_at", "merge_slice"), [(1, 1), (3, 1), (3, 2), (3, 10_000), (1000, 1)])
    def test_the_last_upload_of_a_code_wins_whenever_its_codes_are_merged(
        self, ledger: Ledger, merge_at: int, merge_slice: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Answers gather their codes in codes_new, merged into codes (a key range of MERGE_SLICE a step) once
        MERGE_AT have gathered and before the already-uploaded check: of two uploads of a code, merged apart (1)
        or in one merge, when the threshold is reached (3) or at the check (1000), the later one is remembered."""
        monkeypatch.setattr(codes_module, "MERGE_AT", merge_at)
        monkeypatch.setattr(codes_module, "MERGE_SLICE", merge_slice)
        monkeypatch.setattr(codes_module, "SAMPLE", 1)  # the ranges' ends from every code: exact

        def upload(sha: str, rows: list[tuple[str, str]]) -> int:
            file_id = add_file(ledger, sha)
            add_rows(ledger, file_id, rows)
            ledger.transition_file(file_id, FileState.ACTIVE)
            ledger.add_batches(file_id, [("sync", list(range(2, 2 + len(rows))), None)])
            batch, _ = ledger.start_sending(ledger.due_batches(now=0, limit=1)[0].id)
            ledger.complete_sync(batch, "extended_id", [k for k, _ in rows], changed={k for k, _ in rows})
            while merged := ledger.merge_some():  # the service's loop: a step each
                assert merged <= merge_slice + 1  # a range holds every upload of its last code (A: twice)
            return file_id

        first = upload("1" * 64, [("A", "h1"), ("B", "h1")])
        second = upload("2" * 64, [("A", "h2"), ("C", "h1")])  # A again, with other data
        with ledger.engine.connect() as conn:
            waiting = conn.execute(text("SELECT count(*) FROM codes_new")).scalar_one()
        assert waiting == {1: 0, 3: 0, 1000: 4}[merge_at]
        third = add_file(ledger, "3" * 64)
        add_rows(ledger, third, [("A", "h1"), ("A2", "h1"), ("B", "h1"), ("C", "h1")])
        ledger.transition_file(third, FileState.ACTIVE)
        assert ledger.skip_uploaded(third, "extended_id") == 2  # B and C; A holds h2 now
        with ledger.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM codes_new")).scalar_one() == 0
            codes = conn.execute(text("SELECT key, data_hash, file_id, line FROM codes ORDER BY key")).all()
        assert [tuple(c) for c in codes] == [("A", "h2", second, 2), ("B", "h1", first, 3), ("C", "h1", second, 3)]

    def test_planned_rows_get_their_own_batch_whether_their_lines_run_on_or_interleave(self, ledger: Ledger) -> None:
        """Rows are queued a run of consecutive lines at a time: runs that end at another batch's line, a batch
        whose lines interleave with another's, and a line no batch takes (it stays pending) all end right."""
        file_id = add_file(ledger)
        add_rows(ledger, file_id, [(f"K{i}", "h1") for i in range(12)])  # lines 2..13
        ledger.transition_file(file_id, FileState.ACTIVE)
        planned = [("async", [2, 3, 4, 5], "h1"), ("sync", [6, 8, 10], None), ("sync", [7, 9, 11, 12], None)]
        ledger.add_batches(file_id, planned)  # line 13 is in no batch
        with ledger.engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT r.line, r.status, b.seq FROM rows r LEFT JOIN batches b ON b.id=r.batch_id "
                    "WHERE r.file_id=:f ORDER BY r.line"
                ),
                {"f": file_id},
            ).all()
        seq_of = {line: seq for seq, (_, lines, _) in enumerate(planned, start=1) for line in lines}
        assert [tuple(r) for r in found] == [
            (line, "queued", seq_of[line]) if line in seq_of else (line, "pending", None) for line in range(2, 14)
        ]

    def test_a_merge_goes_a_key_range_of_about_merge_slice_codes_a_step_and_misses_none(
        self, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The ranges' ends come from a sample of the gathered codes (every SAMPLE-th by arrival): each step
        still merges about MERGE_SLICE of them, and together they merge every code once."""
        monkeypatch.setattr(codes_module, "MERGE_AT", 2000)
        monkeypatch.setattr(codes_module, "MERGE_SLICE", 200)
        rnd = random.Random(5)
        keys = sorted({"".join(rnd.choices(string.ascii_letters, k=8)) for _ in range(2000)})
        rnd.shuffle(keys)  # uploaded in no particular order of their keys
        file_id = add_file(ledger)
        add_rows(ledger, file_id, [(key, "h1") for key in keys])
        ledger.transition_file(file_id, FileState.ACTIVE)
        ledger.add_batches(file_id, [("sync", list(range(2, 2 + len(keys))), None)])
        batch, _ = ledger.start_sending(ledger.due_batches(now=0, limit=1)[0].id)
        ledger.complete_sync(batch, "extended_id", keys, changed=set(keys))
        steps = []
        while merged := ledger.merge_some():
            steps.append(merged)
        assert sum(steps) == len(keys)
        assert 5 <= len(steps) <= 20, steps
        assert max(steps) <= 3 * 200, steps
        with ledger.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM codes_new")).scalar_one() == 0
            assert conn.execute(text("SELECT count(*) FROM codes")).scalar_one() == len(keys)

    def test_an_earlier_open_row_for_the_same_code_blocks_a_later_file(self, ledger: Ledger) -> None:
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

    def test_sending_is_committed_before_the_request_and_sent_again_after_a_restart(self, ledger: Ledger) -> None:
        file_id = add_file(ledger)
        add_rows(ledger, file_id, [("A", "h1"), ("B", "h2")])
        ledger.transition_file(file_id, FileState.ACTIVE)
        ledger.add_batches(file_id, [("sync", [2, 3], None)])
        batch_id = ledger.due_batches(now=0, limit=1)[0].id
        ledger.start_sending(batch_id)

        # Another connection (another process after a crash) sees the committed state.
        other = open_engine(ledger.target)
        with other.connect() as conn:
            assert [tuple(r) for r in conn.execute(text("SELECT state, attempts FROM batches"))] == [("sending", 1)]
        other.dispose()

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

    def test_recovery_clamps_schedules_a_clock_jump_left_far_ahead(self, ledger: Ledger) -> None:
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
            due = conn.execute(text("SELECT next_attempt_at FROM batches WHERE id=:id"), {"id": first.id}).scalar_one()
        assert due == 1300.0

    def test_a_failed_batch_fails_its_rows_with_the_reason(self, ledger: Ledger) -> None:
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

    def test_a_file_caught_mid_intake_is_forgotten_whole(self, ledger: Ledger) -> None:
        file_id = add_file(ledger)
        add_rows(ledger, file_id, [("A", "h1")])
        ledger.forget_file(file_id)
        assert ledger.files(list(FileState)) == []
        assert ledger.row_counts(file_id) == {}

    def test_a_large_file_is_inserted_in_chunks(self, ledger: Ledger) -> None:
        file_id = add_file(ledger)
        n = 45_000
        records = ((line, f"K{line}", "h", "[]", "pending", "") for line in range(2, n + 2))
        assert ledger.insert_rows(file_id, records) == n
        assert ledger.row_counts(file_id) == {RowStatus.PENDING: n}

    def test_processed_content_ignores_failed_and_duplicate_files(self, ledger: Ledger) -> None:
        failed = add_file(ledger, "f" * 64, "bad.csv")
        ledger.transition_file(failed, FileState.REPORTING, outcome="failed")
        again = add_file(ledger, "f" * 64, "bad-fixed-config.csv")
        assert ledger.processed("f" * 64, other_than=again) is None
        ledger.transition_file(again, FileState.ACTIVE)
        third = add_file(ledger, "f" * 64, "third.csv")
        found = ledger.processed("f" * 64, other_than=third)
        assert found is not None
        assert found.name == "bad-fixed-config.csv"

    def test_an_async_batch_keeps_its_task_and_is_polled_not_resent(self, ledger: Ledger) -> None:
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

    def test_retry_puts_failed_rows_back_and_reopens_the_file(self, ledger: Ledger) -> None:
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

    def test_prune_drops_old_rows_but_keeps_counts_hashes_and_uploaded_codes(self, ledger_location: Path | str) -> None:
        now = [datetime(2026, 1, 1, tzinfo=UTC)]
        ledger = Ledger(ledger_location, clock=lambda: now[0])
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

    def test_a_new_ledger_has_exactly_the_schema_of_the_tables_and_the_head_revision(self, ledger: Ledger) -> None:
        with ledger.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []
            assert MigrationContext.configure(conn).get_current_revision() == HEAD
            assert schema_version(conn) == SCHEMA_VERSION
        assert ledger.overview()["schema_version"] == SCHEMA_VERSION

    def test_the_migrations_from_schema_1_build_exactly_the_schema_of_the_tables(
        self, ledger_location: Path | str
    ) -> None:
        """The Alembic chain, run from its first revision on this backend, ends where daemon.schema is: what an old
        ledger becomes is what a new one is."""
        engine = open_engine(ledger_target(ledger_location))
        with engine.connect() as conn:
            command.upgrade(migration_config(conn), "0001")
            conn.execute(
                text(
                    "INSERT INTO files (sha256, name, path, size, state, data_key, mode, layout, received_at) "
                    "VALUES ('ab', 'old.csv', '/in/old.csv', 1, :done, 'extended_id', 'sync', '{}', 'then')"
                ),
                {"done": str(FileState.DONE)},
            )
            conn.commit()
        engine.dispose()
        led = Ledger(ledger_location)
        try:
            with led.engine.connect() as conn:
                assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []
                assert schema_version(conn) == SCHEMA_VERSION
            assert [f.name for f in led.files([FileState.DONE])] == ["old.csv"]
        finally:
            led.close()

    def test_a_ledger_from_a_newer_version_is_refused(self, ledger_location: Path | str) -> None:
        led = Ledger(ledger_location)
        led.set_meta("schema_version", "99")
        led.close()
        with pytest.raises(LedgerVersionError, match="schema version 99"):
            Ledger(ledger_location)

    def test_notifications_are_queued_once_per_channel_and_leave_when_sent(self, ledger: Ledger) -> None:
        payload = {"id": "e1", "event": "file_finished", "text": "t"}
        assert ledger.queue_notification("e1", "file_finished", payload, ["webhook", "email"], now=0.0) == 2
        assert ledger.queue_notification("e1", "file_finished", payload, ["webhook", "email"], now=0.0) == 0
        due = ledger.due_notifications(1.0, limit=10)
        assert [(n.channel, n.payload) for n in due] == [("webhook", payload), ("email", payload)]
        assert ledger.due_notifications(1.0, limit=10, exclude=[due[0].id]) == due[1:]
        ledger.notification_retry(due[0].id, at=5.0, error="refused")
        assert ledger.next_notification_at() == 0.0
        ledger.notification_sent(due[1].id)
        assert ledger.clamp_notifications(2.0) == 1
        assert ledger.next_notification_at() == 2.0
        ledger.notification_given_up(due[0].id, "refused again")
        assert ledger.notification_counts() == {"sent": 1, "given_up": 1}
        assert ledger.notification_overview()["given_up"][0]["error"] == "refused again"
        assert ledger.prune_notifications("9999", dry_run=True) == 2
        assert ledger.prune_notifications("9999") == 2
        assert ledger.notification_counts() == {}

    def test_figures_history_and_overview_read_the_stored_counts(self, ledger: Ledger) -> None:
        file_id = add_file(ledger)
        add_rows(ledger, file_id, [("A", "h1"), ("B", "h1"), (None, None)])
        ledger.transition_file(file_id, FileState.ACTIVE)
        ledger.add_batches(file_id, [("sync", [2, 3], None)])
        figures = ledger.figures()
        assert (figures.files, figures.rows_queued) == ({"active": 1}, 2)
        batch, _ = ledger.start_sending(ledger.due_batches(now=0, limit=1)[0].id)
        ledger.complete_sync(batch, "extended_id", ["A", "B"], changed={"A"})
        ledger.transition_file(file_id, FileState.REPORTING, outcome="completed_with_errors")
        ledger.transition_file(file_id, FileState.DONE)
        figures = ledger.figures()
        assert figures.files == {"completed_with_errors": 1}
        assert figures.rows == {"uploaded": 1, "not_affected": 1, "rejected": 1}
        assert figures.rows_queued == 0
        assert ledger.daily_outcomes("2026-01-01") == {"2026-01-02": {"uploaded": 1, "not_affected": 1, "rejected": 1}}
        assert [(f.name, f.counts["uploaded"]) for f in ledger.recent_files(5)] == [("f.csv", 1)]
        overview = ledger.overview()
        assert overview["rows"] == {"uploaded": 1, "not_affected": 1, "rejected": 1}
        assert overview["batches"] == {"done": 1}
        assert ledger.batch_totals(file_id) == (1, 1, 0)
        assert [f.id for f in ledger.find_files("aaaaaaaa")] == [file_id]
        assert ledger.find_files("aaaa") == []  # a prefix shorter than 8 characters names nothing
        assert [f.id for f in ledger.find_files("f.csv")] == [file_id]
        assert ledger.known_sources() == {"a" * 64: {"f.csv"}}

    def test_a_split_batch_rejects_the_refused_rows_and_requeues_the_others(self, ledger: Ledger) -> None:
        file_id = add_file(ledger)
        add_rows(ledger, file_id, [("A", "h1"), ("B", "h1"), ("C", "h1")])
        ledger.transition_file(file_id, FileState.ACTIVE)
        ledger.add_batches(file_id, [("async", [2, 3, 4], "h1")])
        batch, _ = ledger.start_sending(ledger.due_batches(now=0, limit=1)[0].id)
        children = ledger.split_batch(batch, [[2], [4]], rejected={3: "bad code"}, ambiguous=True)
        due = ledger.due_batches(now=0, limit=5)
        assert [b.id for b in due] == children
        assert all(b.ambiguous and b.reference and b.reference.endswith(f"part {b.seq}") for b in due)
        assert ledger.row_counts(file_id) == {RowStatus.QUEUED: 2, RowStatus.REJECTED: 1}
        assert ledger.batch_totals(file_id) == (1, 1, 0)

    def test_a_files_layout_is_kept_as_a_typed_record(self, ledger: Ledger) -> None:
        file_id = add_file(ledger)
        assert ledger.file(file_id).layout == FileLayout()  # not read yet
        assert not ledger.file(file_id).layout.read
        layout = FileLayout(
            format="csv",
            encoding="cp1252",
            delimiter=";",
            headers=("extended_id", "Markt"),
            key_index=0,
            fields=((1, "intended_market"),),
            clear_empty=True,
        ).with_dates_rewritten({"production_date": 2})
        ledger.set_file(file_id, layout=layout)
        stored = ledger.file(file_id).layout
        assert stored == layout
        assert stored.columns() == {"Markt": "intended_market"}
        assert stored.format_record()["delimiter"] == ";"
        assert stored.mapping().key_index == 0
        assert stored.warnings == ("2 values of 'production_date' rewritten as YYYY-MM-DD, as the API wants dates",)

    def test_intake_records_a_file_with_its_layout_and_rows(self, ledger: Ledger, tmp_path: Path) -> None:
        """The real intake into this backend (COPY on PostgreSQL): rows, layout, repeats and rejections."""
        path = tmp_path / "lot.csv"
        path.write_text(
            "extended_id;intended_market\r\nCODE00000001;DE\r\nCODE00000002;FR\r\n;US\r\nCODE00000001;DE\r\n"
            + "CODE00000003;IT\r\nCODE00000003;ES\r\n",
            encoding="utf-8",
        )
        file_id = intake.take(path, ledger, Settings())
        assert file_id is not None
        f = ledger.file(file_id)
        assert (f.state, f.layout.format, f.layout.delimiter) == (FileState.ACTIVE, "csv", ";")
        assert f.layout.columns() == {"intended_market": "intended_market"}
        assert ledger.row_counts(file_id) == {RowStatus.PENDING: 2, RowStatus.SKIPPED: 1, RowStatus.REJECTED: 3}
        assert sorted(len(lines) for lines in ledger.plannable_groups(file_id).values()) == [1, 1]

    def test_a_row_change_outside_the_row_transitions_is_refused(self, ledger: Ledger) -> None:
        file_id = add_file(ledger)
        add_rows(ledger, file_id, [("A", "h1")])
        ledger.transition_file(file_id, FileState.ACTIVE)
        ledger.add_batches(file_id, [("sync", [2], None)])
        batch, _ = ledger.start_sending(ledger.due_batches(now=0, limit=1)[0].id)
        with pytest.raises(StateConflict, match="queued -> skipped"):
            ledger.fail_batch(batch, status=RowStatus.SKIPPED, detail="no")
        assert ledger.row_counts(file_id) == {RowStatus.QUEUED: 1}


# --- SQLite only: its connection settings, and ledgers written before the migrations moved to Alembic -------------


def test_the_sqlite_connection_uses_wal_foreign_keys_and_full_sync(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    with ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    ledger.close()


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_a_ledger_from_before_alembic_is_adopted_and_migrated_keeping_its_files(tmp_path: Path, version: int) -> None:
    path = tmp_path / "old.sqlite3"
    old_ledger(path, version)
    ledger = Ledger(path)
    try:
        with ledger.engine.connect() as conn:
            assert MigrationContext.configure(conn).get_current_revision() == HEAD
            assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []
        assert ledger.get_meta("schema_version") == str(SCHEMA_VERSION)  # what an older scm-daemon checks
        assert [f.name for f in ledger.files([FileState.DONE])] == ["old.csv"]
        assert ledger.queue_notification("k", "file_finished", {"id": "k"}, ["command"], now=0.0) == 1
    finally:
        ledger.close()


def test_the_head_revision_is_the_schema_version_the_code_knows(tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    engine = create_engine(f"sqlite:///{tmp_path / 'x.sqlite3'}")
    with engine.connect() as conn:
        assert ScriptDirectory.from_config(migration_config(conn)).get_current_head() == HEAD
    engine.dispose()


# --- PostgreSQL only ----------------------------------------------------------------------------------------------


def test_a_postgresql_ledger_reconnects_after_its_connections_were_cut(pg_ledger: str) -> None:
    """A server restart (here: every session of the database terminated) costs no more than a reconnect: the pool
    checks a connection before lending it."""
    import psycopg

    ledger = Ledger(pg_ledger)
    try:
        file_id = add_file(ledger)
        database = ledger.target.url.database
        with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={database}", autocommit=True) as admin:
            cut = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname=%s AND pid<>pg_backend_pid()",
                (database,),
            ).fetchone()
        assert cut is not None
        assert cut[0] >= 1
        assert ledger.file(file_id).name == "f.csv"
        ledger.transition_file(file_id, FileState.ACTIVE)
    finally:
        ledger.close()


def test_a_migration_that_fails_changes_nothing(tmp_path: Path) -> None:
    """Schema 3 adds two columns, then an index; when the index cannot be made, the columns are not left behind
    either (SQLite's DDL is transactional once the driver is told to begin), and the ledger stays at schema 2."""
    import sqlite3

    from sqlalchemy import inspect
    from sqlalchemy.exc import OperationalError

    path = tmp_path / "v2.sqlite3"
    old_ledger(path, 2)
    with sqlite3.connect(path) as db:
        db.execute("CREATE INDEX rows_open ON rows (line)")  # in the way of schema 3's index
    db.close()
    with pytest.raises(OperationalError, match="rows_open already exists"):
        Ledger(path)
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0002"
        assert "polled_at" not in {c["name"] for c in inspect(conn).get_columns("batches")}
        assert "delivery_error" not in {c["name"] for c in inspect(conn).get_columns("files")}
    engine.dispose()


@given(st.dictionaries(st.integers(2, 400), st.integers(1, 5), max_size=120))
def test_line_runs_cover_each_planned_line_once_with_its_own_batch(batch_of: dict[int, int]) -> None:
    members = list(batch_of.items())[::-1]  # (line, batch) pairs, in no particular order
    runs = line_runs([(batch, line) for line, batch in members])
    covered = [(line, batch) for batch, first, last in runs for line in range(first, last + 1)]
    assert covered == sorted(batch_of.items())  # in line order, every member once, nothing else
    assert all(first <= last for _, first, last in runs)
    # Maximal: two runs in a row are split only by a gap in the lines or a change of batch.
    assert all(a[0] != b[0] or a[2] + 1 != b[1] for a, b in pairwise(runs))
