"""A whole ledger copied into a new, empty one (`scm-daemon ledger copy`): SQLite to PostgreSQL, or any pair.

Every table of daemon.schema is copied as it is, ids included, so that the per-code upload history (`codes`), the
files' SHA-256 and the rows keep recognising what was uploaded already: idempotency survives the move. Tables go in
dependency order, each read in chunks (a server-side cursor on PostgreSQL, SQLite's own stepping cursor) and
written by the dialect's bulk insert (COPY on PostgreSQL), all in one transaction on the target: a failure leaves it
as empty as it was. Both ledgers are first brought to the current schema by the normal migration; the source is
read, never written otherwise.
"""

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, Row, Table, inspect, select, text
from sqlalchemy.exc import DBAPIError

from daemon import schema
from daemon.ledger.dialect import Dialect, LedgerTarget, LedgerTargetError, dialect_of, open_engine, unavailable
from daemon.ledger.migrate import SCHEMA_VERSION, migrate, schema_version

log = structlog.get_logger(__name__)

CHUNK_ROWS = 20_000  # rows read and written at a time: memory stays bounded however big the ledger is
SKIPPED = frozenset({"leases", "alembic_version"})  # run-time state of running instances; the migrations' own
MERGED = frozenset({"meta"})  # facts the migration writes into the target too: the source's are added, not refused
DATA_TABLES = ("files", "rows", "batches")  # a target with any row in these already holds a ledger


class CopyRefused(LedgerTargetError):
    """The copy cannot start: the target is not empty, or it is the source itself."""


@dataclass
class CopyResult:
    """What was copied: the rows of each table in the order copied, and the time the copy took."""

    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    source_migrated_from: int | None = None  # the source's schema version, when the copy had to migrate it

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def rows_per_second(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0


def copied_tables() -> list[Table]:
    """The tables a copy carries, parents before children."""
    return [table for table in schema.metadata.sorted_tables if table.name not in SKIPPED]


def same_ledger(a: LedgerTarget, b: LedgerTarget) -> bool:
    """Whether two targets name the same ledger: the same file (however spelled), or the same database and options
    (a search_path: another schema is another ledger) on the same host and port, whichever the user."""
    if a.sqlite != b.sqlite:
        return False
    if a.path is not None and b.path is not None:
        if a.path.exists() and b.path.exists():
            return a.path.samefile(b.path)
        return a.path.resolve() == b.path.resolve()

    def key(target: LedgerTarget) -> tuple[Any, ...]:
        url = target.url
        return ((url.host or "localhost").lower(), url.port or 5432, url.database, sorted(url.query.items()))

    return key(a) == key(b)


def copy_ledger(
    source: LedgerTarget,
    target: LedgerTarget,
    *,
    chunk_rows: int = CHUNK_ROWS,
    on_table: Callable[[str, int], None] | None = None,
) -> CopyResult:
    """Copy every table of the `source` ledger into the empty `target` one (created or migrated first), in one
    transaction on the target; then set the target's id sequences past the copied ids. `on_table(name, rows)` is
    called as each table is done. Raises CopyRefused before anything is written when the target is not empty or is
    the source."""
    if same_ledger(source, target):
        raise CopyRefused(f"the source and the target are the same ledger ({source.shown}); name another --to")
    if source.path is not None and not source.path.is_file():
        raise CopyRefused(f"no ledger at {source.shown} to copy")  # opening it would create an empty one
    result = CopyResult()
    source_engine = _engine(source)
    target_engine = _engine(target)
    try:
        _refuse_filled(target, target_engine)  # before migrating either: a ledger in the way is left as it was
        with source_engine.connect() as conn:
            _refuse_worked(source, conn)
        result.source_migrated_from = _migrated(source, source_engine)
        _migrated(target, target_engine)
        started = time.perf_counter()
        with _snapshot(source_engine) as reading, target_engine.begin() as writing:
            _refuse_filled(target, target_engine, writing)  # again, in the transaction that writes
            _refuse_worked(source, reading)  # a leader would upload what the snapshot does not hold
            _refuse_worked(target, writing)
            dialect = dialect_of(target_engine)
            for table in copied_tables():
                count = _copy_table(table, reading, writing, dialect, chunk_rows)
                dialect.loaded(writing, table.name)
                result.counts[table.name] = count
                log.info("ledger_table_copied", table=table.name, rows=count)
                if on_table is not None:
                    on_table(table.name, count)
            if not target.sqlite:
                _reset_sequences(writing)
        result.seconds = time.perf_counter() - started
    finally:
        source_engine.dispose()
        target_engine.dispose()
    log.info(
        "ledger_copied",
        source=source.shown,
        target=target.shown,
        rows=result.total,
        seconds=round(result.seconds, 3),
        rows_per_second=round(result.rows_per_second),
    )
    return result


def _engine(target: LedgerTarget) -> Engine:
    engine = open_engine(target)
    if target.sqlite:
        return engine
    try:
        engine.connect().close()
    except DBAPIError as exc:
        engine.dispose()
        raise unavailable(target, exc) from None
    return engine


def _migrated(target: LedgerTarget, engine: Engine) -> int | None:
    """Bring a ledger to the current schema by the normal migration; the version it had, if it had to move."""
    with engine.connect() as conn:
        before = schema_version(conn)
    migrate(engine)  # refuses (LedgerVersionError) a ledger newer than this scm-daemon
    if 0 < before < SCHEMA_VERSION:
        log.info("ledger_migrated_for_copy", ledger=target.shown, was=before, version=SCHEMA_VERSION)
        return before
    return None


def _refuse_filled(target: LedgerTarget, engine: Engine, conn: Connection | None = None) -> None:
    """Raise CopyRefused when the target holds any row of a table the copy writes (meta aside)."""

    def check(conn: Connection) -> None:
        present = set(inspect(conn).get_table_names())
        for table in copied_tables():
            if table.name in MERGED or table.name not in present:
                continue
            if conn.execute(select(1).select_from(table).limit(1)).first() is not None:
                raise CopyRefused(
                    f"the target ledger {target.shown} is not empty (its table {table.name} has rows); "
                    "copy only into a new database or file, or empty it first"
                )

    if conn is not None:
        check(conn)
        return
    if target.path is not None and not target.path.exists():
        return  # a new file (not made by looking: a refused copy leaves none behind)
    with engine.connect() as fresh:
        check(fresh)


def _refuse_worked(ledger: LedgerTarget, conn: Connection) -> None:
    """Raise CopyRefused when a service holds the work lease of the ledger (daemon.lease) now."""
    if not inspect(conn).has_table("leases"):
        return
    now = dialect_of(conn.engine).epoch_now
    row = conn.execute(text(f"SELECT holder FROM leases WHERE expires_at > {now}")).first()
    if row is not None:
        raise CopyRefused(
            f"a service ({row[0]}) is working on the ledger {ledger.shown}; stop every instance on it first "
            "(systemctl stop scm-daemon), then copy"
        )


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection reading the source as of one moment: one read-only transaction (REPEATABLE READ on
    PostgreSQL; on SQLite an explicit BEGIN, whose first read fixes the WAL snapshot), ended by a rollback."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN")
            try:
                yield conn
            finally:
                conn.rollback()
        return
    with engine.connect().execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True) as conn:
        try:
            yield conn
        finally:
            conn.rollback()


