"""The ledger's rows: recorded in bulk, repeats resolved, handed to the planner, read back for the reports."""

import json
from array import array
from collections.abc import Iterator, Sequence
from contextlib import closing
from itertools import islice
from typing import Any

from daemon import schema
from daemon.ledger.base import count_rows, each_row, row_move, sql, states, streamed
from daemon.ledger.codes import CodeStore
from daemon.states import FILE_TRANSITIONS, OPEN_ROW_STATUSES, FileState, RowStatus, sources

INSERT_CHUNK = 20_000  # rows per executemany; one commit per chunk keeps the WAL small during a large intake
ALREADY_UPLOADED = "the same data was already uploaded for this code"

RowRecord = tuple[int, str | None, str | None, str, str, str]  # line, key, data_hash, cells JSON, status, detail
Repeat = tuple[RowStatus, str, int]  # a repeated code's row: its new status, why, its line
# A RowRecord's columns: the table's, less the file (fixed per insert) and the batch (set when planned).
ROW_COLUMNS = tuple(c.name for c in schema.rows.c if c.name not in ("file_id", "batch_id"))
# The open statuses as SQL literals, from the same enum set as the partial index rows_open (daemon.schema): SQLite
# uses a partial index only where the query's terms match its WHERE literally, which bound parameters cannot.
OPEN = "(" + ", ".join(f"'{s}'" for s in sorted(str(s) for s in OPEN_ROW_STATUSES)) + ")"


