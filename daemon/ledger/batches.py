"""The ledger's batches: queued, sent, confirmed or given up; async ones carry their task until it ends."""

import json
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import Connection

from daemon.ledger.base import (
    BATCH_COLUMNS,
    UPLOADS_PAUSED,
    BatchInfo,
    StateConflict,
    batch_info,
    row_move,
    sql,
    states,
)
from daemon.ledger.codes import CodeStore, UploadedCode
from daemon.ledger.dialect import RowChange
from daemon.states import BATCH_TRANSITIONS, BatchState, RowStatus, sources

AMBIGUOUS_UPLOADED = (
    "not listed in the answer, but an earlier attempt of this batch reached Scantrust and may have been applied; "
    "counted as uploaded"
)
NOT_AFFECTED = "not changed by Scantrust: unknown code, or the values were already set"
RESENT_NOT_AFFECTED = (
    "not changed when sent again after a restart: most likely the attempt before the restart set these values "
    "(or Scantrust does not know the code)"
)

PLAN_CHUNK = 50_000  # rows queued per statement when a file is planned
PlannedRows = tuple[str, Sequence[int], str | None]  # kind, lines, data hash (async)
_QUEUED = str(BatchState.QUEUED)
_NEW_BATCH = (
    "INSERT INTO batches (file_id, seq, kind, state, size, attempts, failures, next_attempt_at, ambiguous, created_at, "
    "data_hash, reference, parent_id) VALUES (:file_id, :seq, :kind, :state, :size, 0, 0, 0, :ambiguous, :now, "
    ":data_hash, :reference, :parent_id) RETURNING id"
)
SendRow = tuple[int, str, list[str]]  # line, key, cells
DUE_STATES = (BatchState.QUEUED, BatchState.SUBMITTED)  # to send, or to poll: what due_batches returns by default
_DUE = states(*DUE_STATES)