def _copy_table(table: Table, reading: Connection, writing: Connection, dialect: Dialect, chunk_rows: int) -> int:
    """Stream one table from the source into the target; the rows written. Into PostgreSQL one COPY carries the
    whole table, fed chunk by chunk as the source is read, so that the server stores a chunk while the next is read;
    into SQLite each chunk is one executemany."""
    names = [column.name for column in table.columns]
    order = list(table.primary_key.columns) or list(table.columns)
    existing: set[Any] = set()
    if table.name in MERGED:  # keyed by its first column: the target's own facts (its schema version) stay
        existing = {row[0] for row in writing.execute(select(order[0]))}
    at = names.index(order[0].name)
    result = reading.execution_options(yield_per=chunk_rows).execute(select(*table.columns).order_by(*order))

    def chunks() -> Iterator[Sequence[Row[Any]]]:
        for chunk in result.partitions(chunk_rows):
            yield [row for row in chunk if row[at] not in existing] if existing else chunk

    try:
        if dialect.name == "sqlite":  # sqlite3 binds tuples, not SQLAlchemy's rows
            return sum(
                dialect.bulk_insert(writing, table.name, names, [tuple(row) for row in rows])
                for rows in chunks()
                if rows  # an empty executemany would be run once with no parameters
            )
        return dialect.bulk_insert(writing, table.name, names, chain.from_iterable(chunks()))
    finally:
        result.close()


def _reset_sequences(conn: Connection) -> None:
    """Set each integer id's sequence past the copied ids (COPY wrote the ids and left the sequences at 1)."""
    for table in copied_tables():
        column = table.autoincrement_column
        if column is None:
            continue
        conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence(:table, :column), COALESCE(MAX({column.name}), 0) + 1, false) "
                f"FROM {table.name}"
            ),
            {"table": table.name, "column": column.name},
        )
