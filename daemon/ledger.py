"""The ledger, the only source of truth: files, rows and batches, each change a guarded UPDATE committed at once."""

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from daemon import schema
from daemon.states import (
    BATCH_TRANSITIONS,
    FILE_TRANSITIONS,
    BatchState,
    FileState,
    Outcome,
    RowStatus,
    sources,
)

Clock = Callable[[], datetime]

INSERT_CHUNK = 20_000  # rows per executemany; one commit per chunk keeps the WAL small during a large intake


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


class StateConflict(Exception):
    """A guarded transition matched nothing: the record was not in a state that allows it."""


@dataclass(frozen=True)
class FileInfo:
    """A file's ledger record."""

    id: int
    sha256: str
    name: str
    path: str
    size: int
    state: FileState
    outcome: Outcome | None
    data_key: str
    mode: str
    layout: dict[str, Any]
    error: str | None
    report_base: str | None
    destination: str | None
    received_at: str
    finished_at: str | None


@dataclass(frozen=True)
class BatchInfo:
    """A batch's ledger record."""

    id: int
    file_id: int
    seq: int
    kind: str
    state: BatchState
    size: int
    attempts: int
    failures: int
    ambiguous: bool
    last_error: str | None


@dataclass(frozen=True)
class PlanRow:
    """A pending row as the planner sees it, with the data last uploaded for its code (if any)."""

    line: int
    key: str
    data_hash: str
    uploaded_hash: str | None


_FILE_COLUMNS = (
    "id, sha256, name, path, size, state, outcome, data_key, mode, layout, error, report_base, destination, "
    "received_at, finished_at"
)
_BATCH_COLUMNS = "id, file_id, seq, kind, state, size, attempts, failures, ambiguous, last_error"


def _file(row: Sequence[Any]) -> FileInfo:
    values = list(row)
    values[5] = FileState(values[5])
    values[6] = Outcome(values[6]) if values[6] else None
    values[9] = json.loads(values[9])
    return FileInfo(*values)


def _batch(row: Sequence[Any]) -> BatchInfo:
    values = list(row)
    values[4] = BatchState(values[4])
    values[8] = bool(values[8])
    return BatchInfo(*values)


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