class BatchStore(CodeStore):
    """Batches and the async tasks they become."""

    def add_batches(self, file_id: int, planned: Sequence[PlannedRows]) -> None:
        """Create batches of pending rows and queue those rows, in one transaction."""
        now = self.now()
        with self.begin() as conn:
            name, sha256 = conn.execute(sql("SELECT name, sha256 FROM files WHERE id=:id"), {"id": file_id}).one()
            start = conn.execute(
                sql("SELECT coalesce(max(seq), 0) FROM batches WHERE file_id=:id"), {"id": file_id}
            ).scalar_one()
            members: list[tuple[int, int]] = []  # (batch id, line), in batch order, up to PLAN_CHUNK of them
            for seq, (kind, lines, data_hash) in enumerate(planned, start=start + 1):
                # Shown in the portal next to the job: enough to find the file and batch it came from.
                reference = f"scm-daemon {name} batch {seq} sha256:{sha256[:12]}"
                batch_id = int(
                    conn.execute(
                        sql(_NEW_BATCH),
                        {
                            "file_id": file_id,
                            "seq": seq,
                            "kind": kind,
                            "state": _QUEUED,
                            "size": len(lines),
                            "ambiguous": False,
                            "now": now,
                            "data_hash": data_hash,
                            "reference": reference,
                            "parent_id": None,
                        },
                    ).scalar_one()
                )
                members.extend((batch_id, line) for line in lines)
                if len(members) >= PLAN_CHUNK:
                    self._queue_members(conn, file_id, members)
                    members = []
            self._queue_members(conn, file_id, members)

    def _queue_members(self, conn: Connection, file_id: int, members: list[tuple[int, int]]) -> None:
        """Record which rows a few batches carry and queue those rows; a chunk at a time keeps memory flat."""
        if not members:
            return
        # Both writes are sequential: batch_rows is clustered by batch, and rows are updated in row order.
        self.dialect.bulk_insert(conn, "batch_rows", ("batch_id", "line"), members)
        updated = self.dialect.queue_members(conn, file_id, members, row_move(RowStatus.PENDING, RowStatus.QUEUED))
        if updated != len(members):
            raise RuntimeError(f"file {file_id}: some rows planned into batches were no longer pending")

    def batch(self, batch_id: int) -> BatchInfo:
        """One batch's record."""
        with self.connect() as conn:
            row = conn.execute(sql(f"SELECT {BATCH_COLUMNS} FROM batches WHERE id=:id"), {"id": batch_id}).one()
        return batch_info(row)

    def due_batches(
        self, now: float, limit: int, *, exclude: Collection[int] = (), wanted: Collection[BatchState] = DUE_STATES
    ) -> list[BatchInfo]:
        """Batches to send (queued) or tasks to poll (submitted) that are due, oldest first; `wanted` picks one kind."""
        if limit <= 0:
            return []
        skip = " AND id NOT IN :exclude" if exclude else ""
        with self.connect() as conn:
            rows = conn.execute(
                sql(
                    f"SELECT {BATCH_COLUMNS} FROM batches WHERE state IN :due AND next_attempt_at<=:now"
                    f"{skip} ORDER BY next_attempt_at, id LIMIT :limit",
                    "due",
                    *(["exclude"] if exclude else []),
                ),
                {"due": states(*wanted), "now": now, "limit": limit, **({"exclude": list(exclude)} if exclude else {})},
            ).all()
        return [batch_info(r) for r in rows]

    def next_due(self) -> float | None:
        """When the earliest queued batch or task poll is due (epoch seconds), if any."""
        with self.connect() as conn:
            value = conn.execute(
                sql("SELECT min(next_attempt_at) FROM batches WHERE state IN :due", "due"), {"due": _DUE}
            ).scalar_one()
        return float(value) if value is not None else None

    def start_sending(self, batch_id: int) -> tuple[BatchInfo, list[SendRow]]:
        """Mark a batch `sending` and count the request, committed before it goes out; returns its rows.

        On PostgreSQL the batch is taken with FOR UPDATE SKIP LOCKED: a batch another instance is taking at this
        moment is not waited for but refused (StateConflict), as one whose state moved on would be.
        """
        with self.begin() as conn:
            if not self.dialect.lock_row(conn, "batches", batch_id):
                raise StateConflict(f"batches: batch {batch_id} is being taken by another instance")
            self.guard(
                conn,
                "batches",
                "UPDATE batches SET state=:sending, attempts=attempts+1 WHERE id=:id",
                {"sending": str(BatchState.SENDING), "id": batch_id},
                sources(BATCH_TRANSITIONS, BatchState.SENDING),
            )
            info = batch_info(
                conn.execute(sql(f"SELECT {BATCH_COLUMNS} FROM batches WHERE id=:id"), {"id": batch_id}).one()
            )
            rows = conn.execute(
                sql(f"SELECT r.line, r.key, r.cells {self.dialect.members} ORDER BY {self.dialect.members_order}"),
                {"file_id": info.file_id, "batch_id": batch_id},
            ).all()
        return info, [(line, key, json.loads(cells)) for line, key, cells in rows]

    def _finish(self, conn: Connection, batch: BatchInfo, to: BatchState, **values: Any) -> None:
        values["finished_at"] = self.now()
        sets = ", ".join(f"{k}=:v_{k}" for k in values)
        self.guard(
            conn,
            "batches",
            f"UPDATE batches SET state=:to, {sets} WHERE id=:id",
            {"to": str(to), **{f"v_{k}": v for k, v in values.items()}, "id": batch.id},
            sources(BATCH_TRANSITIONS, to),
        )

    def _confirm(self, conn: Connection, batch: BatchInfo, data_key: str, outcome: dict[str, tuple[str, str]]) -> None:
        """Give each open row of a batch its status and detail (by key), and remember what was uploaded."""
        # The status is tested here, not in the query: on PostgreSQL a status condition lets the planner read the
        # file's open rows (the partial index rows_open, estimated by stale statistics) instead of the batch's lines.
        members = conn.execute(
            sql(f"SELECT r.line, r.key, r.data_hash, r.status {self.dialect.members}"),
            {"file_id": batch.file_id, "batch_id": batch.id},
        ).all()
        rows = [(line, key, data_hash) for line, key, data_hash, status in members if status == RowStatus.QUEUED]
        changes: list[RowChange] = []
        uploaded: list[UploadedCode] = []
        for line, key, data_hash in rows:
            status, detail = outcome[key]
            move = row_move(RowStatus.QUEUED, RowStatus(status))
            changes.append((line, move["to"], detail))
            if status == RowStatus.UPLOADED:
                uploaded.append((key, data_hash, line))
        self.dialect.confirm_rows(conn, batch.file_id, str(RowStatus.QUEUED), changes)
        self.remember_codes(conn, data_key, batch.file_id, uploaded)

    def complete_sync(self, batch: BatchInfo, data_key: str, keys: Sequence[str], changed: Collection[str]) -> None:
        """Record a sync answer: listed codes are uploaded, the others not affected (or uploaded, if ambiguous)."""
        outcome = {}
        for key in keys:
            if key in changed:
                outcome[key] = (str(RowStatus.UPLOADED), "")
            elif batch.ambiguous:
                outcome[key] = (str(RowStatus.UPLOADED), AMBIGUOUS_UPLOADED)
            elif batch.interrupted:
                outcome[key] = (str(RowStatus.NOT_AFFECTED), RESENT_NOT_AFFECTED)
            else:
                outcome[key] = (str(RowStatus.NOT_AFFECTED), NOT_AFFECTED)
        with self.begin() as conn:
            self._finish(conn, batch, BatchState.DONE, failures=0)
            self._confirm(conn, batch, data_key, outcome)

    def submit_task(self, batch: BatchInfo, *, task_id: str, submitted_at: float, poll_at: float) -> None:
        """Store the task id of an async job, committed at once: from now on it is polled, never sent again."""
        with self.begin() as conn:
            self.guard(
                conn,
                "batches",
                "UPDATE batches SET state=:submitted, task_id=:task_id, submitted_at=:submitted_at, "
                "next_attempt_at=:poll_at, failures=0 WHERE id=:id",
                {
                    "submitted": str(BatchState.SUBMITTED),
                    "task_id": task_id,
                    "submitted_at": submitted_at,
                    "poll_at": poll_at,
                    "id": batch.id,
                },
                sources(BATCH_TRANSITIONS, BatchState.SUBMITTED),
            )

    def reschedule_poll(
        self, batch: BatchInfo, *, at: float, task_state: str | None, error: str | None, polled_at: float | None
    ) -> None:
        """Poll a task again at `at`; an error counts against the batch, an answer resets the count.

        `polled_at` (None: the request did not count, e.g. the token was refused) is when the task was last
        asked about: after a restart, the task's age is what the processes before measured up to then.
        """
        with self.begin() as conn:
            self.guard(
                conn,
                "batches",
                "UPDATE batches SET next_attempt_at=:at, task_state=coalesce(:task_state, task_state), "
                "last_error=coalesce(:error, last_error), failures=(failures+1)*:counts, "
                "polled_at=coalesce(:polled_at, polled_at) WHERE id=:id",
                {
                    "at": at,
                    "task_state": task_state,
                    "error": error,
                    "counts": 0 if error is None else 1,  # an answer resets the count
                    "polled_at": polled_at,
                    "id": batch.id,
                },
                [str(BatchState.SUBMITTED)],
            )

    def complete_task(self, batch: BatchInfo, data_key: str, *, task_state: str, codes_affected: int | None) -> None:
        """A task completed: every row of its job is uploaded."""
        with self.begin() as conn:
            self._finish(conn, batch, BatchState.DONE, task_state=task_state, codes_affected=codes_affected)
            # Every open row of the job the same way, in SQL over the batch's lines: no row through Python (a job
            # holds up to 10,000 rows).
            self.upload_batch(conn, data_key, batch.file_id, batch.id)

    def requeue(self, batch: BatchInfo, *, at: float, error: str, ambiguous: bool, count_failure: bool) -> None:
        """Put a batch back in the queue for another attempt at epoch time `at`."""
        with self.begin() as conn:
            self.guard(
                conn,
                "batches",
                "UPDATE batches SET state=:queued, next_attempt_at=:at, last_error=:error, "
                "ambiguous=(ambiguous OR :ambiguous), failures=failures+:failure WHERE id=:id",
                {
                    "queued": _QUEUED,
                    "at": at,
                    "error": error,
                    "ambiguous": ambiguous,
                    "failure": 1 if count_failure else 0,
                    "id": batch.id,
                },
                sources(BATCH_TRANSITIONS, BatchState.QUEUED),
            )

    def fail_batch(self, batch: BatchInfo, *, status: RowStatus, detail: str, task_state: str | None = None) -> None:
        """Give a batch up: its open rows become `status` (failed or rejected) with the detail."""
        with self.begin() as conn:
            self._finish(conn, batch, BatchState.FAILED, last_error=detail, task_state=task_state or batch.task_state)
            conn.execute(
                sql(
                    "UPDATE rows SET status=:to, detail=:detail "
                    f"WHERE file_id=:file_id AND {self.dialect.row_is_frm} AND {self.dialect.batch_lines}"
                ),
                {
                    **row_move(RowStatus.QUEUED, status),
                    "detail": detail,
                    "file_id": batch.file_id,
                    "batch_id": batch.id,
                },
            )

    def split_batch(
        self, batch: BatchInfo, parts: Sequence[Sequence[int]], *, rejected: dict[int, str], ambiguous: bool
    ) -> list[int]:
        """Replace a sent batch by smaller ones (same kind and data), rejecting the rows in `rejected` (line: why).

        The new batches are `ambiguous` when the refused request may have been applied in part.
        """
        now = self.now()
        with self.begin() as conn:
            self._finish(conn, batch, BatchState.SPLIT)
            if rejected:
                move = row_move(RowStatus.QUEUED, RowStatus.REJECTED)
                conn.execute(
                    sql(
                        "UPDATE rows SET status=:to, detail=:detail "
                        f"WHERE file_id=:f AND line=:l AND {self.dialect.row_is_frm}"
                    ),
                    [{**move, "detail": detail, "f": batch.file_id, "l": line} for line, detail in rejected.items()],
                )
            start = conn.execute(
                sql("SELECT max(seq) FROM batches WHERE file_id=:id"), {"id": batch.file_id}
            ).scalar_one()
            children = []
            for seq, lines in enumerate((p for p in parts if p), start=start + 1):
                child = int(
                    conn.execute(
                        sql(_NEW_BATCH),
                        {
                            "file_id": batch.file_id,
                            "seq": seq,
                            "kind": batch.kind,
                            "state": _QUEUED,
                            "size": len(lines),
                            "ambiguous": ambiguous or batch.ambiguous,
                            "now": now,
                            "data_hash": batch.data_hash,
                            "reference": f"{batch.reference} part {seq}" if batch.reference else None,
                            "parent_id": batch.id,
                        },
                    ).scalar_one()
                )
                self.dialect.bulk_insert(conn, "batch_rows", ("batch_id", "line"), [(child, x) for x in lines])
                conn.execute(
                    sql("UPDATE rows SET batch_id=:b WHERE file_id=:f AND line=:l AND status=:queued"),
                    [{"b": child, "f": batch.file_id, "l": line, "queued": str(RowStatus.QUEUED)} for line in lines],
                )
                children.append(child)
        return children

    def batch_totals(self, file_id: int) -> tuple[int, int, int]:
        """A file's planned batches, the upload calls made (task polls not counted), and the calls beyond the plan.

        Extra calls come from retries and from splitting refused or timing-out batches.
        """
        with self.connect() as conn:
            planned, calls = conn.execute(
                sql(
                    "SELECT coalesce(sum(CASE WHEN parent_id IS NULL THEN 1 ELSE 0 END), 0), "
                    "coalesce(sum(attempts), 0) FROM batches WHERE file_id=:id"
                ),
                {"id": file_id},
            ).one()
        return int(planned), int(calls), int(calls) - int(planned)

    def tasks(self, file_id: int) -> list[dict[str, Any]]:
        """The async tasks of a file with their last known state."""
        with self.connect() as conn:
            rows = conn.execute(
                sql(
                    "SELECT seq, task_id, task_state, codes_affected, size, state, reference FROM batches "
                    "WHERE file_id=:id AND kind=:kind ORDER BY seq"
                ),
                {"id": file_id, "kind": "async"},
            ).all()
        return [
            {
                "batch": seq,
                "task_id": task_id,
                "state": task_state,
                "codes_affected": affected,
                "codes_sent": size,
                "batch_state": state,
                "reference": reference,
            }
            for seq, task_id, task_state, affected, size, state, reference in rows
        ]

    def recover(self, now: float, *, longest_wait: float) -> dict[str, int]:
        """After a restart, settle what the process before left in flight, and clamp its schedule to `now`.

        A batch caught `sending` goes back to the queue and is sent again at once, however often this happened:
        a sync batch sets the same values again (harmless), an async batch without a stored task id creates its
        job again with the same reference. Nothing is ever assumed applied. Async batches with a stored task id
        are `submitted`, not `sending`: they are polled, never submitted again.

        Times in the ledger are the earlier process's clock: after a wall-clock jump (an NTP step, a resumed VM)
        they may lie far ahead or behind. Due times are clamped to at most `longest_wait` from now, and a task's
        age is what earlier processes measured up to their last poll (downtime does not count).
        """
        with self.begin() as conn:
            resent = conn.execute(
                sql(
                    "UPDATE batches SET state=:queued, interrupted=interrupted+1, next_attempt_at=:now "
                    "WHERE state=:sending"
                ),
                {"queued": _QUEUED, "sending": str(BatchState.SENDING), "now": now},
            ).rowcount
            clamped = conn.execute(
                sql(
                    "UPDATE batches SET next_attempt_at=:latest WHERE state IN :due AND next_attempt_at>:latest", "due"
                ),
                {"latest": now + longest_wait, "due": _DUE},
            ).rowcount
            # The task's age so far (polled_at - submitted_at, never negative) counted back from now.
            conn.execute(
                sql(
                    "UPDATE batches SET submitted_at=:now - CASE WHEN polled_at > submitted_at "
                    "THEN polled_at - submitted_at ELSE 0 END, polled_at=NULL WHERE state=:submitted"
                ),
                {"now": now, "submitted": str(BatchState.SUBMITTED)},
            )
            # A new process starts sending.
            conn.execute(sql("DELETE FROM meta WHERE key=:key"), {"key": UPLOADS_PAUSED})
        return {"batches_requeued": resent, "schedules_clamped": clamped}
