"""What every part of the ledger shares: the engine, the clock, the records, and the guarded transition."""

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Result, Table, TextClause, bindparam, text
from sqlalchemy.exc import OperationalError

from daemon import schema
from daemon.ledger.dialect import LedgerTarget, dialect_of, ledger_target, open_engine, unavailable
from daemon.ledger.layout import FileLayout
from daemon.ledger.migrate import migrate
from daemon.states import ROW_TRANSITIONS, BatchState, FileState, Outcome, RowStatus

Clock = Callable[[], datetime]
UPLOADS_PAUSED = "uploads_paused"  # meta key: why the running service sends nothing right now


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
    layout: FileLayout
    error: str | None
    report_base: str | None
    destination: str | None
    received_at: str
    finished_at: str | None
    claimed_by: str | None = None  # the instance that alone moves it and writes its reports


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
    data_hash: str | None
    reference: str | None
    task_id: str | None
    task_state: str | None
    submitted_at: float | None
    interrupted: int  # restarts that caught it `sending`


def columns_of(table: Table, record: type) -> str:
    """The SELECT list that reads a record: its fields in order, each a column of the table (else ImportError)."""
    names = [f.name for f in fields(record)]
    missing = [name for name in names if name not in table.c]
    if missing:
        raise ImportError(f"{record.__name__} names {missing}, not columns of {table.name} (daemon.schema)")
    return ", ".join(names)


FILE_COLUMNS = columns_of(schema.files, FileInfo)
BATCH_COLUMNS = columns_of(schema.batches, BatchInfo)


def file_info(row: Sequence[Any]) -> FileInfo:
    """A FileInfo from a row of FILE_COLUMNS."""
    values = list(row)
    values[5] = FileState(values[5])
    values[6] = Outcome(values[6]) if values[6] else None
    values[9] = FileLayout.from_json(values[9])
    return FileInfo(*values)


def batch_info(row: Sequence[Any]) -> BatchInfo:
    """A BatchInfo from a row of BATCH_COLUMNS."""
    values = list(row)
    values[4] = BatchState(values[4])
    values[8] = bool(values[8])
    return BatchInfo(*values)


STREAM_ROWS = 5_000  # rows fetched at a time by a read over a whole file


def streamed(statement: TextClause) -> TextClause:
    """A read over a whole file, fetched STREAM_ROWS at a time: on PostgreSQL a server-side cursor (psycopg would
    otherwise hold every row of the answer in memory); SQLite steps through it anyway."""
    return statement.execution_options(yield_per=STREAM_ROWS)


def each_row(result: Result[Any]) -> Iterator[Any]:  # each a Row, unpacked by the caller as its columns
    """The rows of a streamed result, fetched STREAM_ROWS at a time: iterated directly, SQLAlchemy fetches them one
    by one (fetchone for each of a million rows of a report: 0.7 s more than a partition at a time)."""
    for part in result.partitions(STREAM_ROWS):
        yield from part


@lru_cache(maxsize=1024)
def sql(statement: str, *lists: str) -> TextClause:
    """A statement with named parameters (`:name`); those named in `lists` take a list (`IN :name`)."""
    clause = text(statement)
    return clause.bindparams(*(bindparam(name, expanding=True) for name in lists)) if lists else clause


def states(*values: StrEnum) -> list[str]:
    """Enum members as the plain strings the ledger stores."""
    return [str(v) for v in values]


def row_move(frm: RowStatus, to: RowStatus) -> dict[str, str]:
    """The parameters `frm` and `to` of a row's status change, once ROW_TRANSITIONS allows it (else StateConflict).

    Every UPDATE of rows.status sets `status=:to` only `WHERE status=:frm`: a row elsewhere is left as it is.
    """
    if to not in ROW_TRANSITIONS[frm]:
        raise StateConflict(f"rows: {frm} -> {to} is not a transition")
    return {"frm": str(frm), "to": str(to)}


