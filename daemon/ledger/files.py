"""The ledger's files: claimed, read, reported, moved; and the overview that `status` prints."""

import json
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from daemon.ledger.base import FILE_COLUMNS, UPLOADS_PAUSED, FileInfo, LedgerBase, count_rows, file_info, sql
from daemon.ledger.layout import FileLayout
from daemon.states import FILE_TRANSITIONS, BatchState, FileState, Outcome, RowStatus, sources

# Rows deleted per transaction by prune (about 0.1 s each), and the pause after each: a writer waiting for the lock
# polls at most every 0.1 s (SQLite's busy handler), so without the pause prune would take the lock again before a
# running service's next poll and starve it for the whole prune.
PRUNE_CHUNK = 50_000
PRUNE_PAUSE = 0.1
# The condition every delete of prune carries: its file is still done, and finished before the cutoff.
_STILL_PRUNABLE = " AND EXISTS (SELECT 1 FROM files WHERE id=:file_id AND state=:done AND finished_at < :before)"


class FileStore(LedgerBase):
    """Files and their life: received, active, reporting, done."""

    def add_file(
        self,
        *,
        sha256: str,
        name: str,
        path: str,
        size: int,
        data_key: str,
        mode: str,
        path_for: Callable[[int], str] | None = None,
    ) -> int:
        """Record a file in state `received`; `path_for(id)`, if given, names its path from its new id."""
        with self.begin() as conn:
            file_id = int(
                conn.execute(
                    sql(
                        "INSERT INTO files (sha256, name, path, size, state, data_key, mode, layout, received_at, "
                        "claimed_by) VALUES (:sha256, :name, :path, :size, :state, :data_key, :mode, '{}', :now, "
                        ":claimed_by) RETURNING id"
                    ),
                    {
                        "sha256": sha256,
                        "name": name,
                        "path": path,
                        "size": size,
                        "state": str(FileState.RECEIVED),
                        "data_key": data_key,
                        "mode": mode,
                        "now": self.now(),
                        "claimed_by": self.instance,
                    },
                ).scalar_one()
            )
            if path_for is not None:
                conn.execute(
                    sql("UPDATE files SET path=:path WHERE id=:id"), {"path": path_for(file_id), "id": file_id}
                )
        return file_id

    def file(self, file_id: int) -> FileInfo:
        """One file's record."""
        with self.connect() as conn:
            row = conn.execute(sql(f"SELECT {FILE_COLUMNS} FROM files WHERE id=:id"), {"id": file_id}).one()
        return file_info(row)

    def file_counts(self, file_id: int) -> dict[str, int]:
        """A finished file's rows by status, as kept with its record ({} before its rows are all final)."""
        with self.connect() as conn:
            stored = conn.execute(sql("SELECT counts FROM files WHERE id=:id"), {"id": file_id}).scalar_one()
        return {str(k): int(v) for k, v in json.loads(stored).items()} if stored else {}

    def files(self, states: Iterable[FileState]) -> list[FileInfo]:
        """The files in any of these states, oldest first."""
        wanted = [str(s) for s in states]
        with self.connect() as conn:
            rows = conn.execute(
                sql(f"SELECT {FILE_COLUMNS} FROM files WHERE state IN :states ORDER BY id", "states"),
                {"states": wanted},
            ).all()
        return [file_info(r) for r in rows]

    def find_files(self, name_or_sha: str) -> list[FileInfo]:
        """Files whose name, or SHA-256 (or its prefix of 8+ characters), is this."""
        prefix = name_or_sha.lower() + "%" if len(name_or_sha) >= 8 else None  # NULL: LIKE matches nothing
        with self.connect() as conn:
            rows = conn.execute(
                sql(f"SELECT {FILE_COLUMNS} FROM files WHERE name=:name OR sha256 LIKE :prefix ORDER BY id"),
                {"name": name_or_sha, "prefix": prefix},
            ).all()
        return [file_info(r) for r in rows]

    def processed(self, sha256: str, *, other_than: int) -> FileInfo | None:
        """An earlier file with the same bytes that was (or is being) processed, if any."""
        refused = (str(Outcome.FAILED), str(Outcome.DUPLICATE))
        with self.connect() as conn:
            row = conn.execute(
                sql(
                    f"SELECT {FILE_COLUMNS} FROM files WHERE sha256=:sha256 AND id<>:id "
                    "AND (outcome IS NULL OR outcome NOT IN :refused) ORDER BY id LIMIT 1",
                    "refused",
                ),
                {"sha256": sha256, "id": other_than, "refused": list(refused)},
            ).first()
        return file_info(row) if row else None

    def transition_file(
        self, file_id: int, to: FileState, *, counts: Mapping[RowStatus, int] | None = None, **values: Any
    ) -> None:
        """Move a file to state `to` (guarded by FILE_TRANSITIONS), setting other columns with it.

        `counts`, the file's rows by status once they are all final (reporting), are kept with the record; a file
        done without them has its rows counted then (a pass over them)."""
        values = {k: v.to_json() if isinstance(v, FileLayout) else v for k, v in values.items()}
        with self.begin() as conn:
            if to is FileState.DONE:
                values.setdefault("finished_at", self.now())
                stored = conn.execute(sql("SELECT counts FROM files WHERE id=:id"), {"id": file_id}).scalar_one()
                if stored is None and counts is None:
                    counts = count_rows(conn, file_id)
            if counts is not None:
                values["counts"] = json.dumps({str(s): int(n) for s, n in counts.items()}, sort_keys=True)
            sets = ", ".join(f"{k}=:v_{k}" for k in ("state", *values))
            self.guard(
                conn,
                "files",
                f"UPDATE files SET {sets} WHERE id=:id",
                {"v_state": str(to), **{f"v_{k}": v for k, v in values.items()}, "id": file_id},
                sources(FILE_TRANSITIONS, to),
            )

    def set_file(self, file_id: int, **values: Any) -> None:
        """Set columns of a file that carry no state (the report stem, the destination, the layout)."""
        values = {k: v.to_json() if isinstance(v, FileLayout) else v for k, v in values.items()}
        sets = ", ".join(f"{k}=:v_{k}" for k in values)
        with self.begin() as conn:
            conn.execute(
                sql(f"UPDATE files SET {sets} WHERE id=:id"),
                {**{f"v_{k}": v for k, v in values.items()}, "id": file_id},
            )

    def discard_rows(self, file_id: int) -> None:
        """Drop the rows recorded so far for a file that turned out unreadable."""
        with self.begin() as conn:
            conn.execute(sql("DELETE FROM rows WHERE file_id=:id"), {"id": file_id})

    def forget_file(self, file_id: int) -> None:
        """Drop a file caught mid-intake, with its rows, so that the next scan takes it afresh."""
        with self.begin() as conn:
            conn.execute(sql("DELETE FROM rows WHERE file_id=:id"), {"id": file_id})
            self._drop_batches(conn, file_id)
            conn.execute(
                sql("DELETE FROM files WHERE id=:id AND state=:state"),
                {"id": file_id, "state": str(FileState.RECEIVED)},
            )

    def prune(self, finished_before: str, *, chunk: int = PRUNE_CHUNK, pause: float = PRUNE_PAUSE) -> tuple[int, int]:
        """Drop the rows and batches of files done before this ISO time; returns (files, rows) dropped.

        What idempotency needs stays: every file's record (its SHA-256 and its counts) and, in `codes`, the last
        data uploaded per code (all that skip_uploaded reads). At most `chunk` rows (or batches holding that many)
        go per transaction, each a short one of its own followed by `pause` seconds, so a running service's writes
        wait for one chunk at most and the WAL stays small. Each chunk checks again that its file is still done and
        old (`retry` may have reopened it meanwhile). Interrupted, it goes on where it stopped the next time.
        """
        ids = [file_id for file_id, _name, _rows in self.prunable(finished_before)]
        dropped = 0
        for file_id in ids:
            while deleted := self._prune_rows(file_id, finished_before, chunk):
                dropped += deleted
                time.sleep(pause)
            while self._prune_batches(file_id, finished_before, chunk):
                time.sleep(pause)
        return len(ids), dropped

    def _prune_rows(self, file_id: int, finished_before: str, chunk: int) -> int:
        """Drop the file's first `chunk` rows (a range of its primary key) if it is still prunable."""
        with self.begin() as conn:
            return int(
                conn.execute(
                    sql(
                        "DELETE FROM rows WHERE file_id=:file_id AND line <= (SELECT max(line) FROM "
                        "(SELECT line FROM rows WHERE file_id=:file_id ORDER BY line LIMIT :chunk) AS head)"
                        + _STILL_PRUNABLE
                    ),
                    {"file_id": file_id, "chunk": chunk, "done": str(FileState.DONE), "before": finished_before},
                ).rowcount
            )

    def _prune_batches(self, file_id: int, finished_before: str, chunk: int) -> int:
        """Drop the file's first batches, with their membership, up to about `chunk` rows; returns how many."""
        last = None
        carried = 0
        with self.connect() as conn:
            for batch_id, size in conn.execute(
                sql("SELECT id, size FROM batches WHERE file_id=:file_id ORDER BY id LIMIT :chunk"),
                {"file_id": file_id, "chunk": chunk},
            ):
                last, carried = batch_id, carried + size
                if carried >= chunk:
                    break
        if last is None:
            return 0
        params = {"file_id": file_id, "last": last, "done": str(FileState.DONE), "before": finished_before}
        with self.begin() as conn:
            conn.execute(
                sql(
                    "DELETE FROM batch_rows WHERE batch_id IN (SELECT id FROM batches WHERE file_id=:file_id "
                    "AND id <= :last)" + _STILL_PRUNABLE
                ),
                params,
            )
            return int(
                conn.execute(
                    sql("DELETE FROM batches WHERE file_id=:file_id AND id <= :last" + _STILL_PRUNABLE), params
                ).rowcount
            )

    def prunable(self, finished_before: str) -> list[tuple[int, str, int]]:
        """What prune(finished_before) would drop: (file id, name, rows recorded when it finished), oldest first."""
        with self.connect() as conn:
            found = conn.execute(
                sql(
                    "SELECT id, name, counts FROM files WHERE state=:done AND finished_at < :before "
                    "AND counts IS NOT NULL AND (EXISTS (SELECT 1 FROM rows r WHERE r.file_id=files.id) "
                    "OR EXISTS (SELECT 1 FROM batches b WHERE b.file_id=files.id)) ORDER BY id"
                ),
                {"done": str(FileState.DONE), "before": finished_before},
            ).all()
        return [(int(i), str(name), sum(json.loads(counts).values())) for i, name, counts in found]

    @staticmethod
    def _drop_batches(conn: Connection, file_id: int) -> None:
        conn.execute(
            sql("DELETE FROM batch_rows WHERE batch_id IN (SELECT id FROM batches WHERE file_id=:id)"), {"id": file_id}
        )
        conn.execute(sql("DELETE FROM batches WHERE file_id=:id"), {"id": file_id})

    def live_row_counts(self) -> dict[int, dict[str, int]]:
        """Rows by status of each file not done yet: one pass over those files' rows (the done ones keep their
        counts), read once by `status` for its totals and its progress lines."""
        live: dict[int, dict[str, int]] = {}
        with self.connect() as conn:
            for file_id, status, n in conn.execute(
                sql(
                    "SELECT file_id, status, count(*) FROM rows "
                    "WHERE file_id IN (SELECT id FROM files WHERE state<>:done) GROUP BY file_id, status"
                ),
                {"done": str(FileState.DONE)},
            ):
                live.setdefault(int(file_id), {})[str(status)] = int(n)
        return live

    def overview(self, *, recent: int = 10, live: dict[int, dict[str, int]] | None = None) -> dict[str, Any]:
        """What the ledger holds, for `scm-daemon status`; `live` is live_row_counts() if the caller has it."""
        live = self.live_row_counts() if live is None else live
        done = str(FileState.DONE)
        with self.connect() as conn:

            def counts(statement: str, **params: Any) -> dict[str, int]:
                return {str(k): int(n) for k, n in conn.execute(sql(statement), params).all()}

            files = counts("SELECT coalesce(outcome, state), count(*) FROM files GROUP BY coalesce(outcome, state)")
            # Done files carry their counts; only the rows of files still at work are counted here.
            rows: dict[str, int] = {}
            stored_counts = conn.execute(
                sql("SELECT counts FROM files WHERE state=:done AND counts IS NOT NULL"), {"done": done}
            )
            for (stored,) in stored_counts:
                for status, n in json.loads(stored).items():
                    rows[status] = rows.get(status, 0) + n
            for by_status in live.values():
                for status, n in by_status.items():
                    rows[status] = rows.get(status, 0) + n
            batches = counts("SELECT state, count(*) FROM batches GROUP BY state")
            latest = conn.execute(
                sql(
                    "SELECT id, name, state, outcome, received_at, finished_at, coalesce(delivery_error, error) "
                    "FROM files ORDER BY id DESC LIMIT :n"
                ),
                {"n": recent},
            ).all()
            undelivered = conn.execute(
                sql(
                    "SELECT name, delivery_error FROM files WHERE state=:reporting AND delivery_error IS NOT NULL "
                    "ORDER BY id LIMIT :n"
                ),
                {"reporting": str(FileState.REPORTING), "n": recent},
            ).all()
            errors = conn.execute(
                sql(
                    "SELECT f.name, b.seq, b.state, b.attempts, b.last_error FROM batches b "
                    "JOIN files f ON f.id=b.file_id WHERE b.last_error IS NOT NULL ORDER BY b.id DESC LIMIT :n"
                ),
                {"n": recent},
            ).all()
            tasks = conn.execute(
                sql(
                    "SELECT f.name, b.seq, b.task_id, b.task_state FROM batches b JOIN files f ON f.id=b.file_id "
                    "WHERE b.state=:submitted ORDER BY b.id"
                ),
                {"submitted": str(BatchState.SUBMITTED)},
            ).all()
            retry_at = conn.execute(
                sql("SELECT min(next_attempt_at) FROM batches WHERE state=:queued AND failures > 0"),
                {"queued": str(BatchState.QUEUED)},
            ).scalar_one()
            now = self.dialect.epoch_now
            leader = conn.execute(
                sql(f"SELECT holder, expires_at - {now} FROM leases WHERE name='work' AND expires_at > {now}")
            ).first()
        return {
            "ledger": self.target.shown,
            "backend": self.dialect.name,
            "schema_version": self.schema_version,
            # The instance doing the work (daemon.lease), and for how many seconds more unless it renews.
            "leader": {"instance": leader[0], "lease_left": round(float(leader[1]), 1)} if leader else None,
            "uploads_paused": self.get_meta(UPLOADS_PAUSED),
            "files": files,
            "rows": rows,
            "batches": batches,
            "in_flight": batches.get(str(BatchState.SENDING), 0),
            "tasks_in_flight": [{"file": n, "batch": s, "task_id": t, "state": st} for n, s, t, st in tasks],
            "next_retry_at": datetime.fromtimestamp(retry_at, UTC).isoformat(timespec="seconds") if retry_at else None,
            "recent_files": [
                {"id": i, "name": n, "state": st, "status": o, "received_at": r, "finished_at": fin, "error": e}
                for i, n, st, o, r, fin, e in latest
            ],
            "undelivered": [{"file": n, "error": e} for n, e in undelivered],
            "last_errors": [
                {"file": n, "batch": seq, "state": st, "attempts": a, "error": e} for n, seq, st, a, e in errors
            ],
        }
