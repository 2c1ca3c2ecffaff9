"""`prune` on a real ledger: in chunks, each its own short transaction, removing exactly the old done files' rows
and batches, and keeping what idempotency needs (file records, counts, the last upload per code)."""

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from daemon.ledger import Ledger
from daemon.states import FileState, RowStatus

CUTOFF = "2026-02-01T00:00:00"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(tmp_path: Path, clock: Clock) -> Iterator[Ledger]:
    led = Ledger(tmp_path / "ledger.sqlite3", clock=clock)
    yield led
    led.close()


def done_file(ledger: Ledger, name: str, rows: int, *, batch: int = 3, prefix: str | None = None) -> int:
    """A file whose rows were all uploaded, `batch` rows per sync call, and which is done."""
    prefix = prefix or name
    file_id = ledger.add_file(
        sha256=name * 64, name=name, path=f"/in/{name}", size=1, data_key="extended_id", mode="sync"
    )
    keys = [f"{prefix}{n:04d}" for n in range(rows)]
    ledger.insert_rows(file_id, iter([(n + 2, k, "h", json.dumps([k]), "pending", "") for n, k in enumerate(keys)]))
    ledger.transition_file(file_id, FileState.ACTIVE)
    lines = list(range(2, rows + 2))
    ledger.add_batches(file_id, [("sync", lines[i : i + batch], None) for i in range(0, rows, batch)])
    while due := ledger.due_batches(now=0, limit=1):
        sending, send = ledger.start_sending(due[0].id)
        sent = [keys[line - 2] for line, *_ in send]
        ledger.complete_sync(sending, "extended_id", sent, changed=set(sent))
    ledger.transition_file(file_id, FileState.REPORTING, outcome="completed")
    ledger.transition_file(file_id, FileState.DONE)
    return file_id


def table_counts(ledger: Ledger, file_id: int) -> tuple[int, int, int]:
    """Rows, batches and batch memberships of a file."""
    with ledger.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            int(conn.exec_driver_sql(sql, (file_id,)).scalar_one())
            for sql in (
                "SELECT count(*) FROM rows WHERE file_id=?",
                "SELECT count(*) FROM batches WHERE file_id=?",
                "SELECT count(*) FROM batch_rows WHERE batch_id IN (SELECT id FROM batches WHERE file_id=?)",
            )
        )


@pytest.fixture
def files(ledger: Ledger, clock: Clock) -> dict[str, int]:
    """Two files done in January (old), one done in March, one still at work (received in January)."""
    old1 = done_file(ledger, "a", 10)
    old2 = done_file(ledger, "b", 7, batch=2)
    working = ledger.add_file(sha256="w" * 64, name="w", path="/in/w", size=1, data_key="extended_id", mode="sync")
    ledger.insert_rows(working, iter([(n + 2, f"w{n}", "h", "[]", "pending", "") for n in range(5)]))
    ledger.transition_file(working, FileState.ACTIVE)
    clock.now = datetime(2026, 3, 1, tzinfo=UTC)
    recent = done_file(ledger, "c", 4)
    return {"old1": old1, "old2": old2, "working": working, "recent": recent}