class LedgerBase:
    """The connection and the helpers that every part of the ledger uses."""

    def __init__(self, ledger: Path | str | LedgerTarget, *, clock: Clock = utcnow) -> None:
        self.target = ledger_target(ledger)
        self.clock = clock
        self.engine = open_engine(self.target)
        self.dialect = dialect_of(self.engine)
        try:
            self.schema_version = migrate(self.engine)
        except OperationalError as exc:
            self.engine.dispose()
            if self.target.sqlite:
                raise
            raise unavailable(self.target, exc) from None  # the server refused or could not be reached
        except BaseException:
            self.engine.dispose()
            raise
        self.instance: str | None = None  # host:pid:start of the leader that claims the files it adds (daemon.lease)
        self._group: Connection | None = None  # the open transaction of grouped(), in the thread that opened it
        self._group_thread = 0

    def _in_group(self) -> Connection | None:
        return self._group if self._group is not None and self._group_thread == threading.get_ident() else None

    def begin(self) -> AbstractContextManager[Connection]:
        """A connection in a transaction: its own, committed at the end, or the one grouped() holds open."""
        return self._group_or(self.engine.begin)

    def connect(self) -> AbstractContextManager[Connection]:
        """A connection for reads; inside grouped() the group's, so that reads see the group's own writes."""
        return self._group_or(self.engine.connect)

    @contextmanager
    def _group_or(self, fresh: Callable[[], AbstractContextManager[Connection]]) -> Iterator[Connection]:
        group = self._in_group()
        if group is not None:
            yield group
            return
        with fresh() as conn:
            yield conn

    @contextmanager
    def grouped(self) -> Iterator[None]:
        """Make every write in the block one transaction (one commit, one fsync): all of it is recorded, or none.

        Used to record the answers that arrived together. Nested use joins the outer group.
        """
        if self._in_group() is not None:
            yield
            return
        with self.engine.begin() as conn:
            self._group, self._group_thread = conn, threading.get_ident()
            try:
                yield
            finally:
                self._group = None

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def now(self) -> str:
        """The injected clock's time in ISO 8601."""
        return self.clock().isoformat(timespec="milliseconds")

    def set_meta(self, key: str, value: str | None) -> None:
        """Set (or, with None, remove) a fact about the service that other processes may read, e.g. a pause."""
        with self.begin() as conn:
            if value is None:
                conn.execute(sql("DELETE FROM meta WHERE key=:key"), {"key": key})
            else:
                put_meta(conn, key, value)

    def get_meta(self, key: str) -> str | None:
        """A fact set by set_meta, if any."""
        with self.connect() as conn:
            row = conn.execute(sql("SELECT value FROM meta WHERE key=:key"), {"key": key}).first()
        return None if row is None else str(row[0])

    def guard(self, conn: Connection, table: str, where: str, params: dict[str, Any], allowed: list[str]) -> None:
        """Run an UPDATE that must match exactly one record in one of the `allowed` states, or raise."""
        result = conn.execute(sql(f"{where} AND state IN :allowed", "allowed"), {**params, "allowed": allowed})
        if result.rowcount != 1:
            raise StateConflict(f"{table}: transition matched {result.rowcount} records ({where}, {params})")


def put_meta(conn: Connection, key: str, value: str) -> None:
    """Set a meta fact in this transaction (the same upsert on both backends)."""
    conn.execute(
        sql("INSERT INTO meta (key, value) VALUES (:key, :value) ON CONFLICT (key) DO UPDATE SET value=excluded.value"),
        {"key": key, "value": value},
    )


def count_rows(conn: Connection, file_id: int) -> dict[RowStatus, int]:
    """A file's rows by status, counted (a pass over them)."""
    rows = conn.execute(sql("SELECT status, count(*) FROM rows WHERE file_id=:id GROUP BY status"), {"id": file_id})
    return {RowStatus(s): int(n) for s, n in rows}
