"""The queries the service loop runs on every turn never scan a file's rows: checked with EXPLAIN QUERY PLAN.

A query whose cost grows with the rows already uploaded makes a big file's upload quadratic (issue 13). The
statements are captured from the real ledger methods as the loop calls them, on a ledger holding a file with
many final rows and a few open ones, and each plan is read back from SQLite (and, for the open-row queries, from
PostgreSQL, whose planner must find the partial index without a hint).
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from daemon.ledger import Ledger
from daemon.states import BatchState, FileState, RowStatus

ROWS = 2000


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    file_id = ledger.add_file(
        sha256="a" * 64, name="big.csv", path="/in/big.csv", size=1, data_key="extended_id", mode="sync"
    )
    ledger.insert_rows(file_id, iter([(n + 2, f"K{n:08d}", "h", "[]", "pending", "") for n in range(ROWS)]))
    ledger.transition_file(file_id, FileState.ACTIVE)
    ledger.add_batches(
        file_id, [("sync", list(range(2, ROWS - 8)), None), ("sync", list(range(ROWS - 8, ROWS + 2)), None)]
    )
    batch, _ = ledger.start_sending(ledger.due_batches(now=0, limit=1)[0].id)
    keys = [f"K{n:08d}" for n in range(ROWS - 10)]
    ledger.complete_sync(batch, "extended_id", keys, changed=set(keys))  # all but the last ten rows are final
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    yield ledger
    ledger.close()


@contextmanager
def captured(ledger: Ledger, kinds: tuple[str, ...] = ("SELECT",)) -> Iterator[list[tuple[str, Any]]]:
    """The statements of these kinds the ledger runs in the block (an executemany's by its first row)."""
    statements: list[tuple[str, Any]] = []

    def remember(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith(kinds):
            statements.append((statement, parameters[0] if many else parameters))

    event.listen(ledger.engine, "before_cursor_execute", remember)
    try:
        yield statements
    finally:
        event.remove(ledger.engine, "before_cursor_execute", remember)


def plan_of(ledger: Ledger, statement: str, parameters: Any) -> list[str]:
    with ledger.engine.connect() as conn:
        return [row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)]


def test_no_per_turn_query_scans_rows(ledger: Ledger) -> None:
    file_id = ledger.files([FileState.ACTIVE])[0].id
    with captured(ledger) as statements:
        # What Service.step and Service.next_wake ask on every turn of the loop, for every active file.
        ledger.files([FileState.RECEIVED, FileState.ACTIVE, FileState.REPORTING])
        ledger.due_batches(now=0, limit=8)
        ledger.next_due()
        ledger.has_open_rows(file_id)
        ledger.has_pending_rows(file_id)
        ledger.file(file_id)
        ledger.open_row_count(file_id)  # the progress sample, every few seconds
    assert len(statements) >= 7
    for statement, parameters in statements:
        plan = plan_of(ledger, statement, parameters)
        assert not any(scans_rows(step) for step in plan), (statement, plan)


def test_sending_and_recording_an_answer_reach_only_the_batchs_rows(ledger: Ledger) -> None:
    """Per request and per answer: a batch's rows are found through batch_rows and the rows' primary key (file and
    line), never by reading the file's rows, whether the answer is a sync call's or a finished async job's."""
    with captured(ledger, kinds=("SELECT", "INSERT", "UPDATE", "DELETE")) as statements:
        batch, rows = ledger.start_sending(ledger.due_batches(now=0, limit=1)[0].id)
        assert len(rows) == 10
        ledger.complete_sync(batch, "extended_id", [key for _, key, _ in rows], changed={rows[0][1]})
    job = ledger.add_file(
        sha256="c" * 64, name="job.csv", path="/in/job.csv", size=1, data_key="extended_id", mode="async"
    )
    ledger.insert_rows(job, iter([(n + 2, f"J{n:08d}", "h", "[]", "pending", "") for n in range(50)]))
    ledger.transition_file(job, FileState.ACTIVE)
    ledger.add_batches(job, [("async", list(range(2, 52)), "h")])
    task, _ = ledger.start_sending(ledger.due_batches(now=0, limit=1)[0].id)
    ledger.submit_task(task, task_id="T1", submitted_at=10.0, poll_at=15.0)
    polled = ledger.due_batches(now=15.0, limit=1, wanted=(BatchState.SUBMITTED,))[0]
    with captured(ledger, kinds=("SELECT", "INSERT", "UPDATE", "DELETE")) as answer:
        ledger.complete_task(polled, "extended_id", task_state="complete", codes_affected=50)
    assert ledger.row_counts(job) == {RowStatus.UPLOADED: 50}
    steps = plan_steps(ledger, statements + answer)
    assert any("codes_new" in statement for statement, _ in steps)
    for statement, plan in steps:
        assert not any(scans_rows(step) for step in plan), (statement, plan)
        assert not any(re.match(r"SCAN (batch_rows|br)\b", step) for step in plan), (statement, plan)


def scans_rows(step: str) -> bool:
    """A plan step that reads every row of the table, or every row of a file (its primary-key range)."""
    return bool(re.match(r"SCAN rows\b", step)) or step.strip() == "SEARCH rows USING PRIMARY KEY (file_id=?)"


def test_the_scan_detector_sees_a_scan_of_a_files_rows(ledger: Ledger) -> None:
    whole_file = plan_of(ledger, "SELECT 1 FROM rows WHERE file_id=? AND status='uploaded'", (1,))
    whole_table = plan_of(ledger, "SELECT 1 FROM rows WHERE detail=?", ("x",))
    assert any(scans_rows(step) for step in whole_file), whole_file
    assert any(scans_rows(step) for step in whole_table), whole_table


def test_the_open_row_check_is_one_index_probe(ledger: Ledger) -> None:
    file_id = ledger.files([FileState.ACTIVE])[0].id
    with captured(ledger) as statements:
        assert ledger.has_open_rows(file_id)
    ((statement, parameters),) = statements
    assert any("rows_open" in step for step in plan_of(ledger, statement, parameters))


def test_planning_beside_an_earlier_file_probes_its_open_rows_once_per_statement(ledger: Ledger) -> None:
    """The "earlier open row for the same code" check: one pass over the earlier file's open rows (from the
    partial index), never a correlated subquery that reads the earlier file's rows again for every row planned."""
    later = ledger.add_file(
        sha256="b" * 64, name="small.csv", path="/in/small.csv", size=1, data_key="extended_id", mode="sync"
    )
    ledger.insert_rows(later, iter([(n + 2, f"K{n:08d}", "h", "[]", "pending", "") for n in range(ROWS - 20, ROWS)]))
    ledger.transition_file(later, FileState.ACTIVE)
    with captured(ledger) as statements:
        groups = ledger.plannable_groups(later)
    # Codes K..1990-1999 are still open in the earlier file: those rows wait; the ten before them may go.
    assert sorted(groups["h"]) == list(range(ROWS - 18, ROWS - 8))
    (statement, parameters) = next(s for s in statements if "data_hash" in s[0])  # after files_in_flight()
    plan = plan_of(ledger, statement, parameters)
    assert not any(step.startswith("CORRELATED") for step in plan), plan
    assert any("rows_open" in step for step in plan), plan


def test_the_scrape_queries_never_scan_rows(ledger: Ledger) -> None:
    """/metrics reads the ledger at every scrape (every 15 s or so): the files table and the open batches through
    their state index, never the rows (millions of them; even the partial index of open rows costs a lookup per
    open row)."""
    with captured(ledger) as statements:
        figures = ledger.figures()
    assert figures.rows_queued == 10  # the second batch's
    assert len(statements) >= 4
    for statement, parameters in statements:
        plan = plan_of(ledger, statement, parameters)
        assert not any(re.match(r"(SCAN|SEARCH) rows\b", step) for step in plan), (statement, plan)
        assert not any(re.match(r"SCAN batches\b", step) for step in plan), (statement, plan)


def plan_steps(ledger: Ledger, statements: list[tuple[str, Any]]) -> list[tuple[str, list[str]]]:
    return [(statement, plan_of(ledger, statement, parameters)) for statement, parameters in statements]


def test_taking_a_file_reads_its_own_rows_and_only_the_open_rows_of_earlier_files(ledger: Ledger) -> None:
    """On a ledger of ten million rows, a new file's claim, read, repeats check and planning cost the new file:
    nothing scans a table but `files` (a record per file) and `codes_new` (at most MERGE_AT codes), rows are
    reached by the new file's primary-key range or the partial index of open rows (the earlier file at work), and
    the already-uploaded check probes `codes` by its primary key, once per row."""
    with captured(ledger, kinds=("SELECT", "INSERT", "UPDATE", "DELETE")) as statements:
        new = ledger.add_file(
            sha256="", name="new.csv", path="/in/new.csv", size=1, data_key="extended_id", mode="sync"
        )
        ledger.set_file(new, sha256="b" * 64, size=1)
        ledger.processed("b" * 64, other_than=new)
        ledger.insert_rows(new, iter([(n + 2, f"K{n:08d}", "h", "[]", "pending", "") for n in range(ROWS - 20, ROWS)]))
        ledger.resolve_in_file_duplicates(new)
        ledger.transition_file(new, FileState.ACTIVE)
        assert ledger.skip_uploaded(new, "extended_id") == 10  # K1980-1989: uploaded with the same data
        ledger.plannable_groups(new)
        ledger.has_pending_rows(new)  # K1990-1999 wait for the earlier file's open rows
    steps = plan_steps(ledger, statements)
    assert len(steps) >= 10
    assert any("codes" in statement for statement, _ in steps)
    assert any("rows_open" in step for _, plan in steps for step in plan)  # the earlier file's open rows
    for statement, plan in steps:
        for step in plan:
            if step.startswith("SCAN "):
                # codes_new: the codes gathered since the last merge (at most MERGE_AT), read whole to merge them
                assert step.split()[1] in ("files", "codes_new"), (statement, plan)
            if re.match(r"SEARCH (rows|r|o)\b", step):
                assert "PRIMARY KEY (file_id=?" in step or "rows_open" in step, (statement, plan)
            if re.match(r"SEARCH (codes|c)\b", step):
                assert "sqlite_autoindex_codes_1 (data_key=? AND key=?)" in step, (statement, plan)


def test_prune_deletes_ranges_of_one_files_primary_key(ledger: Ledger) -> None:
    """Each chunk of prune is a range of one file's rows (or of its batches), found through a key: its cost is
    the chunk's, however big the ledger."""
    file_id = ledger.files([FileState.ACTIVE])[0].id
    with ledger.engine.begin() as conn:  # the file is done, long ago
        conn.exec_driver_sql(
            "UPDATE files SET state='done', finished_at='2000-01-01', counts='{}' WHERE id=?", (file_id,)
        )
    with captured(ledger, kinds=("DELETE", "SELECT")) as statements:
        assert ledger.prune("2001-01-01", chunk=500, pause=0) == (1, ROWS)
    steps = plan_steps(ledger, statements)
    deleting = [(s, p) for s, p in steps if s.lstrip().startswith("DELETE")]
    assert len(deleting) >= ROWS // 500 + 2
    for statement, plan in steps:
        for step in plan:
            if step.startswith("SCAN "):
                # codes_new: the codes gathered since the last merge (at most MERGE_AT), read whole to merge them
                assert step.split()[1] in ("files", "codes_new"), (statement, plan)
    for statement, plan in deleting:
        target = statement.split()[2]
        expected = {
            "rows": r"SEARCH rows USING PRIMARY KEY \(file_id=\? AND line<\?\)",
            "batch_rows": r"SEARCH batch_rows USING PRIMARY KEY \(batch_id=\?\)",
            "batches": r"SEARCH batches USING (COVERING )?INDEX ix_batches_file_id \(file_id=\? AND rowid<\?\)",
        }[target]
        assert re.fullmatch(expected, plan[0]), (statement, plan)


def test_status_counts_only_the_rows_of_files_at_work(ledger: Ledger) -> None:
    """`status` counts rows of the files not done yet in one pass (done files keep their counts): the rows are
    reached by those files' primary-key ranges, never by a scan of the table."""
    with captured(ledger) as statements:
        live = ledger.live_row_counts()
    assert live == {ledger.files([FileState.ACTIVE])[0].id: {"uploaded": ROWS - 10, "queued": 10}}
    ((statement, parameters),) = statements
    plan = plan_of(ledger, statement, parameters)
    assert "SEARCH rows USING PRIMARY KEY (file_id=?)" in plan, plan
    assert not any(re.match(r"SCAN rows\b", step) for step in plan), plan


def test_on_postgresql_the_open_row_queries_read_the_partial_index(pg_ledger: str) -> None:
    """PostgreSQL takes no index hints: its planner must find rows_open by itself (once the rows are analyzed, as
    intake does after a large file), for the same per-turn queries."""
    ledger = Ledger(pg_ledger)
    try:
        file_id = ledger.add_file(
            sha256="a" * 64, name="big.csv", path="/in/big.csv", size=1, data_key="extended_id", mode="sync"
        )
        ledger.insert_rows(file_id, iter([(n + 2, f"K{n:08d}", "h", "[]", "pending", "") for n in range(ROWS)]))
        ledger.transition_file(file_id, FileState.ACTIVE)
        ledger.add_batches(
            file_id, [("sync", list(range(2, ROWS - 8)), None), ("sync", list(range(ROWS - 8, ROWS + 2)), None)]
        )
        batch, _ = ledger.start_sending(ledger.due_batches(now=0, limit=1)[0].id)
        keys = [f"K{n:08d}" for n in range(ROWS - 10)]
        ledger.complete_sync(batch, "extended_id", keys, changed=set(keys))
        with ledger.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE rows")
        with captured(ledger) as statements:
            ledger.has_open_rows(file_id)
            ledger.has_pending_rows(file_id)
            ledger.open_row_count(file_id)
        assert len(statements) == 3
        with ledger.engine.connect() as conn:
            for statement, parameters in statements:
                plan = [row[0] for row in conn.exec_driver_sql(f"EXPLAIN {statement}", parameters)]
                assert any("using rows_open on rows" in step for step in plan), (statement, plan)
                assert not any("Seq Scan on rows" in step for step in plan), (statement, plan)
    finally:
        ledger.close()
