"""The ledger's figures for /metrics and for retention: cheap reads that never scan a file's rows."""

from dataclasses import dataclass

from daemon.ledger.base import FILE_COLUMNS, FileInfo, LedgerBase, file_info, sql
from daemon.states import OPEN_BATCH_STATES, FileState


@dataclass(frozen=True)
class LedgerFigures:
    """What /metrics shows from the ledger at one scrape."""

    files: dict[str, int]  # by status: the outcome of done files, else the state (received, active, reporting)
    rows: dict[str, int]  # final statuses of the rows of done files (from their stored counts)
    rows_queued: int  # rows in batches not final yet: waiting to be sent, retried, or confirmed by their task
    oldest_waiting_since: str | None  # ISO time: the oldest open batch's creation, or a file still being read


class FigureStore(LedgerBase):
    """Counts for /metrics, and the records retention looks at."""

    def figures(self) -> LedgerFigures:
        """The ledger's figures: every query reads the files table or the open batches (through their state index),
        so a scrape costs the files and the work still open, never the millions of rows already final."""
        done = str(FileState.DONE)
        with self.connect() as conn:
            files = {
                str(k): int(n)
                for k, n in conn.execute(
                    sql(
                        "SELECT CASE WHEN state=:done THEN coalesce(outcome, state) ELSE state END, count(*) "
                        "FROM files GROUP BY CASE WHEN state=:done THEN coalesce(outcome, state) ELSE state END"
                    ),
                    {"done": done},
                )
            }
            # A done file's row counts are stored with it (and outlive `prune`); summed by the database's JSON.
            rows = {
                str(k): int(n)
                for k, n in conn.execute(
                    sql(
                        "SELECT j.key, sum(CAST(j.value AS INTEGER)) FROM files, "
                        f"{self.dialect.json_pairs('files.counts', 'j')} "
                        "WHERE files.state=:done AND files.counts IS NOT NULL GROUP BY j.key"
                    ),
                    {"done": done},
                )
            }
            # From the batches, not the rows: counting open rows, even through the partial index, looks up every
            # open row (0.4 s per 500,000), while an open batch holds up to 1000 of them.
            queued, oldest_batch = conn.execute(
                sql(
                    "SELECT coalesce(sum(size), 0), min(created_at) FROM batches"
                    f"{self.dialect.indexed_by('batches_due')} WHERE state IN :open",
                    "open",
                ),
                {"open": sorted(str(s) for s in OPEN_BATCH_STATES)},
            ).one()
            oldest_read = conn.execute(
                sql("SELECT min(received_at) FROM files WHERE state=:received"), {"received": str(FileState.RECEIVED)}
            ).scalar_one()
        waiting = [t for t in (oldest_batch, oldest_read) if t]
        return LedgerFigures(files, rows, int(queued), min(waiting) if waiting else None)

    def delivered_before(self, finished_before: str) -> list[FileInfo]:
        """Done files finished before this ISO time whose input was moved (destination fixed), oldest first."""
        with self.connect() as conn:
            found = conn.execute(
                sql(
                    f"SELECT {FILE_COLUMNS} FROM files WHERE state=:done AND destination IS NOT NULL "
                    "AND finished_at < :before ORDER BY id"
                ),
                {"done": str(FileState.DONE), "before": finished_before},
            ).all()
        return [file_info(r) for r in found]

    def known_sources(self) -> dict[str, set[str]]:
        """Every file the ledger holds, as SHA-256 -> the names it was dropped under (a duplicate shares one)."""
        known: dict[str, set[str]] = {}
        with self.connect() as conn:
            for sha256, name in conn.execute(sql("SELECT sha256, name FROM files")):
                known.setdefault(str(sha256), set()).add(str(name))
        return known