class RowStore(CodeStore):
    """Rows of files, from intake to their final status."""

    def insert_rows(self, file_id: int, rows: Iterator[RowRecord]) -> int:
        """Record rows in large transactions; returns the count."""
        count = 0
        while chunk := list(islice(rows, INSERT_CHUNK)):
            with self.begin() as conn:
                count += self.dialect.bulk_insert(conn, "rows", ROW_COLUMNS, chunk, fixed={"file_id": file_id})
        self.rows_loaded(count)
        return count

    def rows_loaded(self, count: int) -> None:
        """A file's `count` rows are recorded: when they are many, refresh the planner's statistics (PostgreSQL),
        which otherwise take the file for the few rows they saw and plan its batches as scans of all its rows."""
        if count >= INSERT_CHUNK:
            with self.begin() as conn:
                self.dialect.loaded(conn, "rows")

    def resolve_in_file_duplicates(self, file_id: int) -> tuple[int, int]:
        """Skip identical repeats of a code within the file; reject every row of a code given different data."""
        return self.resolve_repeats(file_id, self.in_file_repeats(file_id))

    def in_file_repeats(self, file_id: int) -> list[Repeat]:
        """What resolving the file's repeated codes changes, row by row: a read (a pass over every row of the file)
        that writes nothing, so the service runs it off its loop's thread (see daemon.steps)."""
        with self.connect() as conn:
            rows = conn.execute(
                sql(
                    "SELECT key, line, data_hash FROM rows WHERE file_id=:file_id AND status=:pending AND key IN "
                    "(SELECT key FROM rows WHERE file_id=:file_id AND status=:pending GROUP BY key "
                    "HAVING count(*) > 1) ORDER BY key, line"
                ),
                {"file_id": file_id, "pending": str(RowStatus.PENDING)},
            ).all()
        repeats: list[Repeat] = []
        for key, group in _group_by_key(rows):
            if len({h for _, h in group}) == 1:
                first = group[0][0]
                repeats.extend(
                    (RowStatus.SKIPPED, f"same data as row {first} of this file", line) for line, _ in group[1:]
                )
                continue
            for line, _ in group:
                others = [str(other) for other, _ in group if other != line]
                shown = ", ".join(others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10 else "")
                rows_word = "row" if len(others) == 1 else "rows"
                detail = f"{key} has different values in {rows_word} {shown} of this file; make them agree"
                repeats.append((RowStatus.REJECTED, detail, line))
        return repeats

    def resolve_repeats(self, file_id: int, repeats: Sequence[Repeat]) -> tuple[int, int]:
        """Apply in_file_repeats(): returns how many rows were skipped and how many rejected."""
        if repeats:
            with self.begin() as conn:
                conn.execute(
                    sql(
                        "UPDATE rows SET status=:to, detail=:detail "
                        f"WHERE file_id=:file_id AND line=:line AND {self.dialect.row_is_frm}"
                    ),
                    [
                        {**row_move(RowStatus.PENDING, to), "detail": detail, "file_id": file_id, "line": line}
                        for to, detail, line in repeats
                    ],
                )
        skipped = sum(1 for status, _, _ in repeats if status is RowStatus.SKIPPED)
        return skipped, len(repeats) - skipped

    def _unblocked(self, file_id: int, alias: str) -> tuple[str, dict[str, Any]]:
        """SQL (and its parameter `earlier`) that keeps rows whose code has no open row in an earlier file,
        so uploads keep drop order."""
        earlier = [f for f in self.files_in_flight() if f < file_id]
        if not earlier:
            return "", {}
        # Not a correlated NOT EXISTS: rows has no index on key (it would slow every insert), so that probe scanned
        # the earlier files' rows once per row planned. The list is built once per statement from the partial
        # index of open rows, and each row is one probe into it.
        return (
            f" AND ({alias}.key IS NULL OR {alias}.key NOT IN (SELECT o.key FROM rows o"
            f"{self.dialect.indexed_by('rows_open')} WHERE o.file_id IN :earlier AND o.status IN {OPEN} "
            "AND o.key IS NOT NULL))"
        ), {"earlier": earlier}

    def files_in_flight(self) -> list[int]:
        """Ids of files whose rows may still be open."""
        with self.connect() as conn:
            rows = conn.execute(
                sql("SELECT id FROM files WHERE state IN :states", "states"),
                {"states": states(FileState.RECEIVED, FileState.ACTIVE)},
            ).all()
        return [r[0] for r in rows]

    def skip_uploaded(self, file_id: int, data_key: str, *, lines: tuple[int, int] | None = None) -> int:
        """Skip pending rows whose code already holds the same data from an earlier upload; returns how many.

        `lines` (first, last) limits it to a range of the file's lines, so that a big file is looked up in steps.
        """
        self.settle_codes()
        unblocked, params = self._unblocked(file_id, "rows")
        within = " AND line BETWEEN :first AND :last" if lines is not None else ""
        span = {"first": lines[0], "last": lines[1]} if lines is not None else {}
        with self.begin() as conn:
            return conn.execute(
                sql(
                    f"UPDATE rows SET status=:to, detail=:detail WHERE file_id=:file_id{within} AND status=:frm "
                    "AND EXISTS (SELECT 1 FROM codes c WHERE c.data_key=:data_key AND c.key=rows.key "
                    "AND c.data_hash=rows.data_hash)" + unblocked,
                    *params,
                ),
                {
                    **row_move(RowStatus.PENDING, RowStatus.SKIPPED),
                    "detail": ALREADY_UPLOADED,
                    "file_id": file_id,
                    "data_key": data_key,
                    **span,
                    **params,
                },
            ).rowcount

    def line_range(self, file_id: int) -> tuple[int, int]:
        """The file's first and last recorded line ((0, -1) when it has no rows): two probes of the primary key."""
        with self.connect() as conn:
            first, last = conn.execute(
                sql("SELECT min(line), max(line) FROM rows WHERE file_id=:file_id"), {"file_id": file_id}
            ).one()
        return (0, -1) if first is None else (int(first), int(last))

    def plannable_groups(self, file_id: int) -> dict[str, Sequence[int]]:
        """Pending, unblocked rows of a file as {data hash: lines in row order}, compact for a million rows."""
        groups: dict[str, array[int]] = {}
        unblocked, params = self._unblocked(file_id, "r")
        with (
            self.connect() as conn,
            closing(
                conn.execute(
                    streamed(
                        sql(
                            "SELECT r.data_hash, r.line FROM rows r WHERE r.file_id=:file_id AND r.status=:pending"
                            + unblocked
                            + " ORDER BY r.line",
                            *params,
                        )
                    ),
                    {"file_id": file_id, "pending": str(RowStatus.PENDING), **params},
                )
            ) as result,
        ):
            for data_hash, line in each_row(result):
                lines = groups.get(data_hash)
                if lines is None:
                    lines = groups[data_hash] = array("q")
                lines.append(line)
        return dict(groups)

    def has_open_rows(self, file_id: int) -> bool:
        """Whether any row of the file still waits for an outcome."""
        with self.connect() as conn:
            row = conn.execute(
                sql(
                    f"SELECT 1 FROM rows{self.dialect.indexed_by('rows_open')} "
                    f"WHERE file_id=:file_id AND status IN {OPEN} LIMIT 1"
                ),
                {"file_id": file_id},
            ).first()
        return row is not None

    def has_pending_rows(self, file_id: int) -> bool:
        """Whether any row of the file still waits to be planned."""
        with self.connect() as conn:
            row = conn.execute(
                sql(
                    f"SELECT 1 FROM rows{self.dialect.indexed_by('rows_open')} "
                    f"WHERE file_id=:file_id AND status IN {OPEN} AND status=:pending LIMIT 1"
                ),
                {"file_id": file_id, "pending": str(RowStatus.PENDING)},
            ).first()
        return row is not None

    def open_row_count(self, file_id: int) -> int:
        """How many of the file's rows still wait for an outcome: from the partial index of open rows alone, so the
        cost is the open rows, not the file's."""
        with self.connect() as conn:
            return int(
                conn.execute(
                    sql(
                        f"SELECT count(*) FROM rows{self.dialect.indexed_by('rows_open')} "
                        f"WHERE file_id=:file_id AND status IN {OPEN}"
                    ),
                    {"file_id": file_id},
                ).scalar_one()
            )

    def row_total(self, file_id: int) -> int:
        """How many rows the file has (a pass over its rows: ask once per file)."""
        with self.connect() as conn:
            return int(conn.execute(sql("SELECT count(*) FROM rows WHERE file_id=:id"), {"id": file_id}).scalar_one())

    def row_counts(self, file_id: int) -> dict[RowStatus, int]:
        """How many of the file's rows are in each status (a pass over them)."""
        with self.connect() as conn:
            return count_rows(conn, file_id)

    def report_rows(self, file_id: int) -> Iterator[tuple[int, str | None, str, str, int | None, str | None]]:
        """Every row of a file in spreadsheet order: line, key, status, detail, batch number, task id."""
        with (
            self.connect() as conn,
            closing(
                conn.execute(
                    streamed(
                        sql(
                            "SELECT r.line, r.key, r.status, r.detail, b.seq, b.task_id FROM rows r "
                            "LEFT JOIN batches b ON b.id=r.batch_id WHERE r.file_id=:id ORDER BY r.line"
                        )
                    ),
                    {"id": file_id},
                )
            ) as result,
        ):
            yield from each_row(result)

    def error_rows(self, file_id: int) -> Iterator[tuple[int, list[str], str, str]]:
        """Rejected and failed rows of a file: line, cells, status, detail."""
        with (
            self.connect() as conn,
            closing(
                conn.execute(
                    streamed(
                        sql(
                            "SELECT line, cells, status, detail FROM rows WHERE file_id=:id AND status IN :errors "
                            "ORDER BY line",
                            "errors",
                        )
                    ),
                    {"id": file_id, "errors": states(RowStatus.REJECTED, RowStatus.FAILED)},
                )
            ) as result,
        ):
            for line, cells, status, detail in each_row(result):
                yield line, json.loads(cells), status, detail

    def retry_failed(self, file_id: int) -> int:
        """Put a finished file's failed rows back in the queue and the file back to work; returns how many rows.

        The reports of the retry get new names (report_base is cleared), so the first ones stay as they were.
        """
        with self.begin() as conn:
            moved = conn.execute(
                sql("UPDATE rows SET status=:to, detail='', batch_id=NULL WHERE file_id=:id AND status=:frm"),
                {**row_move(RowStatus.FAILED, RowStatus.PENDING), "id": file_id},
            ).rowcount
            if moved:
                self.guard(
                    conn,
                    "files",
                    "UPDATE files SET state=:active, outcome=NULL, report_base=NULL, finished_at=NULL, counts=NULL "
                    "WHERE id=:id",
                    {"active": str(FileState.ACTIVE), "id": file_id},
                    sources(FILE_TRANSITIONS, FileState.ACTIVE),
                )
        return moved


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
