"""The ledger's history for the dashboard: the latest files with their counts, and rows by outcome per day.

Both read the files table only (one record per file, with the counts fixed when it was done), never the rows:
the dashboard asks every 30 s, and a ledger may hold ten million rows.
"""

import json
from dataclasses import dataclass

from daemon.ledger.base import LedgerBase, sql
from daemon.states import FileState, Outcome


@dataclass(frozen=True)
class FileLine:
    """One file as the dashboard lists it."""

    id: int
    name: str
    state: FileState
    outcome: Outcome | None
    received_at: str
    finished_at: str | None
    reason: str | None  # why it failed, what it duplicates, or why its reports are not delivered yet
    counts: dict[str, int]  # rows by status, once the file is done ({} before)
    report_base: str | None  # the stem of its reports in the outbox, once chosen


class HistoryStore(LedgerBase):
    """What the dashboard shows of the past."""

    def recent_files(self, limit: int) -> list[FileLine]:
        """The `limit` most recently received files, newest first (a walk back along the primary key)."""
        with self.connect() as conn:
            rows = conn.execute(
                sql(
                    "SELECT id, name, state, outcome, received_at, finished_at, coalesce(delivery_error, error), "
                    "counts, report_base FROM files ORDER BY id DESC LIMIT :n"
                ),
                {"n": limit},
            ).all()
        return [
            FileLine(
                id=i,
                name=name,
                state=FileState(state),
                outcome=Outcome(outcome) if outcome else None,
                received_at=received,
                finished_at=finished,
                reason=reason,
                counts={str(k): int(v) for k, v in json.loads(counts).items()} if counts else {},
                report_base=base,
            )
            for i, name, state, outcome, received, finished, reason, counts, base in rows
        ]

    def daily_outcomes(self, since: str) -> dict[str, dict[str, int]]:
        """Rows by status per day (`YYYY-MM-DD` of the ledger's clock) of the files done since this ISO time.

        A file's rows count on the day it was done. From the counts stored with each done file: the cost is the
        files of the period, not their rows.
        """
        days: dict[str, dict[str, int]] = {}
        with self.connect() as conn:
            result = conn.execute(
                sql(
                    "SELECT substr(finished_at, 1, 10), counts FROM files "
                    "WHERE state=:done AND finished_at >= :since AND counts IS NOT NULL"
                ),
                {"done": str(FileState.DONE), "since": since},
            )
            for day, counts in result:
                totals = days.setdefault(day, {})
                for status, n in json.loads(counts).items():
                    totals[status] = totals.get(status, 0) + int(n)
        return days