class Ledger:
    """The SQLite ledger. One process writes it (the service's main thread); others may read."""

    def __init__(self, path: Path, *, clock: Clock = utcnow) -> None:
        self.path = path
        self.clock = clock
        self.engine = schema.connect(path)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def now(self) -> str:
        """The injected clock's time in ISO 8601."""
        return self.clock().isoformat(timespec="milliseconds")

    def _guard(self, conn: Connection, table: str, where: str, params: Sequence[Any], allowed: list[str]) -> int:
        result = conn.exec_driver_sql(f"{where} AND state IN ({_placeholders(len(allowed))})", (*params, *allowed))
        if result.rowcount != 1:
            raise StateConflict(f"{table}: transition matched {result.rowcount} records ({where}, {params})")
        return result.rowcount

    # --- files -----------------------------------------------------------------------------------------------

    def add_file(self, *, sha256: str, name: str, path: str, size: int, data_key: str, mode: str) -> int:
        """Record a claimed file in state `received`."""
        with self.engine.begin() as conn:
            result = conn.exec_driver_sql(
                "INSERT INTO files (sha256, name, path, size, state, data_key, mode, layout, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, '{}', ?)",
                (sha256, name, path, size, FileState.RECEIVED, data_key, mode, self.now()),
            )
            file_id = result.lastrowid
        assert file_id is not None
        return int(file_id)

    def file(self, file_id: int) -> FileInfo:
        """One file's record."""
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(f"SELECT {_FILE_COLUMNS} FROM files WHERE id=?", (file_id,)).one()
        return _file(row)

    def files(self, states: Iterable[FileState]) -> list[FileInfo]:
        """The files in any of these states, oldest first."""
        wanted = [str(s) for s in states]
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE state IN ({_placeholders(len(wanted))}) ORDER BY id",
                tuple(wanted),
            ).all()
        return [_file(r) for r in rows]

    def find_files(self, name_or_sha: str) -> list[FileInfo]:
        """Files whose name, or SHA-256 (or its prefix of 8+ characters), is this."""
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE name=? OR (length(?) >= 8 AND sha256 LIKE ? || '%') "
                "ORDER BY id",
                (name_or_sha, name_or_sha, name_or_sha.lower()),
            ).all()
        return [_file(r) for r in rows]

    def processed(self, sha256: str, *, other_than: int) -> FileInfo | None:
        """An earlier file with the same bytes that was (or is being) processed, if any."""
        refused = (str(Outcome.FAILED), str(Outcome.DUPLICATE))
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE sha256=? AND id<>? "
                "AND (outcome IS NULL OR outcome NOT IN (?, ?)) ORDER BY id LIMIT 1",
                (sha256, other_than, *refused),
            ).first()
        return _file(row) if row else None

    def transition_file(self, file_id: int, to: FileState, **values: Any) -> None:
        """Move a file to state `to` (guarded by FILE_TRANSITIONS), setting other columns with it."""
        values = {k: json.dumps(v) if k == "layout" else v for k, v in values.items()}
        if to is FileState.DONE:
            values.setdefault("finished_at", self.now())
        sets = ", ".join(f"{k}=?" for k in ("state", *values))
        with self.engine.begin() as conn:
            self._guard(
                conn,
                "files",
                f"UPDATE files SET {sets} WHERE id=?",
                (str(to), *values.values(), file_id),
                sources(FILE_TRANSITIONS, to),
            )

    def set_file(self, file_id: int, **values: Any) -> None:
        """Set columns of a file that carry no state (the report stem, the destination)."""
        sets = ", ".join(f"{k}=?" for k in values)
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE files SET {sets} WHERE id=?", (*values.values(), file_id))

    def discard_rows(self, file_id: int) -> None:
        """Drop the rows recorded so far for a file that turned out unreadable."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM rows WHERE file_id=?", (file_id,))

    def forget_file(self, file_id: int) -> None:
        """Drop a file caught mid-intake, with its rows, so that the next scan takes it afresh."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM rows WHERE file_id=?", (file_id,))
            conn.exec_driver_sql("DELETE FROM batches WHERE file_id=?", (file_id,))
            conn.exec_driver_sql("DELETE FROM files WHERE id=? AND state=?", (file_id, str(FileState.RECEIVED)))

    # --- rows ------------------------------------------------------------------------------------------------

    def insert_rows(self, file_id: int, rows: Iterator[tuple[int, str | None, str | None, str, str, str]]) -> int:
        """Record rows (line, key, data_hash, cells JSON, status, detail) in large transactions; returns the count."""
        count = 0
        sql = (
            "INSERT INTO rows (file_id, line, key, data_hash, cells, status, detail) "
            f"VALUES ({file_id}, ?, ?, ?, ?, ?, ?)"
        )

        while chunk := list(islice(rows, INSERT_CHUNK)):
            with self.engine.begin() as conn:
                conn.exec_driver_sql(sql, chunk)
            count += len(chunk)
        return count

    def resolve_in_file_duplicates(self, file_id: int) -> tuple[int, int]:
        """Skip identical repeats of a code within the file; reject every row of a code given different data."""
        with self.engine.begin() as conn:
            rows = conn.exec_driver_sql(
                "SELECT key, line, data_hash FROM rows WHERE file_id=? AND status=? AND key IN "
                "(SELECT key FROM rows WHERE file_id=? AND status=? GROUP BY key HAVING count(*) > 1) "
                "ORDER BY key, line",
                (file_id, str(RowStatus.PENDING), file_id, str(RowStatus.PENDING)),
            ).all()
            updates: list[tuple[str, str, int, int]] = []
            for key, group in _group_by_key(rows):
                hashes = {h for _, h in group}
                if len(hashes) == 1:
                    first = group[0][0]
                    updates.extend(
                        (str(RowStatus.SKIPPED), f"same data as row {first} of this file", file_id, line)
                        for line, _ in group[1:]
                    )
                else:
                    for line, _ in group:
                        others = [str(other) for other, _ in group if other != line]
                        shown = ", ".join(others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10 else "")
                        rows_word = "row" if len(others) == 1 else "rows"
                        detail = f"{key} has different values in {rows_word} {shown} of this file; make them agree"
                        updates.append((str(RowStatus.REJECTED), detail, file_id, line))
            if updates:
                conn.exec_driver_sql(
                    "UPDATE rows SET status=?, detail=? WHERE file_id=? AND line=?",
                    updates,
                )
        skipped = sum(1 for u in updates if u[0] == RowStatus.SKIPPED)
        return skipped, len(updates) - skipped

    def plannable_rows(self, file_id: int, data_key: str) -> list[PlanRow]:
        """Pending rows of a file whose code has no open row in an earlier file (so uploads keep drop order)."""
        earlier = [f.id for f in self.files([FileState.RECEIVED, FileState.ACTIVE]) if f.id < file_id]
        blocked = ""
        if earlier:
            blocked = (
                " AND NOT EXISTS (SELECT 1 FROM rows o WHERE o.file_id IN "
                f"({','.join(str(i) for i in earlier)}) AND o.key=r.key AND o.status IN ('pending', 'queued'))"
            )
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT r.line, r.key, r.data_hash, c.data_hash FROM rows r "
                "LEFT JOIN codes c ON c.data_key=? AND c.key=r.key "
                f"WHERE r.file_id=? AND r.status='pending'{blocked} ORDER BY r.line",
                (data_key, file_id),
            ).all()
        return [PlanRow(*r) for r in rows]

    def has_open_rows(self, file_id: int) -> bool:
        """Whether any row of the file still waits for an outcome."""
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT 1 FROM rows WHERE file_id=? AND status IN ('pending', 'queued') LIMIT 1", (file_id,)
            ).first()
        return row is not None

    def has_pending_rows(self, file_id: int) -> bool:
        """Whether any row of the file still waits to be planned."""
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT 1 FROM rows WHERE file_id=? AND status='pending' LIMIT 1", (file_id,)
            ).first()
        return row is not None

    def skip_rows(self, file_id: int, lines: Sequence[tuple[int, str]]) -> None:
        """Mark pending rows skipped, each with its detail."""
        with self.engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE rows SET status='skipped', detail=? WHERE file_id=? AND line=? AND status='pending'",
                [(detail, file_id, line) for line, detail in lines],
            )

    def row_counts(self, file_id: int) -> dict[RowStatus, int]:
        """How many of the file's rows are in each status."""
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT status, count(*) FROM rows WHERE file_id=? GROUP BY status", (file_id,)
            ).all()
        return {RowStatus(s): n for s, n in rows}

    def report_rows(self, file_id: int) -> Iterator[tuple[int, str | None, str, str, int | None]]:
        """Every row of a file in spreadsheet order: line, key, status, detail, batch number."""
        with (
            self.engine.connect() as conn,
            closing(
                conn.exec_driver_sql(
                    "SELECT r.line, r.key, r.status, r.detail, b.seq FROM rows r "
                    "LEFT JOIN batches b ON b.id=r.batch_id WHERE r.file_id=? ORDER BY r.line",
                    (file_id,),
                )
            ) as result,
        ):
            yield from result

    def error_rows(self, file_id: int) -> Iterator[tuple[int, list[str], str, str]]:
        """Rejected and failed rows of a file: line, cells, status, detail."""
        with (
            self.engine.connect() as conn,
            closing(
                conn.exec_driver_sql(
                    "SELECT line, cells, status, detail FROM rows WHERE file_id=? AND status IN ('rejected', 'failed') "
                    "ORDER BY line",
                    (file_id,),
                )
            ) as result,
        ):
            for line, cells, status, detail in result:
                yield line, json.loads(cells), status, detail

    # --- batches ---------------------------------------------------------------------------------------------

    def add_batches(self, file_id: int, kind: str, batches: Sequence[Sequence[int]]) -> None:
        """Create batches of pending rows (by line) and queue those rows, in one transaction."""
        now = self.now()
        with self.engine.begin() as conn:
            start = conn.exec_driver_sql(
                "SELECT coalesce(max(seq), 0) FROM batches WHERE file_id=?", (file_id,)
            ).scalar_one()
            for seq, lines in enumerate(batches, start=start + 1):
                result = conn.exec_driver_sql(
                    "INSERT INTO batches (file_id, seq, kind, state, size, attempts, failures, next_attempt_at, "
                    "ambiguous, created_at) VALUES (?, ?, ?, 'queued', ?, 0, 0, 0, 0, ?)",
                    (file_id, seq, kind, len(lines), now),
                )
                batch_id = result.lastrowid
                updated = conn.exec_driver_sql(
                    "UPDATE rows SET status='queued', batch_id=? WHERE file_id=? AND line=? AND status='pending'",
                    [(batch_id, file_id, line) for line in lines],
                )
                if updated.rowcount != len(lines):
                    raise StateConflict(f"batch {seq} of file {file_id}: some rows were no longer pending")

    def batch(self, batch_id: int) -> BatchInfo:
        """One batch's record."""
        with self.engine.connect() as conn:
            row = conn.exec_driver_sql(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id=?", (batch_id,)).one()
        return _batch(row)

    def due_batches(self, now: float, limit: int) -> list[int]:
        """Queued batches whose next attempt is due, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT id FROM batches WHERE state='queued' AND next_attempt_at<=? ORDER BY next_attempt_at, id "
                "LIMIT ?",
                (now, limit),
            ).all()
        return [r[0] for r in rows]

    def next_due(self) -> float | None:
        """When the earliest queued batch is due (epoch seconds), if any."""
        with self.engine.connect() as conn:
            value = conn.exec_driver_sql("SELECT min(next_attempt_at) FROM batches WHERE state='queued'").scalar_one()
        return float(value) if value is not None else None

    def start_sending(self, batch_id: int) -> tuple[BatchInfo, list[tuple[int, str, list[str]]]]:
        """Mark a batch `sending` and count the request, committed before it goes out; returns its rows."""
        with self.engine.begin() as conn:
            self._guard(
                conn,
                "batches",
                "UPDATE batches SET state='sending', attempts=attempts+1 WHERE id=?",
                (batch_id,),
                sources(BATCH_TRANSITIONS, BatchState.SENDING),
            )
            info = _batch(conn.exec_driver_sql(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id=?", (batch_id,)).one())
            rows = conn.exec_driver_sql(
                "SELECT line, key, cells FROM rows WHERE batch_id=? ORDER BY line", (batch_id,)
            ).all()
        return info, [(line, key, json.loads(cells)) for line, key, cells in rows]

    def complete_sync(self, batch: BatchInfo, data_key: str, changed: set[str]) -> None:
        """Record a sync answer: listed codes are uploaded, the others not affected (or uploaded, if ambiguous)."""
        now = self.now()
        with self.engine.begin() as conn:
            self._guard(
                conn,
                "batches",
                "UPDATE batches SET state='done', failures=0, finished_at=? WHERE id=?",
                (now, batch.id),
                sources(BATCH_TRANSITIONS, BatchState.DONE),
            )
            rows = conn.exec_driver_sql(
                "SELECT line, key, data_hash FROM rows WHERE batch_id=? AND status='queued'", (batch.id,)
            ).all()
            updates: list[tuple[str, str, int, int]] = []
            uploaded: list[tuple[str, str, str, int, int, str]] = []
            for line, key, data_hash in rows:
                if key in changed:
                    updates.append(("uploaded", "", batch.file_id, line))
                elif batch.ambiguous:
                    detail = (
                        "not listed in the answer, but an earlier attempt of this batch may have been applied; "
                        "counted as uploaded"
                    )
                    updates.append(("uploaded", detail, batch.file_id, line))
                else:
                    detail = "not changed by Scantrust: unknown code, or the values were already set"
                    updates.append(("not_affected", detail, batch.file_id, line))
                    continue
                uploaded.append((data_key, key, data_hash, batch.file_id, line, now))
            conn.exec_driver_sql(
                "UPDATE rows SET status=?, detail=? WHERE file_id=? AND line=?",
                updates,
            )
            if uploaded:
                conn.exec_driver_sql(
                    "INSERT INTO codes (data_key, key, data_hash, file_id, line, uploaded_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(data_key, key) DO UPDATE SET "
                    "data_hash=excluded.data_hash, file_id=excluded.file_id, line=excluded.line, "
                    "uploaded_at=excluded.uploaded_at",
                    uploaded,
                )

    def requeue(self, batch: BatchInfo, *, at: float, error: str, ambiguous: bool, count_failure: bool) -> None:
        """Put a batch back in the queue for another attempt at epoch time `at`."""
        with self.engine.begin() as conn:
            self._guard(
                conn,
                "batches",
                "UPDATE batches SET state='queued', next_attempt_at=?, last_error=?, ambiguous=ambiguous OR ?, "
                "failures=failures+? WHERE id=?",
                (at, error, ambiguous, 1 if count_failure else 0, batch.id),
                sources(BATCH_TRANSITIONS, BatchState.QUEUED),
            )

    def fail_batch(self, batch: BatchInfo, *, status: RowStatus, detail: str) -> None:
        """Give a batch up: its open rows become `status` (failed or rejected) with the detail."""
        with self.engine.begin() as conn:
            self._guard(
                conn,
                "batches",
                "UPDATE batches SET state='failed', last_error=?, finished_at=? WHERE id=?",
                (detail, self.now(), batch.id),
                sources(BATCH_TRANSITIONS, BatchState.FAILED),
            )
            conn.exec_driver_sql(
                "UPDATE rows SET status=?, detail=? WHERE batch_id=? AND status='queued'",
                (str(status), detail, batch.id),
            )

    def batch_totals(self, file_id: int) -> tuple[int, int]:
        """A file's number of batches and of API calls they made."""
        with self.engine.connect() as conn:
            batches, calls = conn.exec_driver_sql(
                "SELECT count(*), coalesce(sum(attempts), 0) FROM batches WHERE file_id=?", (file_id,)
            ).one()
        return int(batches), int(calls)

    def retry_failed(self, file_id: int) -> int:
        """Put a file's failed rows back to pending (and the file back to active); returns how many."""
        with self.engine.begin() as conn:
            moved = conn.exec_driver_sql(
                "UPDATE rows SET status='pending', detail='', batch_id=NULL WHERE file_id=? AND status='failed'",
                (file_id,),
            ).rowcount
        return moved

    # --- overview --------------------------------------------------------------------------------------------

    def overview(self, *, recent: int = 10) -> dict[str, Any]:
        """What the ledger holds, for `scm-daemon status`."""
        with self.engine.connect() as conn:

            def counts(sql: str) -> dict[str, int]:
                return {str(k): int(n) for k, n in conn.exec_driver_sql(sql).all()}

            files = counts("SELECT coalesce(outcome, state), count(*) FROM files GROUP BY 1")
            rows = counts("SELECT status, count(*) FROM rows GROUP BY status")
            batches = counts("SELECT state, count(*) FROM batches GROUP BY state")
            latest = conn.exec_driver_sql(
                "SELECT id, name, state, outcome, received_at, finished_at, error FROM files ORDER BY id DESC LIMIT ?",
                (recent,),
            ).all()
            errors = conn.exec_driver_sql(
                "SELECT f.name, b.seq, b.state, b.attempts, b.last_error FROM batches b JOIN files f ON f.id=b.file_id "
                "WHERE b.last_error IS NOT NULL ORDER BY b.id DESC LIMIT ?",
                (recent,),
            ).all()
            retry_at = conn.exec_driver_sql(
                "SELECT min(next_attempt_at) FROM batches WHERE state='queued' AND failures > 0"
            ).scalar_one()
        return {
            "ledger": str(self.path),
            "files": files,
            "rows": rows,
            "batches": batches,
            "in_flight": batches.get(str(BatchState.SENDING), 0),
            "next_retry_at": datetime.fromtimestamp(retry_at, UTC).isoformat(timespec="seconds") if retry_at else None,
            "recent_files": [
                {
                    "id": i,
                    "name": n,
                    "state": st,
                    "status": o,
                    "received_at": r,
                    "finished_at": fin,
                    "error": e,
                }
                for i, n, st, o, r, fin, e in latest
            ],
            "last_errors": [
                {"file": n, "batch": seq, "state": st, "attempts": a, "error": e} for n, seq, st, a, e in errors
            ],
        }

    # --- recovery --------------------------------------------------------------------------------------------

    def recover(self) -> dict[str, int]:
        """After a restart: batches caught `sending` go back to the queue, marked ambiguous (they may have landed)."""
        with self.engine.begin() as conn:
            resent = conn.exec_driver_sql(
                "UPDATE batches SET state='queued', ambiguous=1, next_attempt_at=0 WHERE state='sending'"
            ).rowcount
        return {"batches_requeued": resent}


def _group_by_key(rows: Sequence[Any]) -> Iterator[tuple[str, list[tuple[int, str]]]]:
    current: str | None = None
    group: list[tuple[int, str]] = []
    for key, line, data_hash in rows:
        if key != current and group:
            assert current is not None
            yield current, group
            group = []
        current = key
        group.append((line, data_hash))
    if group:
        assert current is not None
        yield current, group