def deletes(ledger: Ledger) -> Any:
    """Record (statement, rows deleted) of every DELETE the engine runs."""
    seen: list[tuple[str, int]] = []

    def after(_conn: Any, cursor: Any, statement: str, _params: Any, _ctx: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            seen.append((statement.split()[2], cursor.rowcount))

    event.listen(ledger.engine, "after_cursor_execute", after)
    return seen


def test_prune_in_chunks_drops_exactly_the_old_done_files_rows_and_batches(
    ledger: Ledger, files: dict[str, int]
) -> None:
    kept = {name: table_counts(ledger, files[name]) for name in ("working", "recent")}
    with ledger.engine.connect() as conn:
        codes = conn.exec_driver_sql("SELECT data_key, key, data_hash, file_id, line FROM codes ORDER BY key").all()
    overview = ledger.overview()["rows"]
    seen = deletes(ledger)

    assert ledger.prune(CUTOFF, chunk=3, pause=0) == (2, 17)

    row_chunks = [n for table, n in seen if table == "rows" and n]
    assert row_chunks == [3, 3, 3, 1, 3, 3, 1]  # 10 = 3+3+3+1, then 7 = 3+3+1
    # Whole batches holding at least a chunk's rows: one of 3, or two of 2 (a chunk + a batch - 1 at most).
    assert [n for table, n in seen if table == "batch_rows"] == [3, 3, 3, 1, 4, 3]
    assert sum(n for table, n in seen if table == "batches") == 4 + 4
    counts = {line.id: line.counts for line in ledger.recent_files(10)}
    for name, uploaded in (("old1", 10), ("old2", 7)):
        assert table_counts(ledger, files[name]) == (0, 0, 0)
        assert counts[files[name]] == {"uploaded": uploaded}  # the file's record and its counts stay
    assert {name: table_counts(ledger, files[name]) for name in ("working", "recent")} == kept
    with ledger.engine.connect() as conn:
        assert (
            conn.exec_driver_sql("SELECT data_key, key, data_hash, file_id, line FROM codes ORDER BY key").all()
            == codes
        )
    assert ledger.overview()["rows"] == overview
    assert ledger.prune(CUTOFF, chunk=3, pause=0) == (0, 0)
    # What idempotency reads is still there: the same bytes are a duplicate, the same data for a code is skipped.
    assert ledger.processed("a" * 64, other_than=999) is not None
    again = ledger.add_file(sha256="x" * 64, name="x", path="/in/x", size=1, data_key="extended_id", mode="sync")
    ledger.insert_rows(
        again, iter([(2, "a0003", "h", "[]", "pending", ""), (3, "b0001", "other", "[]", "pending", "")])
    )
    ledger.transition_file(again, FileState.ACTIVE)
    assert ledger.skip_uploaded(again, "extended_id") == 1
    assert ledger.row_counts(again) == {RowStatus.SKIPPED: 1, RowStatus.PENDING: 1}


def test_another_connection_writes_between_prunes_chunks(ledger: Ledger, files: dict[str, int]) -> None:
    """After each chunk the write lock is free: a writer that does not wait at all (timeout 0) gets in."""
    other = sqlite3.connect(str(ledger.target.url.database), timeout=0, isolation_level=None)
    written: list[int] = []

    def write_now(_dbapi_conn: Any, _record: Any) -> None:
        other.execute("INSERT INTO meta (key, value) VALUES ('probe', '1') ON CONFLICT(key) DO UPDATE SET value='2'")
        written.append(1)

    seen = deletes(ledger)
    event.listen(ledger.engine.pool, "checkin", write_now)  # a connection goes back to the pool: its transaction ended
    ledger.prune(CUTOFF, chunk=3, pause=0)
    event.remove(ledger.engine.pool, "checkin", write_now)
    other.close()
    transactions = len([1 for table, _ in seen if table in ("rows", "batches")])
    # Per old file: its row chunks and the one that finds none left, then its batch chunks (with their memberships).
    assert transactions == (4 + 1) + (3 + 1) + 4 + 2
    assert len(written) >= transactions


def test_a_file_reopened_while_it_is_pruned_keeps_its_remaining_rows(ledger: Ledger, files: dict[str, int]) -> None:
    """`retry` may put a done file back to work between two chunks: the next chunk checks and leaves it be."""
    old1 = files["old1"]
    other = sqlite3.connect(str(ledger.target.url.database), isolation_level=None)
    seen = deletes(ledger)

    def reopen(_dbapi_conn: Any, _record: Any) -> None:
        if any(table == "rows" for table, _ in seen):
            other.execute("UPDATE files SET state='active', finished_at=NULL WHERE id=?", (old1,))

    event.listen(ledger.engine.pool, "checkin", reopen)
    files_pruned, rows = ledger.prune(CUTOFF, chunk=3, pause=0)
    event.remove(ledger.engine.pool, "checkin", reopen)
    other.close()
    assert table_counts(ledger, old1) == (7, 4, 10)  # its first chunk went; the rest and its batches stay
    assert table_counts(ledger, files["old2"]) == (0, 0, 0)
    assert (files_pruned, rows) == (2, 3 + 7)
